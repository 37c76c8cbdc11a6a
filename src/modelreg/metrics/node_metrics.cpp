#include "modelreg/metrics/node_metrics.hpp"

#include <fstream>

#include <unistd.h>

#include "modelreg/messages/error.hpp"

namespace modelreg {

void model_metrics::record(int64_t queued_ns, int64_t run_ns, int code) noexcept {
  requests.add();
  if (code == 0) {
    infer_seconds.observe(static_cast<double>(run_ns) * 1e-9);
    queue_seconds.observe(static_cast<double>(std::max<int64_t>(queued_ns, 0)) * 1e-9);
    return;
  }
  auto slot = code > 0 && code < static_cast<int>(errors.size()) ? code : 0;
  errors[static_cast<size_t>(slot)].add();
}

std::shared_ptr<model_metrics> node_metrics::model(const std::string& key) {
  std::lock_guard guard{mu_};
  auto& slot = models_[key];
  if (!slot)
    slot = std::make_shared<model_metrics>();
  return slot;
}

std::map<std::string, std::shared_ptr<model_metrics>> node_metrics::models() const {
  std::lock_guard guard{mu_};
  return models_;
}

namespace {

uint64_t resident_bytes() {
  std::ifstream in{"/proc/self/statm"};
  uint64_t size = 0, resident = 0;
  if (!(in >> size >> resident))
    return 0;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

std::string error_label(size_t code) {
  if (code == 0)
    return "other";
  auto name = to_string(static_cast<errc>(code));
  return name;
}

} // namespace

std::string render_prometheus(const node_metrics& metrics, const registry_snapshot& snapshot,
                              const transport_figures* transport) {
  prom::writer w;
  auto models = metrics.models();
  auto d = [](uint64_t x) { return static_cast<double>(x); };
  auto per_model_counter = [&](const char* name, const char* help, auto get) {
    w.family(name, "counter", help);
    for (const auto& [key, m] : models)
      w.sample(name, {{"model", key}}, d(get(*m).value()));
  };
  auto per_model_histogram = [&](const char* name, const char* help, auto get) {
    w.family(name, "histogram", help);
    for (const auto& [key, m] : models)
      w.histogram(name, {{"model", key}}, get(*m));
  };

  // -- loading -------------------------------------------------------------
  per_model_counter("modelreg_loads_total", "Loads that produced a ready model.",
                    [](const model_metrics& m) -> const prom::counter& { return m.loads; });
  per_model_counter("modelreg_load_failures_total",
                    "Loads that failed (loader error, timeout, not admitted).",
                    [](const model_metrics& m) -> const prom::counter& { return m.load_failures; });
  per_model_histogram("modelreg_load_seconds", "Time a successful load took.",
                      [](const model_metrics& m) -> const prom::histogram& { return m.load_seconds; });
  per_model_counter("modelreg_load_coalesced_waiters_total",
                    "Callers that joined a load already in progress instead of starting another "
                    "(single flight).",
                    [](const model_metrics& m) -> const prom::counter& { return m.coalesced; });
  w.family("modelreg_cache_hits_total", "counter", "Get-or-loads answered by a loaded model.");
  w.sample("modelreg_cache_hits_total", d(snapshot.totals.hits));
  w.family("modelreg_cache_misses_total", "counter", "Get-or-loads that started a load.");
  w.sample("modelreg_cache_misses_total", d(snapshot.totals.misses));
  w.family("modelreg_coalesced_waiters_total", "counter",
           "Get-or-loads that joined a load in progress, all models.");
  w.sample("modelreg_coalesced_waiters_total", d(snapshot.totals.coalesced));
  w.family("modelreg_evictions_total", "counter", "Models that left the registry, by reason.");
  for (const auto& [key, m] : models)
    for (size_t r = 0; r < m->evictions.size(); ++r)
      w.sample("modelreg_evictions_total",
               {{"model", key}, {"reason", to_string(static_cast<eviction_reason>(r))}},
               d(m->evictions[r].value()));
  w.family("modelreg_loads_in_progress", "gauge", "Loads running or queued now.");
  w.sample("modelreg_loads_in_progress", d(snapshot.totals.loads_in_progress));

  // -- inference -----------------------------------------------------------
  per_model_counter("modelreg_inference_requests_total",
                    "Inference requests answered, successful or not.",
                    [](const model_metrics& m) -> const prom::counter& { return m.requests; });
  w.family("modelreg_inference_errors_total", "counter",
           "Inference requests answered with an error, by error code (docs/errors.md).");
  for (const auto& [key, m] : models)
    for (size_t c = 0; c < m->errors.size(); ++c)
      if (auto n = m->errors[c].value(); n > 0)
        w.sample("modelreg_inference_errors_total", {{"model", key}, {"code", error_label(c)}},
                 d(n));
  per_model_histogram("modelreg_inference_seconds",
                      "Time in the model, successful requests only.",
                      [](const model_metrics& m) -> const prom::histogram& { return m.infer_seconds; });
  per_model_histogram("modelreg_queue_seconds",
                      "Time a successful request waited before its model ran it.",
                      [](const model_metrics& m) -> const prom::histogram& { return m.queue_seconds; });
  per_model_histogram("modelreg_batch_size", "Requests served by one model call.",
                      [](const model_metrics& m) -> const prom::histogram& { return m.batch_size; });

  // -- what is loaded now ----------------------------------------------------
  w.family("modelreg_models_loaded", "gauge", "Models loaded now.");
  w.sample("modelreg_models_loaded", d(snapshot.totals.models_loaded));
  w.family("modelreg_model_memory_bytes", "gauge", "Memory a loaded model holds.");
  for (const auto& s : snapshot.models)
    if (s.state == model_state::ready)
      w.sample("modelreg_model_memory_bytes", {{"model", s.key}}, d(s.memory_bytes));
  w.family("modelreg_leases_held", "gauge", "Handles (leases) held on a loaded model.");
  for (const auto& s : snapshot.models)
    if (s.state == model_state::ready)
      w.sample("modelreg_leases_held", {{"model", s.key}}, d(s.handles));
  w.family("modelreg_requests_in_flight", "gauge", "Requests a loaded model has not answered yet.");
  for (const auto& s : snapshot.models)
    if (s.state == model_state::ready)
      w.sample("modelreg_requests_in_flight", {{"model", s.key}}, d(s.in_flight));
  w.family("modelreg_model_instances", "gauge", "Instances serving a model (docs/instances.md).");
  for (const auto& s : snapshot.models)
    if (s.state == model_state::ready)
      w.sample("modelreg_model_instances", {{"model", s.key}}, d(std::max<uint64_t>(s.instances, 1)));
  w.family("modelreg_memory_in_use_bytes", "gauge", "Memory all loaded models hold.");
  w.sample("modelreg_memory_in_use_bytes", d(snapshot.totals.bytes_in_use));
  w.family("modelreg_budget_bytes", "gauge", "The byte budget for loaded models; 0: none.");
  w.sample("modelreg_budget_bytes", d(snapshot.totals.max_memory_bytes));

  // -- doors -----------------------------------------------------------------
  // gRPC's connections are its library's: not counted here.
  w.family("modelreg_connections", "gauge", "Client connections open now, by protocol.");
  if (transport)
    w.sample("modelreg_connections", {{"protocol", "shm"}}, d(transport->connections));
  w.sample("modelreg_connections", {{"protocol", "http"}},
           static_cast<double>(metrics.http.connections.load(std::memory_order_relaxed)));
  w.family("modelreg_protocol_answers_total", "counter",
           "Answers given through the HTTP and gRPC doors, by status class.");
  for (const auto* door : {&metrics.http, &metrics.grpc})
    for (size_t k : {2, 4, 5})
      w.sample("modelreg_protocol_answers_total",
               {{"protocol", door == &metrics.http ? "http" : "grpc"},
                {"class", std::to_string(k) + "xx"}},
               d(door->answers[k].value()));
  w.family("modelreg_protocol_connections_refused_total", "counter",
           "HTTP and gRPC connections closed for breaking a limit (deadline, size, count).");
  w.sample("modelreg_protocol_connections_refused_total", {{"protocol", "http"}},
           d(metrics.http.refused.value()));
  w.sample("modelreg_protocol_connections_refused_total", {{"protocol", "grpc"}},
           d(metrics.grpc.refused.value()));
  if (transport) {
    w.family("modelreg_shm_zero_copy_tensors_total", "counter",
             "Tensors passed through shared memory without a copy.");
    w.sample("modelreg_shm_zero_copy_tensors_total", d(transport->zero_copy_tensors));
    w.family("modelreg_shm_copied_bytes_total", "counter",
             "Tensor bytes the transport had to copy.");
    w.sample("modelreg_shm_copied_bytes_total", d(transport->copied_bytes));
    w.family("modelreg_shm_lent_bytes", "gauge", "Shared memory lent to peers now.");
    w.sample("modelreg_shm_lent_bytes", d(transport->bytes_lent));
    w.family("modelreg_shm_mapped_bytes", "gauge", "Shared memory the node maps now.");
    w.sample("modelreg_shm_mapped_bytes", d(transport->bytes_mapped));
    w.family("modelreg_shm_rejected_frames_total", "counter", "Frames refused as malformed.");
    w.sample("modelreg_shm_rejected_frames_total", d(transport->rejected_frames));
  }
  w.family("modelreg_process_resident_memory_bytes", "gauge", "Resident memory of the node.");
  w.sample("modelreg_process_resident_memory_bytes", d(resident_bytes()));
  return w.text();
}

} // namespace modelreg

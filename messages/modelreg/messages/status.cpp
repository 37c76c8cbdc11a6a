#include "modelreg/messages/status.hpp"

#include <nlohmann/json.hpp>

namespace modelreg {

std::string to_string(model_state x) {
  switch (x) {
    case model_state::loading: return "loading";
    case model_state::ready: return "ready";
    case model_state::failed: return "failed";
    case model_state::evicted: return "evicted";
    case model_state::unloaded: return "unloaded";
  }
  return "unknown";
}

std::string to_string(eviction_reason x) {
  switch (x) {
    case eviction_reason::ttl: return "ttl";
    case eviction_reason::budget: return "budget";
    case eviction_reason::max_models: return "max_models";
    case eviction_reason::manual: return "manual";
    case eviction_reason::crashed: return "crashed";
  }
  return "unknown";
}

double registry_totals::hit_rate() const {
  auto total = hits + misses + coalesced;
  return total == 0 ? 0.0 : static_cast<double>(hits) / static_cast<double>(total);
}

std::string to_json(const registry_snapshot& x) {
  nlohmann::json models = nlohmann::json::array();
  for (const auto& m : x.models) {
    models.push_back({{"key", m.key},
                      {"description", m.description},
                      {"state", to_string(m.state)},
                      {"generation", m.generation},
                      {"handles", m.handles},
                      {"in_flight", m.in_flight},
                      {"memory_bytes", m.memory_bytes},
                      {"load_time_us", m.load_time_us},
                      {"requests", m.requests},
                      {"errors", m.errors},
                      {"latency_p50_us", m.latency_p50_us},
                      {"latency_p99_us", m.latency_p99_us},
                      {"idle_ms", m.idle_ms},
                      {"pinned", m.pinned},
                      {"waiters", m.waiters},
                      {"batches", m.batches},
                      {"abandoned", m.abandoned}});
    if (!m.holder.empty())
      models.back()["holder"] = m.holder;
    if (m.max_instances > 0) {
      auto processes = nlohmann::json::array();
      for (const auto& p : m.processes)
        processes.push_back({{"pid", p.pid}, {"private_bytes", p.private_bytes}});
      auto& j = models.back();
      j["instances"] = m.instances;
      j["max_instances"] = m.max_instances;
      j["instances_busy"] = m.instances_busy;
      j["instance_restarts"] = m.instance_restarts;
      j["zygote_pid"] = m.zygote_pid;
      j["processes"] = processes;
      j["sessions"] = m.sessions;
      j["sessions_expired"] = m.sessions_expired;
    }
  }
  const auto& t = x.totals;
  nlohmann::json totals = {{"hits", t.hits},
                           {"misses", t.misses},
                           {"coalesced", t.coalesced},
                           {"hit_rate", t.hit_rate()},
                           {"loads", t.loads},
                           {"load_failures", t.load_failures},
                           {"load_timeouts", t.load_timeouts},
                           {"late_results_disposed", t.late_results_disposed},
                           {"evictions",
                            {{"ttl", t.evictions_ttl},
                             {"budget", t.evictions_budget},
                             {"max_models", t.evictions_max_models},
                             {"manual", t.unloads},
                             {"crashed", t.crashes}}},
                           {"models_loaded", t.models_loaded},
                           {"bytes_in_use", t.bytes_in_use},
                           {"max_memory_bytes", t.max_memory_bytes},
                           {"loads_in_progress", t.loads_in_progress}};
  nlohmann::json out = {{"timestamp_ns", x.timestamp_ns}, {"models", models}, {"totals", totals}};
  return out.dump();
}

std::string to_json(const status_event& x) {
  nlohmann::json out = {{"seq", x.seq},
                        {"key", x.key},
                        {"state", to_string(x.state)},
                        {"generation", x.generation},
                        {"memory_bytes", x.memory_bytes},
                        {"timestamp_ns", x.timestamp_ns},
                        {"detail", x.detail}};
  return out.dump();
}

namespace {

model_state state_from(const std::string& name) {
  for (auto s : {model_state::loading, model_state::ready, model_state::failed,
                 model_state::evicted, model_state::unloaded})
    if (to_string(s) == name)
      return s;
  return model_state::failed;
}

template <class T>
void get_to(const nlohmann::json& j, const char* name, T& out) {
  if (auto i = j.find(name); i != j.end() && !i->is_null())
    i->get_to(out);
}

} // namespace

bool from_json(const std::string& json, registry_snapshot& out) {
  auto j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return false;
  try {
    out = {};
    get_to(j, "timestamp_ns", out.timestamp_ns);
    for (const auto& m : j.value("models", nlohmann::json::array())) {
      model_status s;
      get_to(m, "key", s.key);
      get_to(m, "description", s.description);
      s.state = state_from(m.value("state", std::string{}));
      get_to(m, "generation", s.generation);
      get_to(m, "handles", s.handles);
      get_to(m, "in_flight", s.in_flight);
      get_to(m, "memory_bytes", s.memory_bytes);
      get_to(m, "load_time_us", s.load_time_us);
      get_to(m, "requests", s.requests);
      get_to(m, "errors", s.errors);
      get_to(m, "latency_p50_us", s.latency_p50_us);
      get_to(m, "latency_p99_us", s.latency_p99_us);
      get_to(m, "idle_ms", s.idle_ms);
      get_to(m, "pinned", s.pinned);
      get_to(m, "waiters", s.waiters);
      get_to(m, "batches", s.batches);
      get_to(m, "abandoned", s.abandoned);
      get_to(m, "instances", s.instances);
      get_to(m, "max_instances", s.max_instances);
      get_to(m, "instances_busy", s.instances_busy);
      get_to(m, "instance_restarts", s.instance_restarts);
      get_to(m, "zygote_pid", s.zygote_pid);
      get_to(m, "sessions", s.sessions);
      get_to(m, "sessions_expired", s.sessions_expired);
      get_to(m, "holder", s.holder);
      for (const auto& p : m.value("processes", nlohmann::json::array())) {
        instance_status i;
        get_to(p, "pid", i.pid);
        get_to(p, "private_bytes", i.private_bytes);
        s.processes.push_back(i);
      }
      out.models.push_back(std::move(s));
    }
    auto t = j.value("totals", nlohmann::json::object());
    auto& o = out.totals;
    get_to(t, "hits", o.hits);
    get_to(t, "misses", o.misses);
    get_to(t, "coalesced", o.coalesced);
    get_to(t, "loads", o.loads);
    get_to(t, "load_failures", o.load_failures);
    get_to(t, "load_timeouts", o.load_timeouts);
    get_to(t, "late_results_disposed", o.late_results_disposed);
    auto ev = t.value("evictions", nlohmann::json::object());
    get_to(ev, "ttl", o.evictions_ttl);
    get_to(ev, "budget", o.evictions_budget);
    get_to(ev, "max_models", o.evictions_max_models);
    get_to(ev, "manual", o.unloads);
    get_to(ev, "crashed", o.crashes);
    get_to(t, "models_loaded", o.models_loaded);
    get_to(t, "bytes_in_use", o.bytes_in_use);
    get_to(t, "max_memory_bytes", o.max_memory_bytes);
    get_to(t, "loads_in_progress", o.loads_in_progress);
  } catch (const nlohmann::json::exception&) {
    return false;
  }
  return true;
}

bool from_json(const std::string& json, status_event& out) {
  auto j = nlohmann::json::parse(json, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return false;
  try {
    out = {};
    get_to(j, "seq", out.seq);
    get_to(j, "key", out.key);
    out.state = state_from(j.value("state", std::string{}));
    get_to(j, "generation", out.generation);
    get_to(j, "memory_bytes", out.memory_bytes);
    get_to(j, "timestamp_ns", out.timestamp_ns);
    get_to(j, "detail", out.detail);
  } catch (const nlohmann::json::exception&) {
    return false;
  }
  return true;
}

} // namespace modelreg

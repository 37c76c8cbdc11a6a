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
                      {"waiters", m.waiters}});
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

} // namespace modelreg

// What the registry reports about itself: transition events pushed to
// subscribers, per-model status, totals and snapshots. Plain values with
// `inspect`, so they travel between actors, processes and hosts alike.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <caf/meta/type_name.hpp>

namespace modelreg {

/// Where a key is in its life. `loading` and `ready` are states an entry
/// sits in; `failed`, `evicted` and `unloaded` are terminal transitions
/// after which the key is absent again.
enum class model_state : uint8_t { loading, ready, failed, evicted, unloaded };

std::string to_string(model_state x);

/// Why a ready model left the registry.
enum class eviction_reason : uint8_t { ttl, budget, max_models, manual, crashed };

std::string to_string(eviction_reason x);

/// One transition of one key, in the order the supervisor made it.
struct status_event {
  uint64_t seq = 0;          ///< strictly increasing per registry
  std::string key;
  model_state state = model_state::loading;
  uint64_t generation = 0;   ///< which load of `key` this event belongs to
  uint64_t memory_bytes = 0; ///< for ready/evicted/unloaded
  int64_t timestamp_ns = 0;  ///< system clock, nanoseconds since the epoch
  std::string detail;        ///< error text, eviction reason, load time, ...
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, status_event& x) {
  return f(caf::meta::type_name("modelreg::status_event"), x.seq, x.key, x.state,
           x.generation, x.memory_bytes, x.timestamp_ns, x.detail);
}

/// One instance process of a model with forked instances.
struct instance_status {
  int64_t pid = 0;
  uint64_t private_bytes = 0; ///< memory it does not share with the loaded copy
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, instance_status& x) {
  return f(caf::meta::type_name("modelreg::instance_status"), x.pid, x.private_bytes);
}

/// The state and counters of one key.
struct model_status {
  std::string key;
  std::string description; ///< backend / model self-description
  model_state state = model_state::loading;
  uint64_t generation = 0;
  uint64_t handles = 0;
  uint64_t in_flight = 0;
  uint64_t memory_bytes = 0;
  uint64_t load_time_us = 0;
  uint64_t requests = 0;
  uint64_t errors = 0;
  uint64_t latency_p50_us = 0;
  uint64_t latency_p99_us = 0;
  uint64_t idle_ms = 0;
  bool pinned = false;
  uint64_t waiters = 0; ///< callers parked on a load in progress
  uint64_t batches = 0; ///< model calls that served several requests at once
  uint64_t abandoned = 0; ///< requests dropped unrun: their client went away while they queued
  /// Models with several instances (docs/instances.md); zeros otherwise.
  uint64_t instances = 0;         ///< serving now
  uint64_t max_instances = 0;     ///< the most it may grow to
  uint64_t instances_busy = 0;    ///< with a request on them
  uint64_t instance_restarts = 0; ///< instances replaced after their process died
  int64_t zygote_pid = 0;         ///< the process the instances are forked from
  std::vector<instance_status> processes; ///< the instance processes
  uint64_t sessions = 0;         ///< streaming sessions open now
  uint64_t sessions_expired = 0; ///< sessions cancelled for idling
  /// Cluster: the node that runs the model when this one forwards to it
  /// (e.g. "tcp://10.0.0.2:7447"); empty when it runs here.
  std::string holder;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, model_status& x) {
  return f(caf::meta::type_name("modelreg::model_status"), x.key, x.description, x.state,
           x.generation, x.handles, x.in_flight, x.memory_bytes, x.load_time_us, x.requests,
           x.errors, x.latency_p50_us, x.latency_p99_us, x.idle_ms, x.pinned, x.waiters,
           x.batches, x.abandoned, x.instances, x.max_instances, x.instances_busy,
           x.instance_restarts, x.zygote_pid, x.processes, x.sessions, x.sessions_expired, x.holder);
}

/// Registry-wide counters since start.
struct registry_totals {
  uint64_t hits = 0;      ///< get-or-loads answered by a loaded model
  uint64_t misses = 0;    ///< get-or-loads that started a load
  uint64_t coalesced = 0; ///< get-or-loads that joined a load in progress
  uint64_t loads = 0;     ///< loads that produced a ready model
  uint64_t load_failures = 0;
  uint64_t load_timeouts = 0;
  uint64_t late_results_disposed = 0; ///< loads that finished after their timeout
  uint64_t evictions_ttl = 0;
  uint64_t evictions_budget = 0;
  uint64_t evictions_max_models = 0;
  uint64_t unloads = 0;   ///< manual unloads
  uint64_t crashes = 0;   ///< model actors that died
  uint64_t models_loaded = 0;
  uint64_t bytes_in_use = 0;
  uint64_t max_memory_bytes = 0; ///< 0: no budget
  uint64_t loads_in_progress = 0;

  /// hits / (hits + misses + coalesced); 0 before the first request.
  double hit_rate() const;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, registry_totals& x) {
  return f(caf::meta::type_name("modelreg::registry_totals"), x.hits, x.misses, x.coalesced,
           x.loads, x.load_failures, x.load_timeouts, x.late_results_disposed, x.evictions_ttl,
           x.evictions_budget, x.evictions_max_models, x.unloads, x.crashes, x.models_loaded,
           x.bytes_in_use, x.max_memory_bytes, x.loads_in_progress);
}

/// Everything `list` answers and what subscribers receive periodically.
struct registry_snapshot {
  int64_t timestamp_ns = 0;
  std::vector<model_status> models;
  registry_totals totals;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, registry_snapshot& x) {
  return f(caf::meta::type_name("modelreg::registry_snapshot"), x.timestamp_ns, x.models,
           x.totals);
}

/// What an eviction pass freed.
struct eviction_report {
  uint64_t count = 0;
  uint64_t freed_bytes = 0;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, eviction_report& x) {
  return f(caf::meta::type_name("modelreg::eviction_report"), x.count, x.freed_bytes);
}

/// Renders a snapshot as one JSON object (used by the CLI and benchmarks).
std::string to_json(const registry_snapshot& x);

/// Renders one transition as one JSON object.
std::string to_json(const status_event& x);

/// Parses what `to_json` wrote (fields it does not know are ignored); false
/// if `json` is not such an object.
bool from_json(const std::string& json, registry_snapshot& out);
bool from_json(const std::string& json, status_event& out);

} // namespace modelreg

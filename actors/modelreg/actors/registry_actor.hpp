// The registry supervisor's typed interface and how to spawn it.
//
//             get_or_load(k)          load ok            idle + TTL / budget / unload
//   absent ─────────────────▶ loading ────────▶ ready ─────────────────────────────▶ absent
//                                │  load error / timeout / out of memory     (evicted/unloaded)
//                                └────────▶ failed: every waiter gets the same error; absent
//                                            (model actor dies: failed; the next call reloads)
//
// N concurrent get-or-loads of a key run its loader once and all get the same
// model (each with its own lease) or the same error. Loads run on loader
// threads, at most `max_concurrent_loads` at a time; the supervisor itself
// never blocks. Subscribers receive every transition in order, plus periodic
// snapshots.
//
// Lifetime: the supervisor lives until it receives an exit message (e.g.
// `caf::anon_send_exit(reg, caf::exit_reason::user_shutdown)`) or a
// `shutdown_atom`; it then answers every waiting caller with `shutting_down`
// and stops its model actors. A loader still running keeps its thread (and
// so actor_system shutdown) until it returns; its result is discarded.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <caf/fwd.hpp>
#include <caf/typed_actor.hpp>

#include "modelreg/actors/model_actor.hpp"
#include "modelreg/actors/model_handle.hpp"
#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/backend/catalog.hpp"
#include "modelreg/messages/model_spec.hpp"
#include "modelreg/messages/status.hpp"
#include "modelreg/metrics/node_metrics.hpp"

namespace modelreg {

/// Receives status: every transition, then snapshots every
/// `snapshot_interval` (and one right after subscribing).
using status_listener = caf::typed_actor<caf::reacts_to<status_atom, status_event>,
                                         caf::reacts_to<snapshot_atom, registry_snapshot>>;

using registry_actor = caf::typed_actor<
  /// Get or load `key` with an in-process loader.
  caf::replies_to<get_or_load_atom, std::string, loader_fn>::with<model_handle>,
  /// Get or load `key` from a model spec (backend + parameters); a spec
  /// with no backend names a catalog entry (`key`).
  caf::replies_to<get_or_load_atom, std::string, model_spec>::with<model_handle>,
  /// Run the model loaded under `key` (waits for a load in progress).
  caf::replies_to<infer_atom, std::string, tensor_map>::with<tensor_map>,
  /// Give a handle's lease back now; false if it was already released.
  caf::replies_to<release_atom, model_handle>::with<bool>,
  /// Unload an idle model now (`busy` while it has handles or requests).
  caf::replies_to<unload_atom, std::string>::with<eviction_report>,
  /// Pin (true) or unpin a key: pinned models are never evicted.
  caf::replies_to<pin_atom, std::string, bool>::with<bool>,
  /// Models, their counters and the totals.
  caf::replies_to<list_atom>::with<registry_snapshot>,
  /// Evict every model idle for longer than the TTL now.
  caf::replies_to<evict_expired_atom>::with<eviction_report>,
  caf::reacts_to<subscribe_atom, status_listener>,
  caf::reacts_to<unsubscribe_atom, status_listener>,
  /// Graceful stop (same as an exit message).
  caf::reacts_to<shutdown_atom>>;

struct registry_config {
  /// Evict a model idle (no handles, no requests) this long; 0: never.
  std::chrono::milliseconds idle_ttl{std::chrono::seconds{30}};
  /// Evict expired models automatically; false: only `evict_expired` does.
  bool ttl_sweep = true;
  /// Byte budget for all loaded models; 0: unlimited.
  uint64_t max_memory_bytes = 0;
  /// Most models loaded at once; 0: unlimited.
  size_t max_models = 0;
  /// Loads running at once (each on its own thread); 0: unlimited.
  size_t max_concurrent_loads = 2;
  /// A load not done this long after its request (queued time included)
  /// fails for all its waiters with `load_timeout`.
  std::chrono::milliseconds load_timeout{std::chrono::seconds{120}};
  /// How often subscribers receive snapshots.
  std::chrono::milliseconds snapshot_interval{std::chrono::seconds{1}};
  /// Lanes for thread-safe models; 0: the number of scheduler threads.
  size_t inference_lanes = 0;
  /// Dynamic batching for batchable models (see model_actor.hpp); 1: off.
  size_t max_batch = 8;
  std::chrono::milliseconds batch_timeout{10};
  /// Requests that may wait for one model served a request at a time
  /// (queued fairly across clients); more are answered `busy`.
  size_t max_queue = 4096;
  /// A streaming session idle this long is cancelled (docs/instances.md).
  std::chrono::milliseconds session_idle_timeout{30000};
  /// Backends for model specs; null: the built-in ones.
  std::shared_ptr<const backend_registry> backends;
  /// Where the registry and its model actors count for Prometheus
  /// (metrics/node_metrics.hpp); null: a new one of its own.
  std::shared_ptr<node_metrics> metrics;
  /// Names for model specs: a get-or-load whose spec has no backend looks
  /// its key up here (`model_not_found` if absent). Null: no catalog.
  std::shared_ptr<const modelreg::catalog> catalog;
  /// Cluster placement (docs/cluster.md): the loader for a get-or-load by
  /// model spec, given the spec as asked (no backend: a catalog name) and as
  /// resolved. It may load here or return a model another node runs
  /// (`model::served_by`). Null: the backend's loader, here.
  std::function<caf::expected<loader_fn>(const std::string& key, const model_spec& asked,
                                         const model_spec& resolved)>
    placement;
  /// Cluster: true for a key another member also holds ready, so that under
  /// budget pressure this copy is evicted before others (called on the
  /// supervisor's thread; must not block). Null: none are.
  std::function<bool(const std::string& key)> spare_copy;
};

namespace detail {
struct registry_shared;
} // namespace detail

/// Spawns a registry supervisor in `sys`.
registry_actor spawn_registry(caf::actor_system& sys, registry_config cfg = {});

/// Spawns a registry supervisor that also publishes ready models into
/// `shared`, the facade's lock-light fast path (see registry.hpp).
registry_actor spawn_registry(caf::actor_system& sys, registry_config cfg,
                              std::shared_ptr<detail::registry_shared> shared);

/// An empty table of loaded models for `spawn_registry` to publish into:
/// code that holds it (the HTTP and gRPC doors, through
/// oip::service_options::ready_models) can send a request to a loaded model
/// without asking the supervisor.
std::shared_ptr<detail::registry_shared> make_ready_table();

} // namespace modelreg

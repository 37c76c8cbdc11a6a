// The state one loaded model shares between its supervisor, its model actor,
// the facade's fast path and every handle. Internal to modelreg.
//
// Lifetime: created by the supervisor when a load succeeds; kept alive by the
// supervisor while the model is loaded and by every handle and request
// ticket. Thread-safety: the counters are atomics; everything else is set
// before the block is shared and never changes.
//
// Handle counting and eviction race each other without a lock (a Dekker
// pair): an acquirer increments `handles` and then checks `closed`; the
// supervisor sets `closed` and then checks `handles` and `in_flight`. With
// sequentially consistent atomics at least one of them sees the other, so a
// model is never evicted under a handle that was just handed out.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include <caf/actor_control_block.hpp>

#include "modelreg/actors/model_actor.hpp"
#include "modelreg/metrics/histogram.hpp"
#include "modelreg/metrics/node_metrics.hpp"

namespace modelreg {
class instance_set;
}

namespace modelreg::detail {

/// Monotonic nanoseconds (steady clock).
inline int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

/// Counters a model actor updates per request.
struct model_stats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> batches{0}; ///< model calls that ran more than one request
  /// Requests answered without running: their caller went away first.
  std::atomic<uint64_t> abandoned{0};
  latency_histogram latency;
  /// The key's Prometheus figures (kept across reloads); may be null.
  std::shared_ptr<model_metrics> metrics;
  /// Instances (models with several, see instances.hpp): serving now, with
  /// a request on them, the most there may be, and how many were replaced
  /// after their process died. Zero for other models.
  std::atomic<uint64_t> instances{0};
  std::atomic<uint64_t> instances_busy{0};
  std::atomic<uint64_t> instance_restarts{0};
  uint64_t max_instances = 0;
  /// Streaming sessions open now, and those cancelled for idling.
  std::atomic<uint64_t> sessions{0};
  std::atomic<uint64_t> sessions_expired{0};
  /// The set, for its processes (set before the stats are shared).
  std::shared_ptr<modelreg::instance_set> instances_of;
};

struct entry_block {
  entry_block(std::string key, uint64_t generation, model_actor actor,
              caf::weak_actor_ptr supervisor, std::string description, uint64_t memory_bytes,
              std::shared_ptr<model_stats> stats, int64_t load_time_us, uint64_t lease_id = 0,
              model_ptr quick = nullptr);

  const std::string key;
  /// Which load of `key` (the node's, for a remote handle).
  const uint64_t generation;
  /// A remote handle's lease on its node; 0 for a local model.
  const uint64_t lease_id;
  const model_actor actor;
  const caf::weak_actor_ptr supervisor;
  const std::string description;
  const uint64_t memory_bytes;
  const std::shared_ptr<model_stats> stats;
  const int64_t load_time_us;
  /// The model object, if a transport thread may run it itself (its backend
  /// says it is quick and thread-safe; see model_capabilities::quick).
  const model_ptr quick;

  std::atomic<int64_t> handles{0};
  std::atomic<int64_t> in_flight{0};
  std::atomic<int64_t> last_used_ns{steady_now_ns()};
  std::atomic<bool> closed{false};
  /// Set for good once the model left the registry (evicted, unloaded,
  /// crashed, shut down); handles report themselves invalid.
  std::atomic<bool> retired{false};

  /// Takes one more handle unless the block is closed.
  bool try_acquire() noexcept;

  /// Gives one handle back; tells the supervisor when the last one goes.
  void release_one() noexcept;

  /// Closes the block if nothing holds or uses it; false (block left open)
  /// otherwise. Only the supervisor calls this.
  bool try_close() noexcept;

  /// Closes the block for good (evicted, crashed or shut down).
  void retire() noexcept {
    closed.store(true);
    retired.store(true);
  }

  void touch() noexcept { last_used_ns.store(steady_now_ns(), std::memory_order_relaxed); }
};

using entry_ptr = std::shared_ptr<entry_block>;

/// Counts one request in flight for as long as it lives (see request_ticket).
class in_flight_guard {
public:
  explicit in_flight_guard(entry_ptr block) noexcept;
  /// Takes over a count already added to `block->in_flight`.
  in_flight_guard(entry_ptr block, std::adopt_lock_t) noexcept : block_(std::move(block)) {}
  ~in_flight_guard();
  in_flight_guard(const in_flight_guard&) = delete;
  in_flight_guard& operator=(const in_flight_guard&) = delete;

private:
  entry_ptr block_;
};

/// A ticket for one request against `block`.
request_ticket make_ticket(const entry_ptr& block);

/// A ticket for one request without a handle (the HTTP and gRPC doors' fast
/// path), unless `block` is closed: null then. It pairs with `try_close` as
/// `try_acquire` does, so a model is never evicted under it.
request_ticket try_ticket(const entry_ptr& block) noexcept;

/// Runs `block.quick` on the calling thread and counts it in the model's
/// statistics as the model actor would (model_actor.cpp).
caf::expected<tensor_map> run_quick(entry_block& block, const tensor_map& inputs,
                                    tensor_allocator& out);

} // namespace modelreg::detail

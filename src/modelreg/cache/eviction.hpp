// Eviction policy as plain code: which idle models to drop, and whether a new
// model fits. The registry supervisor feeds it a view of its entries; nothing
// here touches actors or clocks, so every rule is unit-tested directly.
//
// Rules: only `evictable` candidates (ready, no handles, no requests in
// flight, not pinned) are ever chosen; among them spare copies (a cluster
// member holds another copy, docs/cluster.md) go first, then the least
// recently used (LRU).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace modelreg {

struct eviction_candidate {
  std::string key;
  uint64_t bytes = 0;
  int64_t last_used_ns = 0;
  bool evictable = false;
  /// Another member of the cluster holds a ready copy too.
  bool spare = false;
};

/// The outcome of asking to admit `incoming_bytes` more.
struct admission_plan {
  bool fits = false;
  std::vector<std::string> victims; ///< evict these first (spare copies, then LRU)
  uint64_t needed = 0;              ///< incoming_bytes
  uint64_t available = 0;           ///< the most that could be made free
};

/// Plans admission of a model of `incoming_bytes` under `budget` (0 means no
/// budget) and at most `max_models` models (0 means no limit), given what is
/// in use now. Victims are evicted only if the model then fits.
admission_plan plan_admission(std::vector<eviction_candidate> candidates, uint64_t used_bytes,
                              uint64_t budget, size_t max_models, uint64_t incoming_bytes);

/// The evictable candidates idle for at least `ttl_ns` at `now_ns`.
std::vector<std::string> select_expired(const std::vector<eviction_candidate>& candidates,
                                        int64_t now_ns, int64_t ttl_ns);

} // namespace modelreg

// The sender's shared-memory pool: segments in size classes, chunks loaned to
// peers, reference counts that live only here.
//
// A chunk is handed out to local code as `std::shared_ptr<chunk>` (its bytes
// are writable until sent) and may be lent to peers any number of times; it
// goes back to its free list only when the last local owner and the last loan
// are gone, and its generation then changes, so a stale or forged return can
// never release a later loan. Chunks are reused first-in first-out, so the
// chunk a peer has just read (its cache lines on the other core) is not the
// next one written.
//
// Size classes: 4 KiB (control frames, small tensors), 64 KiB, 1 MiB, 16 MiB
// chunks carved from slab segments; anything larger gets a segment of its own
// (rounded to 2 MiB), kept for reuse after it is freed. Every segment is
// pre-faulted at creation.
//
// Thread-safety: every member function may be called from any thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <tuple>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "modelreg/shm/segment.hpp"

namespace modelreg::shm {

/// Names one loan of one chunk: where it is and which reuse of it.
struct chunk_id {
  uint32_t segment = 0;
  uint64_t offset = 0;
  uint64_t generation = 0;

  friend bool operator==(const chunk_id&, const chunk_id&) = default;
};

/// What one peer may hold at once.
struct quota {
  uint64_t max_bytes = uint64_t{4} << 30;
  uint32_t max_loans = 65536;
};

class pool;

/// Shared-memory bytes several pools may map together: a process-wide cap
/// (e.g. a node's, over the pools of all its connections). Thread-safe.
class memory_budget {
public:
  explicit memory_budget(uint64_t limit) : limit_(limit) {}
  /// Takes `bytes` if they fit under the limit.
  bool take(uint64_t bytes);
  void give(uint64_t bytes) { used_ -= bytes; }
  uint64_t used() const { return used_.load(); }
  uint64_t limit() const { return limit_; }

private:
  std::atomic<uint64_t> used_{0};
  uint64_t limit_;
};

/// A chunk in local hands. Destroying the last shared_ptr gives it back
/// (once no peer holds a loan on it either).
class chunk {
public:
  chunk(std::shared_ptr<pool> owner, uint32_t segment, uint64_t offset, size_t capacity,
        uint64_t generation, std::byte* data) noexcept;
  ~chunk();
  chunk(const chunk&) = delete;
  chunk& operator=(const chunk&) = delete;

  std::byte* data() const noexcept { return data_; }
  size_t capacity() const noexcept { return capacity_; }
  chunk_id id() const noexcept { return {segment_, offset_, generation_}; }

private:
  std::shared_ptr<pool> owner_;
  uint32_t segment_;
  uint64_t offset_;
  size_t capacity_;
  uint64_t generation_;
  std::byte* data_;
};

using chunk_ptr = std::shared_ptr<chunk>;

struct pool_stats {
  uint64_t segments = 0;
  uint64_t bytes_mapped = 0;
  uint64_t chunks_in_use = 0;
  uint64_t loans_outstanding = 0;
  uint64_t bytes_lent = 0;
};

class pool : public std::enable_shared_from_this<pool> {
public:
  /// Called for every new segment (id, segment), e.g. to announce it to
  /// connected peers.
  using segment_listener = std::function<void(uint32_t, const segment&)>;

  /// A pool whose segments count against `budget`, if given (a new segment
  /// that does not fit fails with `quota_exceeded`).
  static std::shared_ptr<pool> create(std::shared_ptr<memory_budget> budget = nullptr);
  ~pool();

  /// A writable chunk of at least `bytes` (a new segment if needed).
  caf::expected<chunk_ptr> allocate(size_t bytes);

  /// Records a loan of `c` (its first `bytes` bytes) to `peer`, within its
  /// quota; `quota_exceeded` otherwise (nothing is recorded then).
  caf::expected<chunk_id> lend(const chunk_ptr& c, uint64_t peer, uint64_t bytes);

  /// A peer gives a loan back. Accepted only if `id` matches a loan to that
  /// peer (segment, offset and generation); anything else is an error and
  /// changes nothing.
  caf::error give_back(uint64_t peer, const chunk_id& id);

  /// Returns every loan held by `peer` (it disconnected or died).
  size_t reclaim(uint64_t peer);

  void set_quota(uint64_t peer, quota q);
  void forget_peer(uint64_t peer);

  /// The live chunk holding [p, p + n), if that memory is in this pool and
  /// some local owner still holds the chunk.
  chunk_ptr locate(const void* p, size_t n) const;

  /// The segment with `id`, or nullptr.
  const segment* find_segment(uint32_t id) const;

  /// Every segment (id -> segment); for announcing to a new peer.
  void for_each_segment(const std::function<void(uint32_t, const segment&)>& f) const;

  void set_segment_listener(segment_listener f);

  pool_stats stats() const;

  /// Called by ~chunk.
  void drop_local(uint32_t segment, uint64_t offset);

private:
  struct slot {
    uint32_t segment = 0;
    uint64_t offset = 0;
    size_t capacity = 0;
    uint64_t generation = 0;
    bool local = false;
    uint32_t loans = 0;
    size_t size_class = 0;
    std::weak_ptr<chunk> local_owner;
  };
  using loan_key = std::tuple<uint32_t, uint64_t, uint64_t>; // segment, offset, generation
  struct loan_count {
    uint32_t count = 0;
    uint64_t bytes_each = 0;
  };
  struct peer_state {
    quota limits;
    uint64_t bytes = 0;
    uint32_t loans = 0;
    std::map<loan_key, loan_count> held;
  };

  caf::expected<uint32_t> add_segment(size_t bytes, size_t size_class, size_t chunk_size);
  void maybe_free(slot& s);

  mutable std::mutex mutex_;
  std::map<uint32_t, segment> segments_;
  std::map<std::pair<uint32_t, uint64_t>, slot> slots_;
  std::vector<std::deque<std::pair<uint32_t, uint64_t>>> free_; // per slab size class
  std::multimap<size_t, std::pair<uint32_t, uint64_t>> free_large_; // by capacity
  std::map<uint64_t, peer_state> peers_;
  uint32_t next_segment_ = 1;
  segment_listener listener_;
  pool_stats stats_;
  std::shared_ptr<memory_budget> budget_;
};

} // namespace modelreg::shm

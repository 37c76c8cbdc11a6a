#include "modelreg/shm/pool.hpp"

#include <array>

#include "modelreg/messages/error.hpp"

namespace modelreg::shm {

namespace {

struct size_class {
  size_t chunk;
  size_t per_segment;
};

constexpr std::array<size_class, 4> slab_classes{{
  {4096, 256},               // 1 MiB segments
  {64 * 1024, 64},           // 4 MiB
  {1024 * 1024, 4},          // 4 MiB
  {16 * 1024 * 1024, 1},     // 16 MiB
}};
// Segments are pre-faulted (resident at once), so the large classes keep few
// chunks per segment: a client sending a few 300 KiB recordings should not pay
// 16 MiB of resident memory for them.

constexpr size_t large_class = slab_classes.size();
constexpr size_t large_rounding = 2 * 1024 * 1024;

} // namespace

// -- chunk --------------------------------------------------------------------

chunk::chunk(std::shared_ptr<pool> owner, uint32_t segment, uint64_t offset, size_t capacity,
             uint64_t generation, std::byte* data) noexcept
  : owner_(std::move(owner)),
    segment_(segment),
    offset_(offset),
    capacity_(capacity),
    generation_(generation),
    data_(data) {}

chunk::~chunk() {
  owner_->drop_local(segment_, offset_);
}

// -- pool ---------------------------------------------------------------------

bool memory_budget::take(uint64_t bytes) {
  auto used = used_.load();
  do {
    if (used + bytes > limit_)
      return false;
  } while (!used_.compare_exchange_weak(used, used + bytes));
  return true;
}

std::shared_ptr<pool> pool::create(std::shared_ptr<memory_budget> budget) {
  auto result = std::shared_ptr<pool>{new pool};
  result->free_.resize(slab_classes.size());
  result->budget_ = std::move(budget);
  return result;
}

pool::~pool() {
  if (budget_)
    budget_->give(stats_.bytes_mapped);
}

caf::expected<uint32_t> pool::add_segment(size_t bytes, size_t size_class, size_t chunk_size) {
  auto rounded = (bytes + page_size() - 1) / page_size() * page_size();
  if (budget_ && !budget_->take(rounded))
    return make_error(errc::quota_exceeded,
                      "the node-wide shared-memory limit (" + std::to_string(budget_->limit()) +
                        " bytes) is reached: " + std::to_string(budget_->used()) +
                        " bytes mapped, " + std::to_string(rounded) + " more asked for");
  auto id = next_segment_++;
  auto seg = segment::create(bytes, "pool-" + std::to_string(id));
  if (!seg) {
    if (budget_)
      budget_->give(rounded);
    return seg.error();
  }
  auto size = seg->size();
  for (uint64_t off = 0; off + chunk_size <= size; off += chunk_size) {
    slots_[{id, off}] = slot{id, off, chunk_size, 0, false, 0, size_class, {}};
    if (size_class < slab_classes.size())
      free_[size_class].emplace_back(id, off);
    else
      free_large_.emplace(chunk_size, std::make_pair(id, off));
  }
  ++stats_.segments;
  stats_.bytes_mapped += size;
  auto& stored = segments_.emplace(id, std::move(*seg)).first->second;
  if (listener_)
    listener_(id, stored);
  return id;
}

caf::expected<chunk_ptr> pool::allocate(size_t bytes) {
  std::unique_lock guard{mutex_};
  std::pair<uint32_t, uint64_t> where;
  size_t cls = large_class;
  for (size_t i = 0; i < slab_classes.size(); ++i)
    if (bytes <= slab_classes[i].chunk) {
      cls = i;
      break;
    }
  if (cls < large_class) {
    auto& list = free_[cls];
    if (list.empty()) {
      const auto& c = slab_classes[cls];
      if (auto added = add_segment(c.chunk * c.per_segment, cls, c.chunk); !added)
        return added.error();
    }
    where = list.front();
    list.pop_front();
  } else {
    auto rounded = (bytes + large_rounding - 1) / large_rounding * large_rounding;
    auto i = free_large_.lower_bound(rounded);
    // Reuse a freed large segment unless it wastes more than half of it.
    if (i == free_large_.end() || i->first > 2 * rounded) {
      auto added = add_segment(rounded, large_class, rounded);
      if (!added)
        return added.error();
      i = free_large_.find(rounded);
      while (i->second.first != *added)
        ++i;
    }
    where = i->second;
    free_large_.erase(i);
  }
  auto& s = slots_.at(where);
  s.local = true;
  ++s.generation;
  ++stats_.chunks_in_use;
  auto* data = segments_.at(s.segment).data() + s.offset;
  auto result = std::make_shared<chunk>(shared_from_this(), s.segment, s.offset, s.capacity,
                                        s.generation, data);
  s.local_owner = result;
  return result;
}

chunk_ptr pool::locate(const void* p, size_t n) const {
  std::lock_guard guard{mutex_};
  for (const auto& [id, seg] : segments_) {
    if (!seg.contains(p, n))
      continue;
    auto offset = static_cast<uint64_t>(static_cast<const std::byte*>(p) - seg.data());
    auto i = slots_.upper_bound({id, offset});
    if (i == slots_.begin())
      return nullptr;
    --i;
    const auto& s = i->second;
    if (s.segment != id || offset + n > s.offset + s.capacity)
      return nullptr;
    return s.local_owner.lock();
  }
  return nullptr;
}

void pool::maybe_free(slot& s) {
  if (s.local || s.loans > 0)
    return;
  --stats_.chunks_in_use;
  if (s.size_class < slab_classes.size())
    free_[s.size_class].emplace_back(s.segment, s.offset);
  else
    free_large_.emplace(s.capacity, std::make_pair(s.segment, s.offset));
}

void pool::drop_local(uint32_t segment, uint64_t offset) {
  std::lock_guard guard{mutex_};
  auto& s = slots_.at({segment, offset});
  s.local = false;
  maybe_free(s);
}

caf::expected<chunk_id> pool::lend(const chunk_ptr& c, uint64_t peer, uint64_t bytes) {
  std::lock_guard guard{mutex_};
  auto id = c->id();
  auto& p = peers_[peer];
  if (p.loans + 1 > p.limits.max_loans || p.bytes + bytes > p.limits.max_bytes)
    return make_error(errc::quota_exceeded,
                      "peer holds " + std::to_string(p.loans) + " loans of " +
                        std::to_string(p.bytes) + " bytes; quota is " +
                        std::to_string(p.limits.max_loans) + " loans of " +
                        std::to_string(p.limits.max_bytes) + " bytes, this needs " +
                        std::to_string(bytes) + " more");
  auto& held = p.held[{id.segment, id.offset, id.generation}];
  ++held.count;
  held.bytes_each = bytes;
  ++p.loans;
  p.bytes += bytes;
  ++slots_.at({id.segment, id.offset}).loans;
  ++stats_.loans_outstanding;
  stats_.bytes_lent += bytes;
  return id;
}

caf::error pool::give_back(uint64_t peer, const chunk_id& id) {
  std::lock_guard guard{mutex_};
  auto p = peers_.find(peer);
  if (p == peers_.end())
    return make_error(errc::malformed_frame, "return from a peer that holds nothing");
  auto h = p->second.held.find({id.segment, id.offset, id.generation});
  if (h == p->second.held.end())
    return make_error(errc::malformed_frame,
                      "return of segment " + std::to_string(id.segment) + " offset " +
                        std::to_string(id.offset) + " generation " +
                        std::to_string(id.generation) + " matches no loan to this peer");
  p->second.bytes -= h->second.bytes_each;
  --p->second.loans;
  --stats_.loans_outstanding;
  stats_.bytes_lent -= h->second.bytes_each;
  if (--h->second.count == 0)
    p->second.held.erase(h);
  auto& s = slots_.at({id.segment, id.offset});
  --s.loans;
  maybe_free(s);
  return {};
}

size_t pool::reclaim(uint64_t peer) {
  std::lock_guard guard{mutex_};
  auto p = peers_.find(peer);
  if (p == peers_.end())
    return 0;
  size_t n = 0;
  for (auto& [key, held] : p->second.held) {
    auto& s = slots_.at({std::get<0>(key), std::get<1>(key)});
    s.loans -= held.count;
    n += held.count;
    stats_.loans_outstanding -= held.count;
    stats_.bytes_lent -= held.count * held.bytes_each;
    maybe_free(s);
  }
  p->second.held.clear();
  p->second.loans = 0;
  p->second.bytes = 0;
  return n;
}

void pool::set_quota(uint64_t peer, quota q) {
  std::lock_guard guard{mutex_};
  peers_[peer].limits = q;
}

void pool::forget_peer(uint64_t peer) {
  reclaim(peer);
  std::lock_guard guard{mutex_};
  peers_.erase(peer);
}

const segment* pool::find_segment(uint32_t id) const {
  std::lock_guard guard{mutex_};
  auto i = segments_.find(id);
  return i == segments_.end() ? nullptr : &i->second;
}

void pool::for_each_segment(const std::function<void(uint32_t, const segment&)>& f) const {
  std::lock_guard guard{mutex_};
  for (const auto& [id, seg] : segments_)
    f(id, seg);
}

void pool::set_segment_listener(segment_listener f) {
  std::lock_guard guard{mutex_};
  listener_ = std::move(f);
}

pool_stats pool::stats() const {
  std::lock_guard guard{mutex_};
  return stats_;
}

} // namespace modelreg::shm

#include "modelreg/transport/ring.hpp"


namespace modelreg::transport {

size_t control_bytes(uint32_t slots) {
  return offsetof(control_block, slots) + sizeof(descriptor) * slots;
}

bool ring_writer::try_push(const descriptor& d) {
  auto head = mine_->head.load(std::memory_order_relaxed);
  auto consumed = peer_->consumed.load(std::memory_order_acquire);
  if (head - consumed >= slots_)
    return false;
  mine_->slots[head % slots_] = d;
  mine_->head.store(head + 1, std::memory_order_release);
  return true;
}

bool ring_writer::peer_armed() {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (peer_->armed.load(std::memory_order_relaxed) == 0)
    return false;
  ++doorbells_;
  return true;
}

bool ring_reader::ready() const noexcept {
  return peer_->head.load(std::memory_order_acquire) !=
         mine_->consumed.load(std::memory_order_relaxed);
}

bool ring_reader::try_pop(descriptor& out) {
  auto consumed = mine_->consumed.load(std::memory_order_relaxed);
  if (peer_->head.load(std::memory_order_acquire) == consumed)
    return false;
  out = peer_->slots[consumed % slots_];
  mine_->consumed.store(consumed + 1, std::memory_order_release);
  return true;
}

bool ring_reader::arm() {
  mine_->armed.store(1, std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (ready()) {
    mine_->armed.store(0, std::memory_order_relaxed);
    return false;
  }
  return true;
}

void ring_reader::disarm() {
  mine_->armed.store(0, std::memory_order_relaxed);
}

} // namespace modelreg::transport

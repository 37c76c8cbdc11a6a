// Descriptor rings in shared memory, one per direction, with an "armed" flag;
// a sleeping receiver is woken by a `ring` datagram on the connection's socket.
//
// Each side of a connection owns one small control segment that only it
// writes and its peer maps read-only:
//
//   control_block (mine)           read by the peer as
//   ├ head      descriptors I published in my ring       its input
//   ├ consumed  descriptors of the peer's ring I took    its flow control
//   ├ armed     I am about to sleep on my doorbell       whether to wake me
//   └ slots[n]  my outbound ring
//
// A producer publishes a descriptor by writing the slot, then `head`
// (release), then — after a full fence — reads the peer's `armed` and wakes
// the peer only if it is set. A consumer that finds its input empty spins
// briefly, sets `armed`, fences, re-checks, and only then sleeps. So a busy
// receiver costs no system call per message.
//
// Why the socket and not an eventfd: a descriptor passed to another process
// shares its file status flags with it, so a peer could make a shared eventfd
// blocking (or fill its counter) and stall whoever writes or reads it. Each
// end of a socket is its own open file, sent to with MSG_DONTWAIT. Positions only grow (64
// bits); nothing in shared memory is a pointer.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>

namespace modelreg::transport {

enum class descriptor_kind : uint32_t {
  frame = 1,    ///< a control message in the sender's segment
  give_back = 2 ///< the sender of this descriptor returns a loaned chunk
};

struct descriptor {
  uint32_t kind = 0;
  uint32_t segment = 0;
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t generation = 0;
};

static_assert(sizeof(descriptor) == 32);

struct control_block {
  alignas(64) std::atomic<uint64_t> head{0};
  alignas(64) std::atomic<uint64_t> consumed{0};
  alignas(64) std::atomic<uint32_t> armed{0};
  alignas(64) descriptor slots[1]; // really `ring_slots` of them
};

static_assert(std::atomic<uint64_t>::is_always_lock_free);

/// Bytes of a control segment holding `slots` descriptors.
size_t control_bytes(uint32_t slots);

/// The producing half: my control block (read-write) and the peer's (for its
/// `consumed` and `armed`). Not thread-safe: callers serialise pushes.
class ring_writer {
public:
  ring_writer() = default;
  ring_writer(control_block* mine, const control_block* peer, uint32_t slots)
    : mine_(mine), peer_(peer), slots_(slots) {}

  /// Publishes `d`; false if the ring is full.
  bool try_push(const descriptor& d);

  /// True if the peer sleeps and must be woken (call after one or more
  /// pushes; the caller sends the wake-up).
  bool peer_armed();

  uint64_t doorbells_rung() const noexcept { return doorbells_; }

private:
  control_block* mine_ = nullptr;
  const control_block* peer_ = nullptr;
  uint32_t slots_ = 0;
  uint64_t doorbells_ = 0;
};

/// The consuming half: the peer's control block (read-only) and mine (for
/// `consumed` and `armed`). Used by one thread only.
class ring_reader {
public:
  ring_reader() = default;
  ring_reader(const control_block* peer, control_block* mine, uint32_t slots)
    : peer_(peer), mine_(mine), slots_(slots) {}

  /// Takes the next descriptor if there is one.
  bool try_pop(descriptor& out);

  /// True if a descriptor is waiting.
  bool ready() const noexcept;

  /// Sets `armed`, then re-checks: true if the caller may sleep now.
  bool arm();
  void disarm();

private:
  const control_block* peer_ = nullptr;
  control_block* mine_ = nullptr;
  uint32_t slots_ = 0;
};

} // namespace modelreg::transport

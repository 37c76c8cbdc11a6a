// Frames: Cap'n Proto control messages that reference tensors in shared
// memory.
//
// Sending: `outgoing_frame` builds its message directly in chunks loaned from
// the sender's pool (no serialisation copy) and records which chunks the
// frame references; the connection lends them to the peer when it sends.
//
// Receiving: `inbound_frame::decode` copies the small control message into
// private memory first (so the sender cannot change it while it is checked),
// parses it with explicit reader limits, and checks every TensorRef against
// the segment it names and `product(shape) * itemsize <= nbytes` before any
// tensor is handed out. Tensors from a frame read the sender's memory in
// place; the frame's loans go back to the sender when the frame and every
// tensor taken from it are gone.
//
// Thread-safety: an outgoing_frame is built by one thread; an inbound_frame
// is immutable and may be shared across threads and actors.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <caf/expected.hpp>

#include "modelreg/messages/wire.capnp.h"
#include "modelreg/shm/pool.hpp"
#include "modelreg/tensor/tensor.hpp"

namespace modelreg::transport {

/// Counters every endpoint keeps (and tests read).
struct copy_counters {
  std::atomic<uint64_t> zero_copy_tensors{0}; ///< tensors sent or received by reference
  std::atomic<uint64_t> copied_bytes{0};      ///< tensor bytes copied (into shm or inline)
};

/// Reader limits for untrusted control messages.
inline constexpr uint64_t max_control_bytes = 1 << 20;
inline constexpr uint64_t max_inline_frame_bytes = uint64_t{600} << 20;

class outgoing_frame {
public:
  /// `shared_memory`: tensors go by reference (copied into the pool first if
  /// they live elsewhere); otherwise their bytes are inlined.
  outgoing_frame(std::shared_ptr<shm::pool> pool, bool shared_memory, copy_counters& counters);
  ~outgoing_frame();
  outgoing_frame(outgoing_frame&&) noexcept;
  outgoing_frame& operator=(outgoing_frame&&) noexcept;

  wire::Frame::Builder root();

  /// Fills `list` with `tensors` (references or inline data).
  caf::error put_tensors(capnp::List<wire::NamedTensor>::Builder list, const tensor_map& tensors);

  /// Finishes the message. In shared-memory mode: the chunk holding the flat
  /// message and its byte length; the chunks to lend are `referenced()`.
  caf::expected<std::pair<shm::chunk_ptr, uint64_t>> finish_in_place();

  /// Finishes the message as one flat byte array (inline mode).
  kj::Array<capnp::word> finish_flat();

  /// Chunks this frame references (each becomes one loan).
  const std::vector<shm::chunk_ptr>& referenced() const noexcept { return referenced_; }

private:
  class builder;
  std::shared_ptr<shm::pool> pool_;
  bool shared_memory_;
  copy_counters* counters_;
  std::unique_ptr<builder> builder_;
  std::vector<shm::chunk_ptr> referenced_;
};

/// Resolves segment ids a peer announced to its mapped segments.
using segment_lookup = std::function<std::shared_ptr<const shm::segment>(uint32_t)>;

/// Called with the frame's loans when the frame (and its tensors) die.
using loan_return = std::function<void(const std::vector<shm::chunk_id>&)>;

class inbound_frame : public std::enable_shared_from_this<inbound_frame> {
public:
  /// Decodes `bytes` (already copied into private memory; the frame takes
  /// them). `malformed_frame` for anything that does not decode or check.
  static caf::expected<std::shared_ptr<inbound_frame>>
  decode(kj::Array<capnp::word> bytes, const segment_lookup& segments, loan_return on_release,
         copy_counters& counters);

  ~inbound_frame();

  wire::Frame::Reader root() const;

  /// The tensors of a list in this frame, viewing the sender's memory.
  caf::expected<tensor_map> tensors(capnp::List<wire::NamedTensor>::Reader list) const;

  /// True if `t`'s bytes lie in a read-only mapping of a peer's segment.
  bool in_readonly_mapping(const tensor& t) const;

private:
  inbound_frame() = default;
  caf::error check_tensor(wire::NamedTensor::Reader t, const segment_lookup& segments);

  kj::Array<capnp::word> bytes_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
  std::map<uint32_t, std::shared_ptr<const shm::segment>> pinned_;
  std::vector<shm::chunk_id> loans_;
  loan_return on_release_;
};

/// Reads a frame's root with reader limits; translates kj exceptions.
caf::error checked(const std::function<void()>& f);

} // namespace modelreg::transport

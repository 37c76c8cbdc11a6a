// Frames as plain bytes, for peers reached through CAF's middleman (no shared
// memory: tensors travel inline). Internal to modelreg.
#pragma once

#include <cstring>
#include <vector>

#include "modelreg/messages/error.hpp"
#include "modelreg/transport/endpoint.hpp"

namespace modelreg::detail {

/// The finished frame as one flat byte string.
inline std::vector<char> to_bytes(transport::outgoing_frame& frame) {
  auto flat = frame.finish_flat();
  auto bytes = flat.asChars();
  return {bytes.begin(), bytes.end()};
}

/// Decodes bytes from a peer on another host (with the same checks and
/// limits as frames from this host; references into shared memory are
/// rejected since such a peer has none).
inline caf::expected<transport::frame_ptr> from_bytes(const std::vector<char>& bytes,
                                                      transport::copy_counters& counters) {
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0 ||
      bytes.size() > transport::max_inline_frame_bytes)
    return make_error(errc::malformed_frame,
                      "frame of " + std::to_string(bytes.size()) + " bytes is not whole words");
  auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  auto decoded = transport::inbound_frame::decode(
    std::move(words), [](uint32_t) { return std::shared_ptr<const shm::segment>{}; }, {},
    counters);
  if (!decoded)
    return decoded.error();
  return transport::frame_ptr{std::move(*decoded)};
}

} // namespace modelreg::detail

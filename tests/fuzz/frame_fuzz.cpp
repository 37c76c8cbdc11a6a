// libFuzzer target: whatever bytes a peer puts in a frame, decoding either
// succeeds with tensors that lie inside their segment, or fails with an
// error; it never crashes, reads out of bounds or leaks (run under ASan and
// UBSan). CI runs it for a bounded time (make test), starting from the seed
// frames in fuzz/seeds/ (Cap'n Proto text, encoded at build time with
// `capnp encode ... wire.capnp Frame`).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <unistd.h>

#include "modelreg/shm/segment.hpp"
#include "modelreg/transport/frame.hpp"

using namespace modelreg;

namespace {

/// A real sealed segment, mapped read-only as a peer's would be: id 1.
std::shared_ptr<const shm::segment> peer_segment() {
  static std::shared_ptr<const shm::segment> seg = [] {
    auto created = shm::segment::create(64 * 1024, "fuzz");
    auto ro = shm::segment::map_readonly(::dup(created->fd()));
    return std::make_shared<const shm::segment>(std::move(*ro));
  }();
  return seg;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > transport::max_control_bytes)
    return 0;
  auto words = kj::heapArray<capnp::word>((size + 7) / 8);
  std::memset(words.begin(), 0, words.size() * sizeof(capnp::word));
  if (size > 0)
    std::memcpy(words.begin(), data, size);
  transport::copy_counters counters;
  auto seg = peer_segment();
  size_t returned = 0;
  auto frame = transport::inbound_frame::decode(
    std::move(words), [&](uint32_t id) { return id == 1 ? seg : nullptr; },
    [&](const std::vector<shm::chunk_id>& loans) { returned += loans.size(); }, counters);
  if (!frame)
    return 0;
  auto check = [&](capnp::List<wire::NamedTensor>::Reader list) {
    auto tensors = (*frame)->tensors(list);
    if (!tensors)
      return;
    for (const auto& [name, t] : *tensors) {
      // Every byte of every accepted tensor must be readable.
      if (t.element_count() > 0 && t.is_contiguous()) {
        volatile uint8_t first = static_cast<uint8_t>(t.data()[0]);
        volatile uint8_t last = static_cast<uint8_t>(t.data()[t.nbytes() - 1]);
        (void) first;
        (void) last;
      }
    }
  };
  kj::runCatchingExceptions([&] {
    auto root = (*frame)->root();
    if (root.isRequest()) {
      auto req = root.getRequest();
      if (req.isEcho())
        check(req.getEcho());
      else if (req.isInfer())
        check(req.getInfer().getInputs());
    } else if (root.isResponse() && root.getResponse().isOutputs()) {
      check(root.getResponse().getOutputs());
    }
  });
  return 0;
}

#include "modelreg/transport/frame.hpp"

#include <cstring>

#include <capnp/serialize.h>
#include <kj/exception.h>

#include "modelreg/messages/error.hpp"

namespace modelreg::transport {

namespace {

constexpr size_t word_bytes = sizeof(capnp::word);
constexpr size_t first_segment_bytes = 4096;

capnp::ReaderOptions reader_limits() {
  capnp::ReaderOptions opts;
  opts.traversalLimitInWords = (max_inline_frame_bytes / word_bytes) + (max_control_bytes / word_bytes);
  opts.nestingLimit = 16;
  return opts;
}

} // namespace

caf::error checked(const std::function<void()>& f) {
  try {
    f();
    return {};
  } catch (const kj::Exception& e) {
    return make_error(errc::malformed_frame, std::string{"frame does not decode: "} +
                                               e.getDescription().cStr());
  }
}

// -- outgoing -----------------------------------------------------------------

/// A MessageBuilder whose segments are pool chunks. The first chunk keeps
/// its first word free for the segment table, so a one-segment message is
/// sent exactly where it was built.
class outgoing_frame::builder final : public capnp::MessageBuilder {
public:
  explicit builder(std::shared_ptr<shm::pool> pool) : pool_(std::move(pool)) {}

  kj::ArrayPtr<capnp::word> allocateSegment(uint minimum_words) override {
    bool first = chunks_.empty();
    size_t want = std::max<size_t>(size_t{minimum_words} * word_bytes + (first ? word_bytes : 0),
                                   first ? first_segment_bytes : 64 * 1024);
    auto c = pool_->allocate(want);
    if (!c)
      KJ_FAIL_REQUIRE("cannot allocate a shared-memory chunk for a frame");
    std::memset((*c)->data(), 0, (*c)->capacity());
    auto* words = reinterpret_cast<capnp::word*>((*c)->data());
    size_t count = (*c)->capacity() / word_bytes;
    chunks_.push_back(*c);
    if (first)
      return {words + 1, count - 1};
    return {words, count};
  }

  const std::vector<shm::chunk_ptr>& chunks() const { return chunks_; }

private:
  std::shared_ptr<shm::pool> pool_;
  std::vector<shm::chunk_ptr> chunks_;
};

outgoing_frame::outgoing_frame(std::shared_ptr<shm::pool> pool, bool shared_memory,
                               copy_counters& counters)
  : pool_(std::move(pool)),
    shared_memory_(shared_memory),
    counters_(&counters),
    builder_(std::make_unique<builder>(pool_)) {}

outgoing_frame::~outgoing_frame() = default;
outgoing_frame::outgoing_frame(outgoing_frame&&) noexcept = default;
outgoing_frame& outgoing_frame::operator=(outgoing_frame&&) noexcept = default;

wire::Frame::Builder outgoing_frame::root() {
  return builder_->getRoot<wire::Frame>();
}

caf::error outgoing_frame::put_tensors(capnp::List<wire::NamedTensor>::Builder list,
                                       const tensor_map& tensors) {
  if (list.size() != tensors.size())
    return make_error(errc::invalid_argument, "tensor list has the wrong size");
  uint32_t i = 0;
  for (const auto& [name, t] : tensors) {
    auto out = list[i++];
    out.setName(name);
    if (!shared_memory_) {
      auto src = t.is_contiguous() ? caf::expected<tensor>{t} : t.contiguous_copy();
      if (!src)
        return src.error();
      auto in = out.initInline();
      in.setDtype(static_cast<uint8_t>(t.type()));
      auto shape = in.initShape(static_cast<uint32_t>(t.rank()));
      for (uint32_t d = 0; d < t.rank(); ++d)
        shape.set(d, t.shape()[d]);
      in.setData(kj::arrayPtr(reinterpret_cast<const kj::byte*>(src->data()), src->nbytes()));
      counters_->copied_bytes += src->nbytes();
      continue;
    }
    // By reference: the tensor must live in our pool; copy it there once if
    // it does not (an ordinary heap tensor).
    auto span_bytes = t.element_count() == 0 ? 0 : t.nbytes();
    auto located = t.is_contiguous() ? pool_->locate(t.data(), span_bytes) : nullptr;
    tensor view = t;
    if (!located) {
      auto c = pool_->allocate(std::max<size_t>(t.nbytes(), 1));
      if (!c)
        return c.error();
      auto src = t.is_contiguous() ? caf::expected<tensor>{t} : t.contiguous_copy();
      if (!src)
        return src.error();
      if (src->nbytes() > 0)
        std::memcpy((*c)->data(), src->data(), src->nbytes());
      counters_->copied_bytes += src->nbytes();
      located = *c;
      auto wrapped = tensor::wrap(located, located->data(), located->capacity(),
                                  {t.type(), t.shape(), {}, 0});
      if (!wrapped)
        return wrapped.error();
      view = *wrapped;
    } else {
      ++counters_->zero_copy_tensors;
    }
    auto ref = out.initRef();
    auto id = located->id();
    ref.setSegment(id.segment);
    ref.setOffset(id.offset);
    ref.setNbytes(located->capacity());
    ref.setGeneration(id.generation);
    ref.setDtype(static_cast<uint8_t>(view.type()));
    ref.setByteOffset(static_cast<uint64_t>(view.data() - located->data()));
    auto shape = ref.initShape(static_cast<uint32_t>(view.rank()));
    auto strides = ref.initStrides(static_cast<uint32_t>(view.rank()));
    for (uint32_t d = 0; d < view.rank(); ++d) {
      shape.set(d, view.shape()[d]);
      strides.set(d, view.strides()[d]);
    }
    referenced_.push_back(std::move(located));
  }
  return {};
}

caf::expected<std::pair<shm::chunk_ptr, uint64_t>> outgoing_frame::finish_in_place() {
  auto segments = builder_->getSegmentsForOutput();
  const auto& chunks = builder_->chunks();
  if (segments.size() == 1) {
    auto& first = chunks.front();
    auto* table = reinterpret_cast<uint32_t*>(first->data());
    table[0] = 0; // segment count - 1
    table[1] = static_cast<uint32_t>(segments[0].size());
    return std::make_pair(first, (segments[0].size() + 1) * word_bytes);
  }
  // Rare (a very large control message): flatten into one chunk.
  auto flat = capnp::messageToFlatArray(segments);
  auto bytes = flat.asBytes();
  if (bytes.size() > max_control_bytes)
    return make_error(errc::invalid_argument, "control message too large");
  auto c = pool_->allocate(bytes.size());
  if (!c)
    return c.error();
  std::memcpy((*c)->data(), bytes.begin(), bytes.size());
  return std::make_pair(*c, static_cast<uint64_t>(bytes.size()));
}

kj::Array<capnp::word> outgoing_frame::finish_flat() {
  auto flat = capnp::messageToFlatArray(builder_->getSegmentsForOutput());
  return flat;
}

// -- inbound ------------------------------------------------------------------

caf::expected<std::shared_ptr<inbound_frame>>
inbound_frame::decode(kj::Array<capnp::word> bytes, const segment_lookup& segments,
                      loan_return on_release, copy_counters& counters) {
  std::shared_ptr<inbound_frame> frame{new inbound_frame};
  frame->bytes_ = std::move(bytes);
  frame->on_release_ = std::move(on_release);
  caf::error err;
  auto decode_err = checked([&] {
    frame->reader_ = std::make_unique<capnp::FlatArrayMessageReader>(
      kj::arrayPtr(frame->bytes_.begin(), frame->bytes_.size()), reader_limits());
    auto root = frame->reader_->getRoot<wire::Frame>();
    auto check_list = [&](capnp::List<wire::NamedTensor>::Reader list) {
      for (auto t : list) {
        if (err)
          return;
        err = frame->check_tensor(t, segments);
      }
    };
    switch (root.which()) {
      case wire::Frame::REQUEST: {
        auto req = root.getRequest();
        if (req.isInfer())
          check_list(req.getInfer().getInputs());
        else if (req.isEcho())
          check_list(req.getEcho());
        else if (req.isPush())
          check_list(req.getPush().getInputs());
        break;
      }
      case wire::Frame::RESPONSE:
        if (root.getResponse().isOutputs())
          check_list(root.getResponse().getOutputs());
        break;
      default:
        break;
    }
  });
  if (decode_err)
    return decode_err;
  if (err)
    return err;
  counters.zero_copy_tensors += frame->loans_.size();
  return frame;
}

inbound_frame::~inbound_frame() {
  if (!loans_.empty() && on_release_)
    on_release_(loans_);
}

wire::Frame::Reader inbound_frame::root() const {
  return reader_->getRoot<wire::Frame>();
}

caf::error inbound_frame::check_tensor(wire::NamedTensor::Reader t,
                                       const segment_lookup& segments) {
  if (t.isInline()) {
    auto in = t.getInline();
    if (!is_valid_dtype(in.getDtype()))
      return make_error(errc::malformed_frame, "unknown dtype " + std::to_string(in.getDtype()));
    return {};
  }
  if (!t.isRef())
    return make_error(errc::malformed_frame, "tensor is neither a reference nor inline");
  auto ref = t.getRef();
  auto seg = segments(ref.getSegment());
  if (!seg)
    return make_error(errc::malformed_frame,
                      "tensor references unknown segment " + std::to_string(ref.getSegment()));
  auto offset = ref.getOffset();
  auto nbytes = ref.getNbytes();
  if (offset > seg->size() || nbytes > seg->size() - offset)
    return make_error(errc::malformed_frame, "tensor reference lies outside its segment");
  if (!is_valid_dtype(ref.getDtype()))
    return make_error(errc::malformed_frame, "unknown dtype " + std::to_string(ref.getDtype()));
  // The loan exists whether or not the rest checks out: give it back either way.
  loans_.push_back({ref.getSegment(), offset, ref.getGeneration()});
  pinned_.emplace(ref.getSegment(), seg);
  tensor_layout layout{static_cast<dtype>(ref.getDtype()), {}, {}, ref.getByteOffset()};
  for (auto d : ref.getShape())
    layout.shape.push_back(d);
  for (auto s : ref.getStrides())
    layout.strides.push_back(s);
  auto view = tensor::wrap(nullptr, seg->data() + offset, nbytes, std::move(layout));
  if (!view)
    return make_error(errc::malformed_frame, "bad tensor '" + std::string{t.getName().cStr()} +
                                               "': " + describe(view.error()));
  return {};
}

caf::expected<tensor_map> inbound_frame::tensors(capnp::List<wire::NamedTensor>::Reader list) const {
  tensor_map result;
  caf::error err;
  auto decode_err = checked([&] {
    auto self = shared_from_this();
    for (auto t : list) {
      std::string name = t.getName().cStr();
      tensor_layout layout;
      const std::byte* base = nullptr;
      size_t capacity = 0;
      if (t.isInline()) {
        auto in = t.getInline();
        auto data = in.getData();
        layout.type = static_cast<dtype>(in.getDtype());
        for (auto d : in.getShape())
          layout.shape.push_back(d);
        base = reinterpret_cast<const std::byte*>(data.begin());
        capacity = data.size();
      } else {
        auto ref = t.getRef();
        auto pinned = pinned_.find(ref.getSegment());
        if (pinned == pinned_.end()) {
          // Only lists checked at decode may be read (a list of a request
          // kind decode does not know).
          err = make_error(errc::malformed_frame, "tensor '" + name + "' was not checked");
          return;
        }
        const auto& seg = pinned->second;
        layout.type = static_cast<dtype>(ref.getDtype());
        layout.byte_offset = ref.getByteOffset();
        for (auto d : ref.getShape())
          layout.shape.push_back(d);
        for (auto s : ref.getStrides())
          layout.strides.push_back(s);
        base = seg->data() + ref.getOffset();
        capacity = ref.getNbytes();
      }
      auto view = tensor::wrap(self, base, capacity, std::move(layout));
      if (!view) {
        err = make_error(errc::malformed_frame, "bad tensor '" + name + "': " + describe(view.error()));
        return;
      }
      result.emplace(std::move(name), std::move(*view));
    }
  });
  if (decode_err)
    return decode_err;
  if (err)
    return err;
  return result;
}

bool inbound_frame::in_readonly_mapping(const tensor& t) const {
  for (const auto& [id, seg] : pinned_)
    if (!seg->writable() && seg->contains(t.data(), t.nbytes()))
      return true;
  return false;
}

} // namespace modelreg::transport

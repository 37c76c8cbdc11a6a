#include "modelreg/tensor/tensor.hpp"

#include <cstring>
#include <new>

#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

constexpr size_t storage_alignment = 64;

bool mul_overflows(size_t a, size_t b, size_t& out) {
  return __builtin_mul_overflow(a, b, &out);
}

class heap_allocator_impl final : public tensor_allocator {
public:
  caf::expected<tensor> allocate(dtype type, std::vector<int64_t> shape) override {
    return tensor::allocate(type, std::move(shape));
  }
};

} // namespace

tensor::tensor() {
  layout_.shape = {0};
  layout_.strides = {1};
}

caf::expected<tensor> tensor::allocate(dtype type, std::vector<int64_t> shape) {
  auto size = itemsize(type);
  if (size == 0)
    return make_error(errc::invalid_argument, "unknown dtype " + to_string(type));
  size_t count = 1;
  for (auto d : shape) {
    if (d < 0 || mul_overflows(count, static_cast<size_t>(d), count))
      return make_error(errc::invalid_argument, "invalid or overflowing shape");
  }
  size_t bytes;
  if (mul_overflows(count, size, bytes))
    return make_error(errc::invalid_argument, "tensor size overflows");
  auto alloc = std::max<size_t>(bytes, 1);
  auto* raw = static_cast<std::byte*>(::operator new(alloc, std::align_val_t{storage_alignment},
                                                     std::nothrow));
  if (raw == nullptr)
    return make_error(errc::out_of_memory, "cannot allocate " + std::to_string(bytes) + " bytes");
  std::shared_ptr<const void> owner{raw, [](const void* p) {
                                      ::operator delete(const_cast<void*>(p),
                                                        std::align_val_t{storage_alignment});
                                    }};
  return wrap(std::move(owner), raw, bytes, tensor_layout{type, std::move(shape), {}, 0}, true);
}

caf::expected<tensor> tensor::wrap(std::shared_ptr<const void> owner, const std::byte* base,
                                   size_t capacity, tensor_layout layout, bool writable) {
  auto size = itemsize(layout.type);
  if (size == 0)
    return make_error(errc::invalid_argument,
                      "unknown dtype " + std::to_string(static_cast<int>(layout.type)));
  if (base == nullptr && capacity > 0)
    return make_error(errc::invalid_argument, "null storage with non-zero capacity");
  auto rank = layout.shape.size();
  if (!layout.strides.empty() && layout.strides.size() != rank)
    return make_error(errc::invalid_argument, "strides and shape differ in rank");
  size_t count = 1;
  for (auto d : layout.shape)
    if (d < 0 || mul_overflows(count, static_cast<size_t>(d), count))
      return make_error(errc::invalid_argument, "negative or overflowing shape");
  if (layout.strides.empty()) {
    // C-contiguous strides; every one must fit in int64 (found by fuzzing:
    // a product can fit in size_t and still overflow int64).
    layout.strides.resize(rank);
    int64_t s = 1;
    for (size_t i = rank; i-- > 0;) {
      layout.strides[i] = s;
      if (__builtin_mul_overflow(s, std::max<int64_t>(layout.shape[i], 1), &s))
        return make_error(errc::invalid_argument, "shape overflows its strides");
    }
  }
  // The highest element offset reached (strides may not be negative here).
  size_t last = 0;
  if (count > 0) {
    for (size_t i = 0; i < rank; ++i) {
      if (layout.strides[i] < 0)
        return make_error(errc::invalid_argument, "negative strides are not supported");
      size_t step;
      if (mul_overflows(static_cast<size_t>(layout.shape[i] - 1),
                        static_cast<size_t>(layout.strides[i]), step) ||
          __builtin_add_overflow(last, step, &last))
        return make_error(errc::invalid_argument, "strides overflow");
    }
  }
  size_t span_bytes = 0;
  if (count > 0) {
    if (__builtin_add_overflow(last, size_t{1}, &span_bytes) ||
        mul_overflows(span_bytes, size, span_bytes))
      return make_error(errc::invalid_argument, "tensor size overflows");
  }
  size_t end;
  if (__builtin_add_overflow(layout.byte_offset, span_bytes, &end) || end > capacity)
    return make_error(errc::invalid_argument,
                      "tensor of " + std::to_string(span_bytes) + " bytes at offset " +
                        std::to_string(layout.byte_offset) + " exceeds its storage of " +
                        std::to_string(capacity) + " bytes");
  tensor t;
  t.layout_ = std::move(layout);
  t.owner_ = std::move(owner);
  t.base_ = base;
  t.capacity_ = capacity;
  t.count_ = count;
  t.writable_ = writable;
  return t;
}

bool tensor::is_contiguous() const noexcept {
  int64_t expect = 1;
  for (size_t i = layout_.shape.size(); i-- > 0;) {
    if (layout_.shape[i] != 1 && layout_.strides[i] != expect)
      return false;
    expect *= layout_.shape[i];
  }
  return true;
}

std::byte* tensor::mutable_data() const noexcept {
  return writable_ ? const_cast<std::byte*>(data()) : nullptr;
}

caf::error tensor::check_view(dtype want) const {
  if (layout_.type != want)
    return make_error(errc::invalid_argument,
                      "expected " + to_string(want) + ", got " + describe());
  if (!is_contiguous())
    return make_error(errc::invalid_argument, "tensor " + describe() + " is not contiguous");
  return {};
}

caf::error tensor::read_only_error() {
  return make_error(errc::invalid_argument, "tensor storage is read-only");
}

caf::expected<tensor> tensor::copy_from(const void* src, size_t bytes) {
  if (bytes != nbytes() || !writable_)
    return make_error(errc::invalid_argument, "copy of wrong size into tensor");
  if (bytes > 0)
    std::memcpy(mutable_data(), src, bytes);
  return *this;
}

caf::expected<tensor> tensor::contiguous_copy() const {
  auto out = allocate(layout_.type, layout_.shape);
  if (!out || count_ == 0)
    return out;
  auto size = itemsize(layout_.type);
  if (is_contiguous()) {
    std::memcpy(out->mutable_data(), data(), nbytes());
    return out;
  }
  auto rank = layout_.shape.size();
  std::vector<int64_t> index(rank, 0);
  auto* dst = out->mutable_data();
  for (size_t n = 0; n < count_; ++n) {
    size_t offset = 0;
    for (size_t i = 0; i < rank; ++i)
      offset += static_cast<size_t>(index[i] * layout_.strides[i]);
    std::memcpy(dst + n * size, data() + offset * size, size);
    for (size_t i = rank; i-- > 0;) {
      if (++index[i] < layout_.shape[i])
        break;
      index[i] = 0;
    }
  }
  return out;
}

std::string tensor::describe() const {
  std::string s = to_string(layout_.type) + "[";
  for (size_t i = 0; i < layout_.shape.size(); ++i) {
    if (i > 0)
      s += ",";
    s += std::to_string(layout_.shape[i]);
  }
  return s + "]";
}

tensor_allocator& heap_allocator() {
  static heap_allocator_impl instance;
  return instance;
}

} // namespace modelreg

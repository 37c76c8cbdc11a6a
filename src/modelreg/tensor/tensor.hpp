// A tensor: element type, shape, strides and a shared owner of its bytes.
//
// A tensor never copies its storage: copies of a tensor share the same bytes
// through `owner()`, which may be heap memory, a shared-memory lease, a mapped
// file or an imported DLPack tensor. The storage stays alive as long as any
// copy does. Tensors are immutable values once built, except through
// `mutable_data()` on storage their creator marked writable; they may be read
// from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "modelreg/tensor/dtype.hpp"

namespace modelreg {

/// Describes how a tensor reads its owner's bytes.
struct tensor_layout {
  dtype type = dtype::f32;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides; ///< in elements; empty means C-contiguous
  size_t byte_offset = 0;       ///< from the start of the storage
};

class tensor {
public:
  /// An empty f32 tensor of shape {0}.
  tensor();

  /// Allocates uninitialised, 64-byte-aligned, writable heap storage.
  static caf::expected<tensor> allocate(dtype type, std::vector<int64_t> shape);

  /// Views `capacity` bytes at `base`, kept alive by `owner`. Fails with
  /// `invalid_argument` if the layout reaches outside the storage, a
  /// dimension is negative, or the sizes overflow.
  static caf::expected<tensor> wrap(std::shared_ptr<const void> owner, const std::byte* base,
                                    size_t capacity, tensor_layout layout, bool writable = false);

  /// Copies `values` into a new heap tensor (1-D unless `shape` is given).
  template <class T>
  static caf::expected<tensor> from_values(const std::vector<T>& values,
                                           std::vector<int64_t> shape = {}) {
    if (shape.empty())
      shape.push_back(static_cast<int64_t>(values.size()));
    auto t = allocate(dtype_of<T>(), std::move(shape));
    if (t)
      return t->copy_from(values.data(), values.size() * sizeof(T));
    return t;
  }

  dtype type() const noexcept { return layout_.type; }
  const std::vector<int64_t>& shape() const noexcept { return layout_.shape; }
  /// Strides in elements (always filled in, also for contiguous tensors).
  const std::vector<int64_t>& strides() const noexcept { return layout_.strides; }
  size_t rank() const noexcept { return layout_.shape.size(); }
  size_t byte_offset() const noexcept { return layout_.byte_offset; }
  /// Product of the shape.
  size_t element_count() const noexcept { return count_; }
  /// element_count() * itemsize: the bytes a contiguous copy would need.
  size_t nbytes() const noexcept { return count_ * itemsize(layout_.type); }
  bool is_contiguous() const noexcept;
  bool writable() const noexcept { return writable_; }

  /// First element; valid while any copy of this tensor lives.
  const std::byte* data() const noexcept { return base_ + layout_.byte_offset; }
  /// Writable first element, or nullptr if the storage is read-only.
  std::byte* mutable_data() const noexcept;
  /// Base of the whole storage and its size (for zero-copy checks).
  const std::byte* storage_base() const noexcept { return base_; }
  size_t storage_capacity() const noexcept { return capacity_; }
  const std::shared_ptr<const void>& owner() const noexcept { return owner_; }

  /// The elements as T, if the dtype matches and the tensor is contiguous.
  template <class T>
  caf::expected<std::span<const T>> values() const {
    if (auto err = check_view(dtype_of<T>()))
      return err;
    return std::span<const T>{reinterpret_cast<const T*>(data()), count_};
  }

  /// Writable elements as T (dtype, contiguity and writability checked).
  template <class T>
  caf::expected<std::span<T>> mutable_values() const {
    if (auto err = check_view(dtype_of<T>()))
      return err;
    if (!writable_)
      return read_only_error();
    return std::span<T>{reinterpret_cast<T*>(mutable_data()), count_};
  }

  /// A contiguous heap copy (used only where a copy is really wanted).
  caf::expected<tensor> contiguous_copy() const;

  /// "f32[2,3]".
  std::string describe() const;

private:
  caf::expected<tensor> copy_from(const void* src, size_t bytes);
  caf::error check_view(dtype want) const;
  static caf::error read_only_error();

  tensor_layout layout_;
  std::shared_ptr<const void> owner_;
  const std::byte* base_ = nullptr;
  size_t capacity_ = 0;
  size_t count_ = 0;
  bool writable_ = false;
};

/// Named tensors: the inputs and outputs of a model.
using tensor_map = std::map<std::string, tensor>;

/// Where a model puts its outputs. The request decides: heap memory for a
/// local caller, shared memory a remote caller maps. Implementations must be
/// thread-safe.
class tensor_allocator {
public:
  virtual ~tensor_allocator() = default;
  virtual caf::expected<tensor> allocate(dtype type, std::vector<int64_t> shape) = 0;
};

/// The process-wide heap allocator (stateless).
tensor_allocator& heap_allocator();

} // namespace modelreg

#include "modelreg/tensor/dlpack.hpp"

#include <dlpack/dlpack.h>

#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

/// Everything one exported DLManagedTensor needs, freed by its deleter.
struct export_context {
  tensor source; // keeps the storage (and any lease) alive; its shape and strides are lent
  DLManagedTensor managed{};
};

DLDataType to_dl(dtype t) {
  auto bits = static_cast<uint8_t>(itemsize(t) * 8);
  switch (t) {
    case dtype::f16:
    case dtype::f32:
    case dtype::f64:
      return {kDLFloat, bits, 1};
    case dtype::i8:
    case dtype::i16:
    case dtype::i32:
    case dtype::i64:
      return {kDLInt, bits, 1};
    default:
      return {kDLUInt, bits, 1}; // unsigned integers and boolean
  }
}

caf::expected<dtype> from_dl(DLDataType t) {
  if (t.lanes != 1)
    return make_error(errc::unsupported, "vector (lanes > 1) DLPack types are not supported");
  switch (t.code) {
    case kDLFloat:
      if (t.bits == 16) return dtype::f16;
      if (t.bits == 32) return dtype::f32;
      if (t.bits == 64) return dtype::f64;
      break;
    case kDLInt:
      if (t.bits == 8) return dtype::i8;
      if (t.bits == 16) return dtype::i16;
      if (t.bits == 32) return dtype::i32;
      if (t.bits == 64) return dtype::i64;
      break;
    case kDLUInt:
      if (t.bits == 8) return dtype::u8;
      if (t.bits == 16) return dtype::u16;
      if (t.bits == 32) return dtype::u32;
      if (t.bits == 64) return dtype::u64;
      break;
    default:
      break;
  }
  return make_error(errc::unsupported, "DLPack type code " + std::to_string(t.code) + " with " +
                                         std::to_string(t.bits) + " bits is not supported");
}

} // namespace

DLManagedTensor* to_dlpack(const tensor& t) {
  auto* ctx = new export_context;
  ctx->source = t;
  auto& dl = ctx->managed.dl_tensor;
  dl.data = const_cast<std::byte*>(t.data());
  dl.device = {kDLCPU, 0};
  dl.ndim = static_cast<int>(t.rank());
  dl.dtype = to_dl(t.type());
  // DLPack's fields are not const, but consumers only read them.
  dl.shape = const_cast<int64_t*>(ctx->source.shape().data());
  dl.strides = const_cast<int64_t*>(ctx->source.strides().data());
  dl.byte_offset = 0;
  ctx->managed.manager_ctx = ctx;
  ctx->managed.deleter = [](DLManagedTensor* self) {
    delete static_cast<export_context*>(self->manager_ctx);
  };
  return &ctx->managed;
}

caf::expected<tensor> from_dlpack(DLManagedTensor* managed, bool writable) {
  if (managed == nullptr)
    return make_error(errc::invalid_argument, "null DLManagedTensor");
  // From here on the producer's memory is ours to release, whatever happens.
  std::shared_ptr<const void> owner{managed, [](const void* p) {
                                      auto* m = static_cast<DLManagedTensor*>(const_cast<void*>(p));
                                      if (m->deleter != nullptr)
                                        m->deleter(m);
                                    }};
  const auto& dl = managed->dl_tensor;
  if (dl.device.device_type != kDLCPU)
    return make_error(errc::unsupported, "only CPU DLPack tensors can be imported");
  auto type = from_dl(dl.dtype);
  if (!type)
    return type.error();
  if (dl.ndim < 0 || (dl.ndim > 0 && dl.shape == nullptr))
    return make_error(errc::invalid_argument, "DLPack tensor without a shape");
  tensor_layout layout{*type, {}, {}, 0};
  layout.shape.assign(dl.shape, dl.shape + dl.ndim);
  if (dl.strides != nullptr)
    layout.strides.assign(dl.strides, dl.strides + dl.ndim);
  // The capacity is what the layout spans: DLPack does not say more.
  size_t last = 0, count = 1;
  for (int i = 0; i < dl.ndim; ++i) {
    if (layout.shape[i] < 0 || (!layout.strides.empty() && layout.strides[i] < 0))
      return make_error(errc::invalid_argument, "negative shape or strides in a DLPack tensor");
    count *= static_cast<size_t>(layout.shape[i]);
    auto stride = layout.strides.empty() ? 0 : layout.strides[i];
    if (layout.shape[i] > 0)
      last += static_cast<size_t>(layout.shape[i] - 1) * static_cast<size_t>(stride);
  }
  size_t span = count == 0 ? 0
                : layout.strides.empty() ? count * itemsize(*type)
                                         : (last + 1) * itemsize(*type);
  auto* base = static_cast<const std::byte*>(dl.data) + dl.byte_offset;
  return tensor::wrap(std::move(owner), base, span, std::move(layout), writable);
}

} // namespace modelreg

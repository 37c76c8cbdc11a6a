#include <gtest/gtest.h>

#include <dlpack/dlpack.h>

#include "modelreg/messages/error.hpp"
#include "modelreg/tensor/dlpack.hpp"

namespace modelreg {
namespace {

TEST(dlpack, ExportSharesTheBytesAndHoldsTheStorageUntilTheDeleter) {
  auto sut = tensor::from_values<float>({1.f, 2.f, 3.f, 4.f, 5.f, 6.f}, {2, 3});
  ASSERT_TRUE(sut);
  std::weak_ptr<const void> storage = sut->owner();
  auto* dl = to_dlpack(*sut);
  const void* data = sut->data();
  sut = caf::error{}; // the tensor is gone; the export still holds the bytes
  ASSERT_FALSE(storage.expired());
  EXPECT_EQ(dl->dl_tensor.data, data);
  EXPECT_EQ(dl->dl_tensor.ndim, 2);
  EXPECT_EQ(dl->dl_tensor.shape[0], 2);
  EXPECT_EQ(dl->dl_tensor.shape[1], 3);
  EXPECT_EQ(dl->dl_tensor.strides[0], 3);
  EXPECT_EQ(dl->dl_tensor.dtype.code, kDLFloat);
  EXPECT_EQ(dl->dl_tensor.dtype.bits, 32);
  EXPECT_EQ(dl->dl_tensor.device.device_type, kDLCPU);
  dl->deleter(dl);
  EXPECT_TRUE(storage.expired());
}

TEST(dlpack, ImportViewsTheProducersMemoryAndCallsItsDeleterOnce) {
  auto original = tensor::from_values<int16_t>({7, 8, 9});
  std::weak_ptr<const void> storage = original->owner();
  auto* dl = to_dlpack(*original);
  auto sut = from_dlpack(dl);
  ASSERT_TRUE(sut) << describe(sut.error());
  EXPECT_EQ(sut->data(), original->data());
  EXPECT_EQ(sut->type(), dtype::i16);
  EXPECT_EQ(sut->shape(), std::vector<int64_t>{3});
  EXPECT_EQ((*sut->values<int16_t>())[2], 9);
  EXPECT_FALSE(sut->writable());
  original = caf::error{};
  auto copy = *sut;
  sut = caf::error{};
  EXPECT_FALSE(storage.expired());
  copy = tensor{};
  EXPECT_TRUE(storage.expired()) << "the producer's deleter did not run";
}

TEST(dlpack, UnsupportedTensorsAreRefusedAndStillReleased) {
  auto t = tensor::from_values<float>({1.f});
  std::weak_ptr<const void> storage = t->owner();
  auto* dl = to_dlpack(*t);
  t = caf::error{};
  dl->dl_tensor.device.device_type = kDLCUDA;
  auto sut = from_dlpack(dl);
  ASSERT_FALSE(sut);
  EXPECT_TRUE(is(sut.error(), errc::unsupported));
  EXPECT_TRUE(storage.expired());
  auto* complex = to_dlpack(*tensor::from_values<float>({1.f}));
  complex->dl_tensor.dtype = {kDLComplex, 64, 1};
  EXPECT_FALSE(from_dlpack(complex));
  EXPECT_FALSE(from_dlpack(nullptr));
}

} // namespace
} // namespace modelreg

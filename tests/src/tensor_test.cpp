#include <gtest/gtest.h>

#include "modelreg/messages/error.hpp"
#include "modelreg/tensor/tensor.hpp"

namespace modelreg {
namespace {

TEST(tensor, AllocateGivesAlignedWritableContiguousStorage) {
  auto sut = tensor::allocate(dtype::f32, {2, 3});
  ASSERT_TRUE(sut);
  EXPECT_EQ(sut->element_count(), 6u);
  EXPECT_EQ(sut->nbytes(), 24u);
  EXPECT_EQ(sut->strides(), (std::vector<int64_t>{3, 1}));
  EXPECT_TRUE(sut->is_contiguous());
  EXPECT_TRUE(sut->writable());
  EXPECT_EQ(reinterpret_cast<uintptr_t>(sut->data()) % 64, 0u);
  EXPECT_EQ(sut->describe(), "f32[2,3]");
}

TEST(tensor, CopiesShareStorage) {
  auto sut = tensor::from_values<int16_t>({1, 2, 3});
  ASSERT_TRUE(sut);
  auto copy = *sut;
  EXPECT_EQ(copy.data(), sut->data());
  EXPECT_EQ(copy.owner().use_count(), 2);
}

TEST(tensor, ValuesChecksDtype) {
  auto sut = tensor::from_values<float>({1.f});
  ASSERT_TRUE(sut);
  EXPECT_TRUE(sut->values<float>());
  auto wrong = sut->values<int16_t>();
  ASSERT_FALSE(wrong);
  EXPECT_TRUE(is(wrong.error(), errc::invalid_argument));
}

TEST(tensor, WrapRejectsLayoutsOutsideTheStorage) {
  std::vector<std::byte> bytes(100);
  std::shared_ptr<const void> owner{bytes.data(), [](const void*) {}};
  EXPECT_TRUE(tensor::wrap(owner, bytes.data(), 100, {dtype::f32, {25}, {}, 0}));
  EXPECT_FALSE(tensor::wrap(owner, bytes.data(), 100, {dtype::f32, {26}, {}, 0}));
  EXPECT_FALSE(tensor::wrap(owner, bytes.data(), 100, {dtype::f32, {25}, {}, 4}));
  EXPECT_FALSE(tensor::wrap(owner, bytes.data(), 100, {dtype::f32, {-1}, {}, 0}));
  EXPECT_FALSE(tensor::wrap(owner, bytes.data(), 100,
                            {dtype::f32, {INT64_MAX, INT64_MAX}, {}, 0}));
  EXPECT_FALSE(tensor::wrap(owner, bytes.data(), 100, {static_cast<dtype>(99), {1}, {}, 0}));
  EXPECT_FALSE(tensor::wrap(owner, bytes.data(), 100, {dtype::f32, {5, 5}, {10, 1}, 0}));
  EXPECT_TRUE(tensor::wrap(owner, bytes.data(), 100, {dtype::f32, {0}, {}, 100}));
  // Regression (fuzzer): the product fits in size_t but not in int64 strides.
  EXPECT_FALSE(tensor::wrap(owner, bytes.data(), 100,
                            {dtype::u8, {214748364805, 83886080}, {}, 0}));
  EXPECT_FALSE(tensor::wrap(owner, bytes.data(), 100,
                            {dtype::u8, {0, int64_t{1} << 40, int64_t{1} << 40}, {}, 0}));
}

TEST(tensor, StridedViewIsNotContiguousAndCopiesCorrectly) {
  auto base = tensor::from_values<int32_t>({0, 1, 2, 3, 4, 5}, {2, 3});
  ASSERT_TRUE(base);
  // The transpose: shape {3, 2}, strides {1, 3}.
  auto sut = tensor::wrap(base->owner(), base->storage_base(), base->storage_capacity(),
                          {dtype::i32, {3, 2}, {1, 3}, 0});
  ASSERT_TRUE(sut);
  EXPECT_FALSE(sut->is_contiguous());
  EXPECT_FALSE(sut->values<int32_t>());
  auto copy = sut->contiguous_copy();
  ASSERT_TRUE(copy);
  auto v = copy->values<int32_t>();
  ASSERT_TRUE(v);
  EXPECT_EQ(std::vector<int32_t>(v->begin(), v->end()), (std::vector<int32_t>{0, 3, 1, 4, 2, 5}));
}

TEST(tensor, ReadOnlyStorageRefusesWrites) {
  std::vector<float> data{1.f};
  std::shared_ptr<const void> owner{data.data(), [](const void*) {}};
  auto sut = tensor::wrap(owner, reinterpret_cast<const std::byte*>(data.data()), 4,
                          {dtype::f32, {1}, {}, 0});
  ASSERT_TRUE(sut);
  EXPECT_EQ(sut->mutable_data(), nullptr);
  EXPECT_FALSE(sut->mutable_values<float>());
}

TEST(dtype, NamesRoundTrip) {
  for (auto t : {dtype::f16, dtype::f32, dtype::f64, dtype::i8, dtype::i16, dtype::i32, dtype::i64,
                 dtype::u8, dtype::u16, dtype::u32, dtype::u64, dtype::boolean}) {
    EXPECT_EQ(parse_dtype(to_string(t)), t);
    EXPECT_TRUE(is_valid_dtype(static_cast<uint8_t>(t)));
  }
  EXPECT_EQ(parse_dtype("int16"), dtype::i16);
  EXPECT_FALSE(parse_dtype("complex128"));
  EXPECT_FALSE(is_valid_dtype(0));
}

} // namespace
} // namespace modelreg

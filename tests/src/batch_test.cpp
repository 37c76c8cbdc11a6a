// The arithmetic of dynamic batching, without actors.
#include <gtest/gtest.h>

#include "modelreg/messages/error.hpp"
#include "modelreg/tensor/batch.hpp"

namespace modelreg {
namespace {

tensor rows_of(std::vector<float> values, int64_t rows) {
  auto cols = static_cast<int64_t>(values.size()) / rows;
  return *tensor::from_values<float>(values, {rows, cols});
}

std::vector<float> values(const tensor& t) {
  auto v = t.values<float>();
  return v ? std::vector<float>(v->begin(), v->end()) : std::vector<float>{};
}

TEST(batch, RowsAreDimensionZeroOfEveryInputOrNothing) {
  EXPECT_EQ(batch_rows({{"a", rows_of({1, 2, 3, 4}, 2)}, {"b", rows_of({1, 2}, 2)}}), 2);
  EXPECT_EQ(batch_rows({}), -1);
  EXPECT_EQ(batch_rows({{"a", rows_of({1, 2, 3, 4}, 2)}, {"b", rows_of({1, 2, 3}, 3)}}), -1);
  auto scalar = tensor::allocate(dtype::f32, {});
  ASSERT_TRUE(scalar);
  EXPECT_EQ(batch_rows({{"s", *scalar}}), -1);
}

TEST(batch, CompatibleMeansSameNamesDtypesAndTrailingShape) {
  tensor_map a{{"x", rows_of({1, 2, 3, 4}, 2)}};
  EXPECT_TRUE(batch_compatible(a, {{"x", rows_of({1, 2, 3, 4, 5, 6}, 3)}}));
  EXPECT_FALSE(batch_compatible(a, {{"y", rows_of({1, 2, 3, 4}, 2)}}));
  EXPECT_FALSE(batch_compatible(a, {{"x", rows_of({1, 2, 3, 4}, 4)}})) << "2 columns against 1";
  EXPECT_FALSE(batch_compatible(a, {{"x", *tensor::from_values<int32_t>({1, 2}, {1, 2})}}));
  EXPECT_FALSE(batch_compatible(a, {{"x", rows_of({1, 2}, 1)}, {"z", rows_of({1}, 1)}}));
}

TEST(batch, ConcatJoinsRowsInOrderAndSplitGivesEachPartItsRowsAsViews) {
  tensor_map first{{"x", rows_of({1, 2}, 1)}};
  tensor_map second{{"x", rows_of({3, 4, 5, 6}, 2)}};
  auto joined = concat_rows({&first, &second});
  ASSERT_TRUE(joined) << describe(joined.error());
  EXPECT_EQ(joined->at("x").shape(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(values(joined->at("x")), (std::vector<float>{1, 2, 3, 4, 5, 6}));
  auto parts = split_rows(*joined, {1, 2});
  ASSERT_TRUE(parts) << describe(parts.error());
  ASSERT_EQ(parts->size(), 2u);
  EXPECT_EQ(values((*parts)[0].at("x")), (std::vector<float>{1, 2}));
  EXPECT_EQ(values((*parts)[1].at("x")), (std::vector<float>{3, 4, 5, 6}));
  EXPECT_EQ((*parts)[1].at("x").storage_base(), joined->at("x").storage_base()) << "a view";
}

TEST(batch, MismatchedRequestsAndOutputsAreRefusedNamingWhy) {
  tensor_map a{{"x", rows_of({1, 2}, 1)}};
  tensor_map b{{"y", rows_of({1, 2}, 1)}};
  auto joined = concat_rows({&a, &b});
  ASSERT_FALSE(joined);
  EXPECT_TRUE(is(joined.error(), errc::invalid_argument)) << describe(joined.error());
  EXPECT_FALSE(concat_rows({}));
  // A model whose output has a row too few: infer_failed, naming the output.
  auto split = split_rows({{"out", rows_of({1, 2}, 2)}}, {1, 2});
  ASSERT_FALSE(split);
  EXPECT_TRUE(is(split.error(), errc::infer_failed));
  EXPECT_NE(describe(split.error()).find("'out'"), std::string::npos) << describe(split.error());
}

} // namespace
} // namespace modelreg

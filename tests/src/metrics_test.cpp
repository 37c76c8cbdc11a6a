#include <gtest/gtest.h>

#include "modelreg/metrics/histogram.hpp"

namespace modelreg {
namespace {

TEST(latency_histogram, EmptyHistogramReportsZero) {
  latency_histogram sut;
  EXPECT_EQ(sut.quantile(0.5), 0u);
}

TEST(latency_histogram, QuantilesAreWithinABucketOfTheTruth) {
  latency_histogram sut;
  for (uint64_t v = 1; v <= 10000; ++v)
    sut.record(v * 1000);
  auto p50 = static_cast<double>(sut.quantile(0.5));
  auto p99 = static_cast<double>(sut.quantile(0.99));
  EXPECT_NEAR(p50, 5e6, 5e6 * 0.13);
  EXPECT_NEAR(p99, 9.9e6, 9.9e6 * 0.13);
  EXPECT_GE(p99, p50);
  EXPECT_EQ(sut.count(), 10000u);
}

TEST(latency_histogram, SmallValuesAreExact) {
  latency_histogram sut;
  sut.record(3);
  EXPECT_EQ(sut.quantile(1.0), 3u);
}

} // namespace
} // namespace modelreg

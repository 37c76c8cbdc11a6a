// A lock-free latency histogram: log-linear buckets (8 per power of two, so
// quantiles are within 12.5%), recorded with relaxed atomics from any thread,
// read (approximately consistently) from any other.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>

namespace modelreg {

class latency_histogram {
public:
  /// Records one sample, in nanoseconds.
  void record(uint64_t ns) noexcept;

  /// The q-quantile (0 < q <= 1) in nanoseconds: the upper edge of the bucket
  /// holding it; 0 when empty.
  uint64_t quantile(double q) const noexcept;

  uint64_t count() const noexcept { return count_.load(std::memory_order_relaxed); }

private:
  static constexpr int sub_bits = 3;
  static constexpr int buckets = 64 << sub_bits;
  static int bucket_of(uint64_t ns) noexcept;
  static uint64_t upper_edge(int bucket) noexcept;

  std::array<std::atomic<uint64_t>, buckets> counts_{};
  std::atomic<uint64_t> count_{0};
};

} // namespace modelreg

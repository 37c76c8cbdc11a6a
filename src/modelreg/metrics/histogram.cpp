#include "modelreg/metrics/histogram.hpp"

#include <bit>
#include <cmath>

namespace modelreg {

int latency_histogram::bucket_of(uint64_t ns) noexcept {
  if (ns < (uint64_t{1} << sub_bits))
    return static_cast<int>(ns);
  int msb = 63 - std::countl_zero(ns);
  int sub = static_cast<int>((ns >> (msb - sub_bits)) & ((1u << sub_bits) - 1));
  return ((msb - sub_bits + 1) << sub_bits) + sub;
}

uint64_t latency_histogram::upper_edge(int bucket) noexcept {
  if (bucket < (1 << sub_bits))
    return static_cast<uint64_t>(bucket);
  int group = (bucket >> sub_bits) - 1 + sub_bits; // msb of values in bucket
  uint64_t sub = static_cast<uint64_t>(bucket & ((1 << sub_bits) - 1));
  uint64_t base = uint64_t{1} << group;
  uint64_t width = uint64_t{1} << (group - sub_bits);
  return base + (sub + 1) * width - 1;
}

void latency_histogram::record(uint64_t ns) noexcept {
  counts_[static_cast<size_t>(bucket_of(ns))].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

uint64_t latency_histogram::quantile(double q) const noexcept {
  uint64_t total = 0;
  for (const auto& c : counts_)
    total += c.load(std::memory_order_relaxed);
  if (total == 0)
    return 0;
  auto rank = static_cast<uint64_t>(std::ceil(q * static_cast<double>(total)));
  if (rank == 0)
    rank = 1;
  uint64_t seen = 0;
  for (int b = 0; b < buckets; ++b) {
    seen += counts_[static_cast<size_t>(b)].load(std::memory_order_relaxed);
    if (seen >= rank)
      return upper_edge(b);
  }
  return upper_edge(buckets - 1);
}

} // namespace modelreg

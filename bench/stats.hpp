// Small statistics shared by the benchmarks.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace modelreg::bench {

/// The `q` quantile (0..1) of `v` by nearest rank; 0 for an empty one.
/// Sorts `v`.
template <class T>
double percentile(std::vector<T>& v, double q) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  auto i = static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5);
  return static_cast<double>(v[std::min(i, v.size() - 1)]);
}

} // namespace modelreg::bench

#include "modelreg/nearest.hpp"

#include <algorithm>
#include <cstdint>

namespace modelreg {

namespace {

/// Optimal string alignment distance: insertions, deletions, substitutions
/// and swaps of two adjacent letters ("gian" -> "gain") each cost one.
size_t distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i)
    d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j)
    d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

} // namespace

std::string nearest_name(const std::string& word, const std::vector<std::string>& names) {
  std::string best;
  size_t best_d = SIZE_MAX;
  for (const auto& n : names)
    if (auto d = distance(word, n); d < best_d) {
      best_d = d;
      best = n;
    }
  return best_d <= std::max<size_t>(1, word.size() / 3) ? best : std::string{};
}

} // namespace modelreg

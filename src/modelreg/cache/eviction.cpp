#include "modelreg/cache/eviction.hpp"

#include <algorithm>

namespace modelreg {

admission_plan plan_admission(std::vector<eviction_candidate> candidates, uint64_t used_bytes,
                              uint64_t budget, size_t max_models, uint64_t incoming_bytes) {
  admission_plan plan;
  plan.needed = incoming_bytes;
  std::stable_sort(candidates.begin(), candidates.end(), [](const auto& a, const auto& b) {
    return a.spare != b.spare ? a.spare : a.last_used_ns < b.last_used_ns;
  });
  uint64_t evictable_bytes = 0;
  for (const auto& c : candidates)
    if (c.evictable)
      evictable_bytes += c.bytes;
  plan.available = budget == 0 ? UINT64_MAX
                               : budget - std::min(budget, used_bytes - std::min(used_bytes,
                                                                                 evictable_bytes));
  auto count = candidates.size();
  auto over = [&](uint64_t used, size_t n) {
    return (budget != 0 && used + incoming_bytes > budget) || (max_models != 0 && n + 1 > max_models);
  };
  for (const auto& c : candidates) {
    if (!over(used_bytes, count))
      break;
    if (!c.evictable)
      continue;
    plan.victims.push_back(c.key);
    used_bytes -= std::min(used_bytes, c.bytes);
    --count;
  }
  plan.fits = !over(used_bytes, count);
  if (!plan.fits)
    plan.victims.clear();
  return plan;
}

std::vector<std::string> select_expired(const std::vector<eviction_candidate>& candidates,
                                        int64_t now_ns, int64_t ttl_ns) {
  std::vector<std::string> result;
  for (const auto& c : candidates)
    if (c.evictable && now_ns - c.last_used_ns >= ttl_ns)
      result.push_back(c.key);
  return result;
}

} // namespace modelreg

#include "modelreg/cluster/placement.hpp"

#include <algorithm>
#include <limits>
#include <tuple>

namespace modelreg::cluster {

namespace {

/// FNV-1a over both strings, then a 64-bit finaliser (splitmix64), so
/// scores of similar names are unrelated.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

uint64_t fnv(uint64_t h, std::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return h;
}

} // namespace

uint64_t rendezvous_score(std::string_view key, std::string_view node) {
  auto h = fnv(0xcbf29ce484222325ULL, key);
  h = fnv(h ^ 0xff, node);
  return mix(h);
}

std::string owner_of(std::string_view key, const std::vector<std::string>& members) {
  const std::string* best = nullptr;
  uint64_t best_score = 0;
  for (const auto& m : members) {
    auto s = rendezvous_score(key, m);
    if (best == nullptr || s > best_score || (s == best_score && m < *best)) {
      best = &m;
      best_score = s;
    }
  }
  return best != nullptr ? *best : std::string{};
}

uint64_t view_digest(const std::vector<std::string>& sorted_members) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (const auto& m : sorted_members)
    h = fnv(h ^ 0x1f, m);
  return mix(h);
}

std::optional<holder_choice> choose_holder(std::string_view key, uint64_t expected,
                                           const std::vector<node_load>& candidates) {
  constexpr auto unlimited = std::numeric_limits<uint64_t>::max();
  for (bool evict : {false, true}) {
    auto room_of = [&](const node_load& n) {
      if (n.budget == 0)
        return unlimited;
      auto room = n.budget > n.used ? n.budget - n.used : 0;
      return evict ? std::min(n.budget, room + n.evictable) : room;
    };
    // The two members with the highest weight for this key among those
    // where it fits; of those, the tighter fit (then fewer requests). Two
    // choices per key spread owners deciding at once on heartbeats a moment
    // old over the members (one choice, the emptiest member, sends them all
    // to the same one); the tighter fit keeps large holes for large models.
    std::optional<size_t> first, second;
    auto weight = [&](size_t i) { return rendezvous_score(key, candidates[i].name); };
    for (size_t i = 0; i < candidates.size(); ++i) {
      auto room = room_of(candidates[i]);
      // Unknown size: any room at all (a full member would only evict).
      if (expected == 0 ? room == 0 : room < expected)
        continue;
      if (!first || weight(i) > weight(*first)) {
        second = first;
        first = i;
      } else if (!second || weight(i) > weight(*second)) {
        second = i;
      }
    }
    if (!first)
      continue;
    auto rank = [&](size_t i) {
      return std::make_tuple(room_of(candidates[i]), candidates[i].requests_per_s);
    };
    auto best = second && rank(*second) < rank(*first) ? *second : *first;
    return holder_choice{best, evict};
  }
  return std::nullopt;
}

} // namespace modelreg::cluster

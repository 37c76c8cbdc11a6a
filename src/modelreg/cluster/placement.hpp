// Cluster placement as pure functions (docs/cluster.md): who owns a key, and
// which node should hold a model. The cluster actor decides with these, and
// so does the placement simulation (bench/cluster_sim.cpp).
//
// Ownership: rendezvous (highest-random-weight) hashing over the live
// members. Every member that sees the same members picks the same owner for
// a key, and when a member joins or leaves only the keys it wins or held
// move (about 1/N of them).
//
// Holder: the owner places a model on a member where it fits: of the two
// such members with the highest rendezvous weight for the key, the tighter
// fit (less free budget left), then the one with fewer requests per
// second. Two pseudo-random choices per key spread the models, and owners
// deciding at once on heartbeats a moment old, over the members (the
// emptiest member as the one choice sends them all to the same member);
// the tighter of two keeps large holes for large models. If it fits nowhere
// as things are, the same among members where it fits once idle models are
// evicted. If not even that: no member (the caller gets `out_of_memory`).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace modelreg::cluster {

/// The rendezvous weight of `node` for `key` (64-bit, well mixed).
uint64_t rendezvous_score(std::string_view key, std::string_view node);

/// The member that owns `key` among `members` (the highest score); empty if
/// there is no member.
std::string owner_of(std::string_view key, const std::vector<std::string>& members);

/// A digest of a membership view (the sorted names): two members agree on
/// every key's owner when their digests match.
uint64_t view_digest(const std::vector<std::string>& sorted_members);

/// What the owner knows of one candidate holder.
struct node_load {
  std::string name;
  uint64_t budget = 0;    ///< 0: no budget (anything fits)
  uint64_t used = 0;      ///< held plus promised to loads in progress
  uint64_t evictable = 0; ///< held by idle, unpinned models
  uint64_t requests_per_s = 0;
};

struct holder_choice {
  size_t index = 0;       ///< into the candidates
  bool evict = false;     ///< it fits only once idle models are evicted
};

/// The holder for a model of `expected` bytes (0: unknown, fits anywhere
/// with room left), or nothing if no candidate can take it.
std::optional<holder_choice> choose_holder(std::string_view key, uint64_t expected,
                                           const std::vector<node_load>& candidates);

} // namespace modelreg::cluster

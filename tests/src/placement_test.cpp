// Cluster ownership and placement rules (src/modelreg/cluster/placement.hpp).
#include <map>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "modelreg/cluster/placement.hpp"

using namespace modelreg::cluster;

namespace {

std::vector<std::string> members(size_t n) {
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i)
    out.push_back("tcp://10.0.0." + std::to_string(i) + ":7447");
  return out;
}

} // namespace

TEST(Placement, EveryMemberComputesTheSameOwnerWhateverTheOrderOfItsView) {
  auto view = members(5);
  auto reversed = std::vector<std::string>(view.rbegin(), view.rend());
  for (int k = 0; k < 100; ++k) {
    auto key = "model-" + std::to_string(k);
    EXPECT_EQ(owner_of(key, view), owner_of(key, reversed));
  }
  EXPECT_EQ(owner_of("x", {}), "");
}

TEST(Placement, AMemberLeavingMovesOnlyTheKeysItOwned) {
  auto view = members(10);
  auto without = view;
  without.erase(without.begin() + 3);
  int moved = 0, owned_by_leaver = 0;
  for (int k = 0; k < 2000; ++k) {
    auto key = "model-" + std::to_string(k);
    auto before = owner_of(key, view);
    owned_by_leaver += before == view[3];
    if (before != owner_of(key, without)) {
      ++moved;
      EXPECT_EQ(before, view[3]) << key << " moved though its owner stayed";
    }
  }
  EXPECT_EQ(moved, owned_by_leaver);
  EXPECT_GT(owned_by_leaver, 100); // about a tenth
  EXPECT_LT(owned_by_leaver, 300);
}

TEST(Placement, ViewDigestsDifferWhenTheMembersDo) {
  auto a = members(3), b = members(4);
  EXPECT_EQ(view_digest(a), view_digest(members(3)));
  EXPECT_NE(view_digest(a), view_digest(b));
}

TEST(Placement, AModelGoesOnlyWhereItFitsAndThenToTheTighterOfTwo) {
  std::vector<node_load> nodes = {{"a", 100, 95, 0, 0}, {"b", 100, 40, 0, 0}, {"c", 100, 70, 0, 0}};
  // 20 bytes fit only on b and c (a has 5 left); of those the tighter is c.
  auto c = choose_holder("k", 20, nodes);
  ASSERT_TRUE(c);
  EXPECT_EQ(nodes[c->index].name, "c");
  EXPECT_FALSE(c->evict);
  // 50 fits only on b.
  auto b = choose_holder("k", 50, nodes);
  ASSERT_TRUE(b);
  EXPECT_EQ(nodes[b->index].name, "b");
  // 70 fits nowhere, not even after eviction: nothing.
  EXPECT_FALSE(choose_holder("k", 70, nodes));
}

TEST(Placement, EvictionIsTheLastResort) {
  std::vector<node_load> nodes = {{"a", 100, 90, 60, 0}, {"b", 100, 80, 0, 0}};
  auto c = choose_holder("k", 40, nodes);
  ASSERT_TRUE(c);
  EXPECT_EQ(nodes[c->index].name, "a");
  EXPECT_TRUE(c->evict);
  // A member without a budget takes anything, without evicting.
  nodes.push_back({"unlimited", 0, 0, 0, 0});
  auto u = choose_holder("k", 1u << 30, nodes);
  ASSERT_TRUE(u);
  EXPECT_EQ(nodes[u->index].name, "unlimited");
  EXPECT_FALSE(u->evict);
}

TEST(Placement, KeysSpreadOverEmptyMembers) {
  std::vector<node_load> nodes;
  for (const auto& m : members(4))
    nodes.push_back({m, 1000, 0, 0, 0});
  std::map<std::string, int> count;
  for (int k = 0; k < 400; ++k)
    if (auto c = choose_holder("model-" + std::to_string(k), 1, nodes))
      ++count[nodes[c->index].name];
  ASSERT_EQ(count.size(), 4u);
  for (const auto& [name, n] : count)
    EXPECT_GT(n, 50) << name;
}

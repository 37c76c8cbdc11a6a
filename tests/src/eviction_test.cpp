#include <gtest/gtest.h>

#include "modelreg/cache/eviction.hpp"

namespace modelreg {
namespace {

std::vector<eviction_candidate> three_idle() {
  return {{"a", 100, 30, true}, {"b", 100, 10, true}, {"c", 100, 20, true}};
}

TEST(plan_admission, FitsWithoutEvictingWhenThereIsRoom) {
  auto sut = plan_admission(three_idle(), 300, 1000, 0, 100);
  EXPECT_TRUE(sut.fits);
  EXPECT_TRUE(sut.victims.empty());
}

TEST(plan_admission, EvictsLeastRecentlyUsedFirst) {
  auto sut = plan_admission(three_idle(), 300, 350, 0, 200);
  EXPECT_TRUE(sut.fits);
  EXPECT_EQ(sut.victims, (std::vector<std::string>{"b", "c"}));
}

TEST(plan_admission, SpareCopiesGoBeforeTheLeastRecentlyUsed) {
  auto candidates = three_idle();
  candidates[0].spare = true; // "a", the most recently used
  auto sut = plan_admission(candidates, 300, 350, 0, 200);
  EXPECT_TRUE(sut.fits);
  EXPECT_EQ(sut.victims, (std::vector<std::string>{"a", "b"}));
}

TEST(plan_admission, NeverEvictsModelsInUse) {
  auto candidates = three_idle();
  candidates[1].evictable = false; // b, the LRU, is in use
  auto sut = plan_admission(candidates, 300, 300, 0, 100);
  EXPECT_TRUE(sut.fits);
  EXPECT_EQ(sut.victims, std::vector<std::string>{"c"});
}

TEST(plan_admission, RefusesAndNamesAvailableBytesWhenNothingCanMakeRoom) {
  auto candidates = three_idle();
  candidates[0].evictable = false;
  candidates[1].evictable = false;
  auto sut = plan_admission(candidates, 300, 300, 0, 250);
  EXPECT_FALSE(sut.fits);
  EXPECT_TRUE(sut.victims.empty()) << "nothing is evicted for a load that cannot fit";
  EXPECT_EQ(sut.needed, 250u);
  EXPECT_EQ(sut.available, 100u);
}

TEST(plan_admission, MaxModelsCountsToo) {
  auto sut = plan_admission(three_idle(), 300, 0, 3, 1);
  EXPECT_TRUE(sut.fits);
  EXPECT_EQ(sut.victims, std::vector<std::string>{"b"});
  auto busy = three_idle();
  for (auto& c : busy)
    c.evictable = false;
  EXPECT_FALSE(plan_admission(busy, 300, 0, 3, 1).fits);
}

TEST(select_expired, PicksOnlyEvictableModelsIdlePastTheTtl) {
  auto candidates = three_idle();
  candidates[2].evictable = false;
  EXPECT_EQ(select_expired(candidates, 35, 10), std::vector<std::string>{"b"});
  EXPECT_EQ(select_expired(candidates, 45, 10), (std::vector<std::string>{"a", "b"}));
}

} // namespace
} // namespace modelreg

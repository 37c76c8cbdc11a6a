// The facade: hits answered on the caller's thread, handles counted across
// copies, handles that outlive the registry.
#include <future>

#include "actors/registry_fixture.hpp"

namespace modelreg::test {
namespace {

using namespace std::chrono_literals;

TEST_F(registry_test, HitsAreServedByTheFastPathAndCounted) {
  auto& reg = start();
  auto runs = std::make_shared<std::atomic<int>>(0);
  auto first = reg.get_or_load("m", counting_loader(runs));
  ASSERT_TRUE(first);
  for (int i = 0; i < 10; ++i) {
    auto again = reg.get_or_load_async("m", counting_loader(runs));
    ASSERT_EQ(again.wait_for(0ms), std::future_status::ready) << "a hit must not wait";
    auto h = again.get();
    ASSERT_TRUE(h);
    EXPECT_TRUE(h->same_model(*first));
  }
  EXPECT_EQ(runs->load(), 1);
  auto snap = snapshot();
  EXPECT_EQ(snap.totals.hits, 10u);
  EXPECT_EQ(snap.totals.misses, 1u);
  EXPECT_DOUBLE_EQ(snap.totals.hit_rate(), 10.0 / 11.0);
}

TEST_F(registry_test, GetWithoutLoaderFindsOnlyLoadedModels) {
  auto& reg = start();
  auto none = reg.get("m");
  ASSERT_FALSE(none);
  EXPECT_TRUE(is(none.error(), errc::model_not_found));
  ASSERT_TRUE(reg.get_or_load("m", counting_loader(std::make_shared<std::atomic<int>>(0))));
  EXPECT_TRUE(reg.get("m"));
}

TEST_F(registry_test, CopiesShareOneLeaseAndTheLastCopyReleasesIt) {
  auto& reg = start();
  auto h = reg.get_or_load("m", counting_loader(std::make_shared<std::atomic<int>>(0)));
  ASSERT_TRUE(h);
  auto other = reg.get_or_load("m", counting_loader(std::make_shared<std::atomic<int>>(0)));
  ASSERT_TRUE(other);
  {
    std::vector<model_handle> copies(5, *h);
    EXPECT_EQ(snapshot().models.at(0).handles, 2u);
  }
  EXPECT_EQ(snapshot().models.at(0).handles, 2u);
  h = caf::error{};
  EXPECT_EQ(snapshot().models.at(0).handles, 1u);
  other = caf::error{};
  EXPECT_EQ(snapshot().models.at(0).handles, 0u);
}

TEST_F(registry_test, HandleOutlivingTheRegistryFailsCleanly) {
  auto& reg = start();
  auto h = reg.get_or_load("m", counting_loader(std::make_shared<std::atomic<int>>(0)));
  ASSERT_TRUE(h);
  sut.reset();
  EXPECT_TRUE(eventually([&] { return !h->valid(); }));
  auto x = tensor::from_values<float>({1.f});
  auto r = h->infer({{"x", *x}});
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::model_crashed)) << describe(r.error());
}

TEST_F(registry_test, CallsAfterTheSupervisorStoppedReportUnavailable) {
  auto& reg = start();
  caf::anon_send(reg.actor(), shutdown_atom::value);
  EXPECT_TRUE(eventually([&] { return sys.registry().running() == 0; }));
  auto r = reg.metrics();
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::unavailable)) << describe(r.error());
  auto h = reg.get_or_load("m", counting_loader(std::make_shared<std::atomic<int>>(0)));
  ASSERT_FALSE(h);
  EXPECT_TRUE(is(h.error(), errc::unavailable));
}

} // namespace
} // namespace modelreg::test

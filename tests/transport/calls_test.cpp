// The client side's one request/response matcher (transport/calls.hpp),
// driven with real response frames but no connection: what every caller of
// the remote registry relies on.
#include <future>
#include <thread>

#include <gtest/gtest.h>

#include "modelreg/transport/codec.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/transport/calls.hpp"

namespace modelreg::test {
namespace {

using namespace std::chrono_literals;
using transport::call_table;
using transport::frame_ptr;

struct frames {
  std::shared_ptr<shm::pool> pool = shm::pool::create();
  transport::copy_counters counters;

  /// A response frame answering `id`.
  frame_ptr response(uint64_t id) {
    transport::outgoing_frame out{pool, false, counters};
    auto resp = out.root().initResponse();
    resp.setId(id);
    resp.setOk();
    auto in = transport::from_bytes(transport::to_bytes(out), counters);
    EXPECT_TRUE(in) << describe(in.error());
    return in ? *in : nullptr;
  }

  frame_ptr event() {
    transport::outgoing_frame out{pool, false, counters};
    out.root().setEvent("{}");
    return *transport::from_bytes(transport::to_bytes(out), counters);
  }
};

TEST(call_table, EachAnswerReachesItsOwnCallerOnceAndLateOnesMatchNobody) {
  frames f;
  call_table calls;
  auto a = calls.next_id();
  auto b = calls.next_id();
  EXPECT_NE(a, b);
  auto waiting = calls.expect(a);
  std::vector<caf::expected<frame_ptr>> called;
  calls.expect(b, [&](caf::expected<frame_ptr> r) { called.push_back(std::move(r)); });
  EXPECT_EQ(calls.in_flight(), 2u);
  EXPECT_FALSE(calls.deliver(f.event())) << "only responses are matched";
  // b's answer runs its callback on the delivering thread, a's wakes its
  // waiter on another thread.
  EXPECT_TRUE(calls.deliver(f.response(b)));
  ASSERT_EQ(called.size(), 1u);
  ASSERT_TRUE(called[0]);
  EXPECT_EQ((*called[0])->root().getResponse().getId(), b);
  std::thread answer{[&] { EXPECT_TRUE(calls.deliver(f.response(a))); }};
  auto got = calls.wait(a, waiting, 30s);
  answer.join();
  ASSERT_TRUE(got) << describe(got.error());
  EXPECT_EQ((*got)->root().getResponse().getId(), a);
  // Answered already, or never asked: dropped.
  EXPECT_FALSE(calls.deliver(f.response(a)));
  EXPECT_FALSE(calls.deliver(f.response(12345)));
  EXPECT_EQ(called.size(), 1u);
  EXPECT_EQ(calls.in_flight(), 0u);
}

TEST(call_table, AWaitPastItsDeadlineIsATimeoutAndItsAnswerIsDropped) {
  frames f;
  call_table calls;
  auto id = calls.next_id();
  auto waiting = calls.expect(id);
  auto r = calls.wait(id, waiting, 1ms, "the test peer");
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::timeout)) << describe(r.error());
  EXPECT_NE(describe(r.error()).find("the test peer"), std::string::npos) << describe(r.error());
  EXPECT_EQ(calls.in_flight(), 0u);
  EXPECT_FALSE(calls.deliver(f.response(id)));
}

TEST(call_table, ALinkThatDropsFailsEveryCallerAndLaterOnesUntilReset) {
  frames f;
  call_table calls;
  auto a = calls.next_id();
  auto waiting = calls.expect(a);
  caf::error seen;
  calls.expect(calls.next_id(), [&](caf::expected<frame_ptr> r) { seen = r.error(); });
  auto waiter = std::async(std::launch::async, [&] { return calls.wait(a, waiting, 30s); });
  calls.fail_all(make_error(errc::unavailable, "the link dropped"));
  auto r = waiter.get();
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::unavailable));
  EXPECT_TRUE(is(seen, errc::unavailable));
  // While down, a new call fails at once instead of waiting for its deadline.
  auto late = calls.next_id();
  auto r2 = calls.wait(late, calls.expect(late), 30s);
  ASSERT_FALSE(r2);
  EXPECT_TRUE(is(r2.error(), errc::unavailable));
  calls.reset();
  auto again = calls.next_id();
  auto w = calls.expect(again);
  EXPECT_TRUE(calls.deliver(f.response(again)));
  EXPECT_TRUE(calls.wait(again, w, 30s));
}

} // namespace
} // namespace modelreg::test

#include <gtest/gtest.h>

#include <caf/sec.hpp>

#include "modelreg/messages/error.hpp"

namespace modelreg {
namespace {

TEST(error, CarriesCodeAndContext) {
  auto sut = make_error(errc::out_of_memory, "needs 5 bytes");
  EXPECT_TRUE(is(sut, errc::out_of_memory));
  EXPECT_FALSE(is(sut, errc::busy));
  EXPECT_EQ(describe(sut), "out_of_memory: needs 5 bytes");
}

TEST(error, DescribeSaysTheCodeOnceWhenTheContextQuotesAnInnerErrorOfIt) {
  auto inner = make_error(errc::invalid_argument, "expected f32, got i16[8]");
  auto outer = make_error(errc::invalid_argument, "gain: input 'audio': " + describe(inner));
  EXPECT_EQ(describe(outer), "invalid_argument: gain: input 'audio': expected f32, got i16[8]");
  // An inner error of another code stays: it says something.
  auto other = make_error(errc::load_failed, "asr: " + describe(inner));
  EXPECT_EQ(describe(other), "load_failed: asr: invalid_argument: expected f32, got i16[8]");
}

TEST(error, AdviceFollowsTheGroups) {
  EXPECT_EQ(advice(make_error(errc::model_not_found)), error_advice::do_not_retry);
  EXPECT_EQ(advice(make_error(errc::out_of_memory)), error_advice::back_off);
  EXPECT_EQ(advice(make_error(errc::peer_disconnected)), error_advice::reconnect);
  EXPECT_EQ(advice(make_error(errc::unsupported)), error_advice::fall_back);
  EXPECT_EQ(advice(caf::make_error(caf::sec::request_receiver_down)), error_advice::reconnect);
}

} // namespace
} // namespace modelreg

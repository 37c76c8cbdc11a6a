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

TEST(error, OneMappingTurnsEveryForeignErrorIntoAModelregCode) {
  // A modelreg error keeps its code.
  auto mine = make_error(errc::invalid_argument, "bad gain");
  EXPECT_TRUE(is(as_modelreg_error(mine, errc::load_failed, "loader"), errc::invalid_argument));
  // CAF's timeout is modelreg's timeout, whoever asked.
  auto late = as_modelreg_error(caf::make_error(caf::sec::request_timeout), errc::unavailable, "the node");
  EXPECT_TRUE(is(late, errc::timeout)) << describe(late);
  EXPECT_EQ(advice(late), error_advice::back_off);
  EXPECT_EQ(describe(late), "timeout: the node: no answer within the request's deadline");
  // Anything else becomes the caller's fallback, naming the original.
  auto other = as_modelreg_error(caf::make_error(caf::sec::runtime_error), errc::infer_failed, "gain");
  EXPECT_TRUE(is(other, errc::infer_failed));
  EXPECT_NE(describe(other).find("runtime_error"), std::string::npos) << describe(other);
  EXPECT_EQ(to_string(errc::timeout), "timeout");
}

} // namespace
} // namespace modelreg

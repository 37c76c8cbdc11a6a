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

TEST(error, AdviceFollowsTheGroups) {
  EXPECT_EQ(advice(make_error(errc::model_not_found)), error_advice::do_not_retry);
  EXPECT_EQ(advice(make_error(errc::out_of_memory)), error_advice::back_off);
  EXPECT_EQ(advice(make_error(errc::peer_disconnected)), error_advice::reconnect);
  EXPECT_EQ(advice(make_error(errc::unsupported)), error_advice::fall_back);
  EXPECT_EQ(advice(caf::make_error(caf::sec::request_receiver_down)), error_advice::reconnect);
}

} // namespace
} // namespace modelreg

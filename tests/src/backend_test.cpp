#include <gtest/gtest.h>

#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/backend/flite.hpp"
#include "modelreg/backend/pocketsphinx.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg {
namespace {

caf::expected<model_ptr> build(const model_spec& spec) {
  auto sut = backend_registry::with_builtins();
  auto loader = sut->loader_for(spec);
  if (!loader)
    return loader.error();
  return (*loader)();
}

TEST(backend_registry, KnowsTheBuiltins) {
  auto sut = backend_registry::with_builtins();
  std::vector<std::string> expected;
  if (have_flite())
    expected.push_back("flite");
  expected.insert(expected.end(), {"gain", "identity"});
  if (have_pocketsphinx())
    expected.push_back("pocketsphinx");
  EXPECT_EQ(sut->names(), expected);
}

TEST(backend_registry, UnknownBackendIsNamedInTheError) {
  auto m = build({"nope", {}});
  ASSERT_FALSE(m);
  auto has = std::string{have_flite() ? "flite, " : ""} + "gain, identity";
  EXPECT_EQ(describe(m.error()).rfind("backend_not_found: no backend named 'nope' (this node has: " + has, 0), 0u)
    << describe(m.error());
}

TEST(backend_registry, ParametersAreCheckedAgainstWhatTheBackendDeclares) {
  auto sut = backend_registry::with_builtins();
  EXPECT_FALSE(sut->check({"gain", {{"gain", "0.5"}, {"batchable", "true"}}}));
  auto typo = sut->check({"gain", {{"gian", "0.5"}}});
  EXPECT_TRUE(is(typo, errc::invalid_argument));
  EXPECT_NE(describe(typo).find("did you mean 'gain'"), std::string::npos) << describe(typo);
  auto bad = sut->check({"gain", {{"gain", "abc"}}});
  EXPECT_NE(describe(bad).find("gain='abc' is not a number"), std::string::npos) << describe(bad);
  EXPECT_TRUE(is(sut->check({"identity", {{"thread_safe", "maybe"}}}), errc::invalid_argument));
  // A load checks the same before it runs anything.
  EXPECT_FALSE(sut->loader_for({"gain", {{"gian", "0.5"}}}));
  // A backend added without a declaration accepts any parameters.
  sut->add("custom", [](const model_spec&) -> caf::expected<model_ptr> {
    return make_error(errc::load_failed, "not built");
  });
  EXPECT_FALSE(sut->check({"custom", {{"anything", "1"}}}));
}

TEST(builtin, IdentitySharesInputStorage) {
  auto m = build({"identity", {}});
  ASSERT_TRUE(m);
  auto x = tensor::from_values<float>({1.f, 2.f});
  auto out = (*m)->infer({{"x", *x}}, heap_allocator());
  ASSERT_TRUE(out);
  EXPECT_EQ(out->at("x").data(), x->data());
}

TEST(builtin, ReserveBytesIsCountedInMemory) {
  auto m = build({"gain", {{"reserve_bytes", "1048576"}}});
  ASSERT_TRUE(m);
  EXPECT_GE((*m)->memory_bytes(), 1048576u);
  EXPECT_LT((*m)->memory_bytes(), 1048576u + 4096u);
}

TEST(builtin, BadParametersAndFailLoadGiveClearErrors) {
  auto bad = build({"gain", {{"reserve_bytes", "-3"}}});
  ASSERT_FALSE(bad);
  EXPECT_TRUE(is(bad.error(), errc::invalid_argument));
  auto fail = build({"identity", {{"fail_load", "true"}}});
  ASSERT_FALSE(fail);
  EXPECT_TRUE(is(fail.error(), errc::load_failed));
}

TEST(builtin, GainScalesEverySample) {
  auto m = build({"gain", {{"gain", "-0.5"}}});
  ASSERT_TRUE(m);
  auto x = tensor::from_values<float>({2.f, 4.f, -8.f, 0.f}, {2, 2});
  auto out = (*m)->infer({{"audio", *x}}, heap_allocator());
  ASSERT_TRUE(out);
  const auto& y = out->at("audio");
  EXPECT_EQ(y.shape(), (std::vector<int64_t>{2, 2}));
  auto v = y.values<float>();
  EXPECT_EQ(std::vector<float>(v->begin(), v->end()), (std::vector<float>{-1.f, -2.f, 4.f, -0.f}));
}

} // namespace
} // namespace modelreg

// The catalog file and NumPy .npy files: what parses, and the clear errors
// for what does not.
#include <gtest/gtest.h>

#include "modelreg/backend/catalog.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/tensor/npy.hpp"

namespace modelreg::test {
namespace {

TEST(catalog_test, ParsesModelsWithTheirParameters) {
  auto c = catalog::parse(R"({"models": {
    "a": {"backend": "gain", "params": {"gain": 0.5, "batchable": true, "name": "x"}},
    "b": {"backend": "identity"}}})");
  ASSERT_TRUE(c) << describe(c.error());
  EXPECT_EQ(c->size(), 2u);
  const auto* a = c->find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->backend, "gain");
  EXPECT_EQ(a->params.at("gain"), "0.5");
  EXPECT_EQ(a->params.at("batchable"), "true");
  EXPECT_EQ(a->params.at("name"), "x");
  EXPECT_EQ(c->find("c"), nullptr);
  EXPECT_EQ(c->names(), (std::vector<std::string>{"a", "b"}));
}

TEST(catalog_test, BadFilesGetAnErrorNamingTheEntry) {
  for (const char* text : {"not json", R"({"model": {}})", R"({"models": {"a": {}}})",
                           R"({"models": {"a": {"backend": ""}}})",
                           R"({"models": {"a": {"backend": "gain", "params": {"g": [1]}}}})",
                           R"({"models": {"a": {"backend": "gain", "typo": 1}}})"}) {
    auto c = catalog::parse(text);
    ASSERT_FALSE(c) << text;
    EXPECT_TRUE(is(c.error(), errc::invalid_argument)) << text;
  }
  auto typo = catalog::parse(R"({"models": {"asr": {"backend": "gain", "typo": 1}}})");
  EXPECT_NE(describe(typo.error()).find("'asr'"), std::string::npos);
  auto missing = catalog::load_file("/nonexistent/catalog.json");
  ASSERT_FALSE(missing);
  EXPECT_NE(describe(missing.error()).find("/nonexistent/catalog.json"), std::string::npos);
}

TEST(npy_test, RoundTripsEveryShapeAndDtype) {
  auto f = tensor::from_values<float>({1.f, 2.f, 3.f, 4.f, 5.f, 6.f}, {2, 3});
  auto i = tensor::from_values<int16_t>({-1, 7});
  auto scalar = tensor::from_values<double>({2.5}, {});
  for (const auto* t : {&*f, &*i, &*scalar}) {
    auto bytes = npy::serialize(*t);
    ASSERT_TRUE(bytes);
    EXPECT_EQ((bytes->find('\n') + 1) % 64, 0u); // data aligned as NumPy writes it
    auto back = npy::parse(*bytes);
    ASSERT_TRUE(back) << describe(back.error());
    EXPECT_EQ(back->type(), t->type());
    EXPECT_EQ(back->shape(), t->shape());
    ASSERT_EQ(back->nbytes(), t->nbytes());
    EXPECT_EQ(std::memcmp(back->data(), t->data(), t->nbytes()), 0);
  }
  // What NumPy itself writes for np.arange(3, dtype='<i4').
  std::string numpy{"\x93NUMPY\x01\x00\x76\x00", 10};
  std::string header = "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }";
  header.append(117 - header.size(), ' ');
  header += '\n';
  numpy += header;
  for (int32_t v : {0, 1, 2})
    numpy.append(reinterpret_cast<const char*>(&v), 4);
  auto parsed = npy::parse(numpy);
  ASSERT_TRUE(parsed) << describe(parsed.error());
  EXPECT_EQ(parsed->type(), dtype::i32);
  EXPECT_EQ(parsed->values<int32_t>()->back(), 2);
}

TEST(npy_test, WhatItCannotReadGetsAClearError) {
  auto good = *npy::serialize(*tensor::from_values<float>({1.f, 2.f}));
  auto replace = [&](const std::string& from, const std::string& to) {
    auto s = good;
    s.replace(s.find(from), from.size(), to);
    return s;
  };
  struct bad_case {
    std::string bytes;
    std::string mentions;
  };
  for (const auto& c : std::vector<bad_case>{
         {"garbage", "magic"},
         {good.substr(0, good.size() - 4), "data bytes"},
         {replace("False", "True "), "Fortran"},
         {replace("'<f4'", "'>f4'"), "big-endian"},
         {replace("'<f4'", "'|O8'"), "unsupported dtype"},
         {replace("(2,)", "(-2,)"), "negative"},
         {replace("(2,)", "(99999999999,99999999999,)"), "shape"},
       }) {
    auto t = npy::parse(c.bytes);
    ASSERT_FALSE(t) << c.mentions;
    EXPECT_TRUE(is(t.error(), errc::invalid_argument));
    EXPECT_NE(describe(t.error()).find(c.mentions), std::string::npos) << describe(t.error());
  }
}

} // namespace
} // namespace modelreg::test

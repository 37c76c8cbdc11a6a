// Dynamic batching: a batchable model gets concurrent requests as one call,
// each caller gets its own rows back; what cannot be batched runs alone.
#include <future>

#include "actors/registry_fixture.hpp"

namespace modelreg::test {
namespace {

using namespace std::chrono_literals;

/// Batchable: output "y" = input "x" + 1, counting calls and rows.
class plus_one final : public model {
public:
  caf::expected<tensor_map> infer(const tensor_map& in, tensor_allocator& out) override {
    ++calls;
    auto x = in.at("x").values<float>();
    if (!x)
      return x.error();
    rows += in.at("x").shape()[0];
    auto y = out.allocate(dtype::f32, in.at("x").shape());
    if (!y)
      return y.error();
    auto dst = *y->mutable_values<float>();
    for (size_t i = 0; i < x->size(); ++i)
      dst[i] = (*x)[i] + 1;
    if (wrong_rows)
      return tensor_map{{"y", *tensor::from_values<float>({0.f})}};
    return tensor_map{{"y", *y}};
  }
  uint64_t memory_bytes() const override { return 1; }
  model_capabilities capabilities() const override { return {false, false, true}; }
  std::string describe() const override { return "plus_one"; }

  std::atomic<int> calls{0};
  std::atomic<int64_t> rows{0};
  bool wrong_rows = false;
};

class batching_test : public registry_test {
protected:
  std::shared_ptr<plus_one> load(registry& reg, bool wrong_rows = false) {
    auto m = std::make_shared<plus_one>();
    m->wrong_rows = wrong_rows;
    auto h = reg.get_or_load("m", [m]() -> caf::expected<model_ptr> { return m; });
    EXPECT_TRUE(h);
    handle = *h;
    return m;
  }

  /// Sends requests from many threads at once; their answers.
  std::vector<caf::expected<tensor_map>> burst(registry& reg, const std::vector<tensor_map>& ins) {
    std::vector<std::future<caf::expected<tensor_map>>> calls;
    for (const auto& in : ins)
      calls.push_back(std::async(std::launch::async, [&reg, in] { return reg.infer("m", in); }));
    std::vector<caf::expected<tensor_map>> out;
    for (auto& c : calls)
      out.push_back(c.get());
    return out;
  }

  void TearDown() override {
    handle = {};
    registry_test::TearDown();
  }

  model_handle handle;
};

TEST_F(batching_test, ConcurrentRequestsRunAsOneCallAndEachGetsItsRows) {
  rcfg.max_batch = 8;
  rcfg.batch_timeout = 200ms; // long enough that the burst lands in one window
  auto& reg = start();
  auto m = load(reg);
  std::vector<tensor_map> ins;
  for (int i = 0; i < 8; ++i) {
    // Requests of 1 and 2 rows mixed: rows, not requests, are concatenated.
    auto rows = i % 2 + 1;
    std::vector<float> v(static_cast<size_t>(rows) * 3, static_cast<float>(10 * i));
    ins.push_back({{"x", *tensor::from_values<float>(v, {rows, 3})}});
  }
  auto outs = burst(reg, ins);
  for (size_t i = 0; i < outs.size(); ++i) {
    ASSERT_TRUE(outs[i]) << describe(outs[i].error());
    const auto& y = outs[i]->at("y");
    EXPECT_EQ(y.shape(), ins[i].at("x").shape());
    auto values = y.values<float>();
    ASSERT_TRUE(values);
    for (auto v : *values)
      EXPECT_EQ(v, static_cast<float>(10 * i) + 1);
  }
  EXPECT_LT(m->calls.load(), 8); // batched: fewer calls than requests
  EXPECT_EQ(m->rows.load(), 12);
  auto s = snapshot();
  ASSERT_EQ(s.models.size(), 1u);
  EXPECT_GE(s.models[0].batches, 1u);
  EXPECT_EQ(s.models[0].requests, 8u);
}

TEST_F(batching_test, ALoneRequestWaitsAtMostTheTimeoutAndIncompatibleOnesRunAlone) {
  rcfg.max_batch = 4;
  rcfg.batch_timeout = 5ms;
  auto& reg = start();
  auto m = load(reg);
  auto one = reg.infer("m", {{"x", *tensor::from_values<float>({1.f}, {1, 1})}});
  ASSERT_TRUE(one) << describe(one.error());
  EXPECT_EQ(one->at("y").values<float>()->front(), 2.f);
  // Different trailing shapes cannot be concatenated: each is answered alone.
  std::vector<tensor_map> ins{{{"x", *tensor::from_values<float>({1.f, 2.f}, {1, 2})}},
                              {{"x", *tensor::from_values<float>({1.f, 2.f, 3.f}, {1, 3})}},
                              {{"x", *tensor::from_values<float>({4.f}, {})}}};
  auto outs = burst(reg, ins);
  for (size_t i = 0; i < outs.size(); ++i) {
    ASSERT_TRUE(outs[i]) << describe(outs[i].error());
    EXPECT_EQ(outs[i]->at("y").shape(), ins[i].at("x").shape());
  }
}

TEST_F(batching_test, AModelBreakingTheRowContractFailsEveryCallerOfTheBatch) {
  rcfg.max_batch = 2;
  rcfg.batch_timeout = 500ms;
  auto& reg = start();
  load(reg, true);
  auto outs = burst(reg, {{{"x", *tensor::from_values<float>({1.f}, {1, 1})}},
                          {{"x", *tensor::from_values<float>({2.f}, {1, 1})}}});
  for (auto& o : outs) {
    ASSERT_FALSE(o);
    EXPECT_TRUE(is(o.error(), errc::infer_failed)) << describe(o.error());
  }
}

} // namespace
} // namespace modelreg::test

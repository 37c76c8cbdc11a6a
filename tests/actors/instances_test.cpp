// Instances (docs/instances.md): a model served by several copies at once,
// forked by a zygote process from one loaded copy (the built-in identity
// backend is forkable, like pocketsphinx), or loaded several times.
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>

#include <gtest/gtest.h>

#include "actors/registry_fixture.hpp"
#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/backend/catalog.hpp"

namespace modelreg::test {
namespace {

using namespace std::chrono_literals;

/// What identity(with_pid) said about one call.
struct served {
  int64_t pid = 0;
  int64_t start = 0;
  int64_t end = 0;
};

served served_of(const tensor_map& out) {
  served s;
  if (auto p = out.find("pid"); p != out.end())
    s.pid = (*p->second.values<int64_t>())[0];
  if (auto t = out.find("span"); t != out.end()) {
    s.start = (*t->second.values<int64_t>())[0];
    s.end = (*t->second.values<int64_t>())[1];
  }
  return s;
}

bool overlap(const served& a, const served& b) {
  return a.start < b.end && b.start < a.end;
}

model_spec forked_identity(uint32_t instances, uint64_t delay_ms, uint32_t max_instances = 0) {
  model_spec spec{"identity",
                  {{"with_pid", "true"}, {"infer_delay_ms", std::to_string(delay_ms)}}};
  spec.instances = instances;
  spec.max_instances = max_instances;
  return spec;
}

tensor_map one_input() {
  return {{"x", *tensor::from_values<float>({1.f}, {1})}};
}

/// This process's children (its zygotes), from /proc: loads run on loader
/// threads, so every thread's.
std::vector<int64_t> children() {
  std::vector<int64_t> out;
  for (const auto& task : std::filesystem::directory_iterator{"/proc/self/task"}) {
    std::ifstream t{task.path() / "children"};
    int64_t pid = 0;
    while (t >> pid)
      if (!process_gone(pid) && std::find(out.begin(), out.end(), pid) == out.end())
        out.push_back(pid);
  }
  return out;
}

class instances_test : public registry_test {
protected:

  /// Runs `n` requests on `key` at once; their outcomes.
  std::vector<caf::expected<tensor_map>> at_once(const std::string& key, int n) {
    std::vector<std::future<caf::expected<tensor_map>>> calls;
    for (int i = 0; i < n; ++i)
      calls.push_back(std::async(std::launch::async, [&] { return sut->infer(key, one_input()); }));
    std::vector<caf::expected<tensor_map>> out;
    for (auto& c : calls)
      out.push_back(c.get());
    return out;
  }
};

TEST_F(instances_test, TwoForkedInstancesRunTwoRequestsAtOnceAndOneInstanceDoesNot) {
  auto& reg = start();
  auto two = reg.get_or_load("two", forked_identity(2, 300));
  ASSERT_TRUE(two) << describe(two.error());
  auto one = reg.get_or_load("one", forked_identity(1, 300));
  ASSERT_TRUE(one) << describe(one.error());
  auto r2 = at_once("two", 2);
  ASSERT_TRUE(r2[0] && r2[1]);
  auto a = served_of(*r2[0]), b = served_of(*r2[1]);
  EXPECT_TRUE(overlap(a, b)) << "two instances ran the requests one after the other";
  EXPECT_NE(a.pid, b.pid);
  // Each ran in an instance process forked from the zygote, not here.
  auto st = status_of("two");
  ASSERT_TRUE(st);
  EXPECT_EQ(st->instances, 2u);
  EXPECT_EQ(st->max_instances, 2u);
  EXPECT_GT(st->zygote_pid, 0);
  ASSERT_EQ(st->processes.size(), 2u);
  for (auto pid : {a.pid, b.pid}) {
    EXPECT_NE(pid, ::getpid());
    EXPECT_TRUE(std::any_of(st->processes.begin(), st->processes.end(),
                            [pid](const instance_status& p) { return p.pid == pid; }));
  }
  auto r1 = at_once("one", 2);
  ASSERT_TRUE(r1[0] && r1[1]);
  EXPECT_FALSE(overlap(served_of(*r1[0]), served_of(*r1[1])))
    << "a model with one instance ran two requests at once";
}

TEST_F(instances_test, AClientWithManyQueuedRequestsDelaysAnotherByOneTurnOnly) {
  auto& reg = start();
  auto h = reg.get_or_load("m", forked_identity(2, 20));
  ASSERT_TRUE(h) << describe(h.error());
  std::mutex mutex;
  std::vector<std::pair<uint64_t, served>> done; // client, what ran
  std::atomic<int> failed{0};
  auto send = [&](uint64_t client) {
    auto sink = std::make_shared<reply_sink>([&, client](caf::expected<tensor_map> out) {
      if (!out) {
        ++failed;
        return;
      }
      std::lock_guard guard{mutex};
      done.emplace_back(client, served_of(*out));
    });
    caf::anon_send(h->actor(), infer_request{one_input(), nullptr, nullptr, std::move(sink), client});
  };
  for (int i = 0; i < 40; ++i)
    send(1);
  send(2);
  ASSERT_TRUE(eventually([&] {
    std::lock_guard guard{mutex};
    return done.size() + static_cast<size_t>(failed.load()) == 41;
  }, 30s));
  EXPECT_EQ(failed.load(), 0);
  std::sort(done.begin(), done.end(),
            [](const auto& x, const auto& y) { return x.second.start < y.second.start; });
  auto pos = std::find_if(done.begin(), done.end(), [](const auto& x) { return x.first == 2; }) -
             done.begin();
  // At most the two running when it arrived and one more turn went first.
  EXPECT_LE(pos, 3) << "client 2 was served after " << pos << " of client 1's requests";
}

TEST_F(instances_test, AKilledInstanceFailsItsCallerOnlyAndANewForkReplacesIt) {
  auto& reg = start();
  auto h = reg.get_or_load("m", forked_identity(2, 1500));
  ASSERT_TRUE(h) << describe(h.error());
  auto before = status_of("m");
  ASSERT_TRUE(before);
  ASSERT_EQ(before->processes.size(), 2u);
  auto calls = std::async(std::launch::async, [&] { return at_once("m", 2); });
  ASSERT_TRUE(eventually([&] { return status_of("m")->instances_busy == 2; }));
  auto victim = before->processes[0].pid;
  ASSERT_EQ(::kill(static_cast<pid_t>(victim), SIGKILL), 0);
  auto results = calls.get();
  int ok = 0, crashed = 0;
  for (auto& r : results) {
    if (r)
      ++ok;
    else if (is(r.error(), errc::model_crashed))
      ++crashed;
    else
      ADD_FAILURE() << describe(r.error());
  }
  EXPECT_EQ(ok, 1);
  EXPECT_EQ(crashed, 1);
  // A new fork takes the dead one's place; both serve again.
  ASSERT_TRUE(eventually([&] {
    auto s = status_of("m");
    return s->instances == 2 && s->processes.size() == 2 && s->instance_restarts == 1;
  }));
  auto after = status_of("m");
  for (const auto& p : after->processes)
    EXPECT_NE(p.pid, victim);
  auto again = at_once("m", 2);
  EXPECT_TRUE(again[0] && again[1]);
  EXPECT_EQ(after->zygote_pid, before->zygote_pid);
}

TEST_F(instances_test, AnIdleInstanceThatDiedIsReplacedBeforeItTakesARequest) {
  auto& reg = start();
  auto h = reg.get_or_load("m", forked_identity(2, 0));
  ASSERT_TRUE(h) << describe(h.error());
  auto victim = status_of("m")->processes.at(0).pid;
  ASSERT_EQ(::kill(static_cast<pid_t>(victim), SIGKILL), 0);
  ASSERT_TRUE(eventually([&] { return status_of("m")->processes.size() == 1; }));
  // Nobody was calling it: nobody hears of it.
  for (int i = 0; i < 4; ++i) {
    auto r = at_once("m", 2);
    for (auto& x : r)
      EXPECT_TRUE(x) << describe(x.error());
  }
  EXPECT_EQ(status_of("m")->instance_restarts, 1u);
}

TEST_F(instances_test, AllBusyInstancesGrowToMaxInstances) {
  auto& reg = start();
  auto h = reg.get_or_load("m", forked_identity(1, 800, 2));
  ASSERT_TRUE(h) << describe(h.error());
  // (The model actor starts its instances' workers as it starts.)
  ASSERT_TRUE(eventually([&] { return status_of("m")->instances == 1; }));
  auto r = at_once("m", 3);
  for (auto& x : r)
    ASSERT_TRUE(x) << describe(x.error());
  EXPECT_EQ(status_of("m")->instances, 2u);
  EXPECT_EQ(status_of("m")->processes.size(), 2u);
  int overlapping = 0;
  for (size_t i = 0; i < r.size(); ++i)
    for (size_t j = i + 1; j < r.size(); ++j)
      overlapping += overlap(served_of(*r[i]), served_of(*r[j])) ? 1 : 0;
  EXPECT_GE(overlapping, 1);
}

/// A model that is neither thread-safe nor forkable; counts what enters it.
class entering_model final : public model {
public:
  entering_model(std::shared_ptr<std::atomic<int>> entered, std::shared_ptr<gate> g)
    : entered_(std::move(entered)), gate_(std::move(g)) {}
  caf::expected<tensor_map> infer(const tensor_map& in, tensor_allocator&) override {
    ++*entered_;
    gate_->wait();
    return in;
  }
  uint64_t memory_bytes() const override { return 100; }
  std::string describe() const override { return "entering"; }

private:
  std::shared_ptr<std::atomic<int>> entered_;
  std::shared_ptr<gate> gate_;
};

TEST_F(instances_test, InstancesOfABackendThatCannotForkAreSeparateLoads) {
  auto loads = std::make_shared<std::atomic<int>>(0);
  auto entered = std::make_shared<std::atomic<int>>(0);
  auto g = std::make_shared<gate>();
  auto backends = backend_registry::with_builtins();
  backends->add("entering", [=](const model_spec&) -> caf::expected<model_ptr> {
    ++*loads;
    return std::make_shared<entering_model>(entered, g);
  });
  rcfg.backends = backends;
  auto& reg = start();
  model_spec spec{"entering", {}};
  spec.instances = 2;
  auto h = reg.get_or_load("m", spec);
  ASSERT_TRUE(h) << describe(h.error());
  EXPECT_EQ(loads->load(), 2);
  auto calls = std::async(std::launch::async, [&] { return at_once("m", 2); });
  // Both requests are inside a model at once.
  EXPECT_TRUE(eventually([&] { return entered->load() == 2; }));
  g->open();
  for (auto& r : calls.get())
    EXPECT_TRUE(r) << describe(r.error());
  auto st = status_of("m");
  EXPECT_EQ(st->instances, 2u);
  EXPECT_EQ(st->zygote_pid, 0);
  EXPECT_TRUE(st->processes.empty());
}

TEST_F(instances_test, BadInstanceCountsAreRefusedBeforeAnyLoad) {
  auto& reg = start();
  auto spec = forked_identity(65, 0);
  auto r = reg.get_or_load("m", spec);
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::invalid_argument)) << describe(r.error());
  EXPECT_NE(describe(r.error()).find("instances"), std::string::npos) << describe(r.error());
  spec = forked_identity(3, 0, 2);
  r = reg.get_or_load("m", spec);
  ASSERT_FALSE(r);
  EXPECT_NE(describe(r.error()).find("max_instances (2) is below instances (3)"),
            std::string::npos)
    << describe(r.error());
  EXPECT_TRUE(children().empty());
  // The catalog checks them too, naming the field.
  for (const char* bad : {R"({"models":{"m":{"backend":"identity","instances":0}}})",
                          R"({"models":{"m":{"backend":"identity","instances":"2"}}})",
                          R"({"models":{"m":{"backend":"identity","max_instances":-1}}})",
                          R"({"models":{"m":{"backend":"identity","instance":2}}})"}) {
    auto c = catalog::parse(bad);
    ASSERT_FALSE(c) << bad;
    EXPECT_NE(describe(c.error()).find("instance"), std::string::npos) << describe(c.error());
  }
  auto good = catalog::parse(R"({"models":{"m":{"backend":"identity","instances":2,"max_instances":4}}})");
  ASSERT_TRUE(good) << describe(good.error());
  EXPECT_EQ(good->find("m")->instances, 2u);
  EXPECT_EQ(good->find("m")->max_instances, 4u);
}

TEST_F(instances_test, AZygoteThatCannotLoadFailsTheLoadAndLeavesNoProcess) {
  auto& reg = start();
  auto spec = forked_identity(2, 0);
  spec.params["fail_load"] = "true";
  auto r = reg.get_or_load("m", spec);
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::load_failed)) << describe(r.error());
  EXPECT_NE(describe(r.error()).find("fail_load"), std::string::npos) << describe(r.error());
  EXPECT_TRUE(eventually([] { return children().empty(); }));
  // The next request tries again (and fails the same way).
  auto again = reg.get_or_load("m", spec);
  EXPECT_FALSE(again);
}

TEST_F(instances_test, AMissingZygoteExecutableIsAClearLoadError) {
  auto& reg = start();
  ::setenv("MODELREG_ZYGOTE", "/nonexistent/modelreg-zygote", 1);
  auto r = reg.get_or_load("m", forked_identity(2, 0));
  ::unsetenv("MODELREG_ZYGOTE");
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::load_failed)) << describe(r.error());
  EXPECT_NE(describe(r.error()).find("MODELREG_ZYGOTE"), std::string::npos) << describe(r.error());
  // With the right one it loads.
  auto ok = reg.get_or_load("m", forked_identity(2, 0));
  EXPECT_TRUE(ok) << describe(ok.error());
}

TEST_F(instances_test, UnloadingEndsTheZygoteAndEveryInstance) {
  auto& reg = start();
  {
    auto h = reg.get_or_load("m", forked_identity(2, 0));
    ASSERT_TRUE(h) << describe(h.error());
  }
  auto st = status_of("m");
  ASSERT_TRUE(st);
  std::vector<int64_t> pids{st->zygote_pid};
  for (const auto& p : st->processes)
    pids.push_back(p.pid);
  ASSERT_EQ(pids.size(), 3u);
  auto u = reg.unload("m");
  ASSERT_TRUE(u) << describe(u.error());
  for (auto pid : pids)
    EXPECT_TRUE(eventually([pid] { return process_gone(pid); })) << "process " << pid << " is left";
  EXPECT_TRUE(eventually([] { return children().empty(); }));
}

} // namespace
} // namespace modelreg::test

// The registry's single-flight loads, failures, timeouts, model actors and
// status, through the facade and the typed actor interface.
#include <algorithm>
#include <future>
#include <latch>
#include <thread>

#include <caf/scheduler/test_coordinator.hpp>
#include <caf/scoped_actor.hpp>

#include "actors/registry_fixture.hpp"

namespace modelreg::test {
namespace {

using namespace std::chrono_literals;

TEST_F(registry_test, HundredConcurrentCallersShareOneLoad) {
  // Arrange
  auto& reg = start();
  auto runs = std::make_shared<std::atomic<int>>(0);
  auto loader = counting_loader(runs, 1000, 300ms);
  std::vector<caf::expected<model_handle>> results(100, caf::error{});
  std::latch ready{100};
  std::vector<std::thread> callers;
  // Act
  for (size_t i = 0; i < results.size(); ++i)
    callers.emplace_back([&, i] {
      ready.arrive_and_wait();
      results[i] = reg.get_or_load("asr", loader);
    });
  for (auto& t : callers)
    t.join();
  // Assert
  EXPECT_EQ(runs->load(), 1);
  ASSERT_TRUE(results[0]) << describe(results[0].error());
  for (const auto& r : results) {
    ASSERT_TRUE(r) << describe(r.error());
    EXPECT_TRUE(r->same_model(*results[0]));
    EXPECT_EQ(r->actor(), results[0]->actor());
  }
  auto snap = snapshot();
  EXPECT_EQ(snap.totals.misses, 1u);
  EXPECT_EQ(snap.totals.coalesced, 99u);
  EXPECT_EQ(snap.totals.loads, 1u);
  ASSERT_EQ(snap.models.size(), 1u);
  EXPECT_EQ(snap.models[0].handles, 100u);
  EXPECT_EQ(counted_model::live.load(), 1);
}

TEST_F(registry_test, LoadFailsForAllWaitersWhenLoaderThrowsAndNextCallRetries) {
  auto& reg = start();
  auto runs = std::make_shared<std::atomic<int>>(0);
  auto throwing = [runs]() -> caf::expected<model_ptr> {
    ++*runs;
    std::this_thread::sleep_for(100ms);
    throw std::runtime_error("weights file is corrupt");
  };
  std::vector<std::future<caf::expected<model_handle>>> waiters;
  for (int i = 0; i < 5; ++i)
    waiters.push_back(reg.get_or_load_async("asr", throwing));
  for (auto& w : waiters) {
    auto r = w.get();
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), errc::load_failed)) << describe(r.error());
    EXPECT_NE(describe(r.error()).find("weights file is corrupt"), std::string::npos);
  }
  EXPECT_EQ(runs->load(), 1);
  EXPECT_TRUE(reg.list().empty()) << "a failed load must leave no entry";
  // The next call loads again, successfully.
  auto ok = reg.get_or_load("asr", counting_loader(runs));
  ASSERT_TRUE(ok) << describe(ok.error());
  EXPECT_EQ(runs->load(), 2);
  auto snap = snapshot();
  EXPECT_EQ(snap.totals.load_failures, 1u);
  EXPECT_EQ(snap.totals.loads, 1u);
}

TEST_F(registry_test, LoaderReturningAnErrorReachesEveryWaiter) {
  auto& reg = start();
  auto failing = []() -> caf::expected<model_ptr> {
    std::this_thread::sleep_for(50ms);
    return make_error(errc::load_failed, "no such file");
  };
  auto a = reg.get_or_load_async("x", failing);
  auto b = reg.get_or_load_async("x", failing);
  auto ra = a.get();
  auto rb = b.get();
  ASSERT_FALSE(ra);
  ASSERT_FALSE(rb);
  EXPECT_EQ(ra.error(), rb.error());
  EXPECT_EQ(describe(ra.error()), "load_failed: no such file");
}

TEST_F(registry_test, LoaderAndModelErrorsReachCallersWithModelregCodesOnly) {
  auto& reg = start();
  // Another category (CAF's own) becomes load_failed, naming the original.
  auto caf_error = []() -> caf::expected<model_ptr> {
    return caf::make_error(caf::sec::runtime_error, "weights server said no");
  };
  auto r = reg.get_or_load("caf", caf_error);
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::load_failed)) << describe(r.error());
  EXPECT_NE(describe(r.error()).find("runtime_error"), std::string::npos) << describe(r.error());
  // A modelreg code keeps its meaning: the spec was wrong.
  auto bad_param = []() -> caf::expected<model_ptr> {
    return make_error(errc::invalid_argument, "parameter gain='abc' is not a number");
  };
  auto p = reg.get_or_load("param", bad_param);
  ASSERT_FALSE(p);
  EXPECT_TRUE(is(p.error(), errc::invalid_argument)) << describe(p.error());
  // The same for a model's infer.
  struct refusing final : model {
    caf::expected<tensor_map> infer(const tensor_map& in, tensor_allocator&) override {
      if (in.count("caf"))
        return caf::make_error(caf::sec::unexpected_message);
      return make_error(errc::invalid_argument, "input 'x' must be f32");
    }
    uint64_t memory_bytes() const override { return 1; }
    std::string describe() const override { return "refusing"; }
  };
  auto h = reg.get_or_load("m", []() -> caf::expected<model_ptr> { return std::make_shared<refusing>(); });
  ASSERT_TRUE(h) << describe(h.error());
  auto x = *tensor::from_values<float>({1.f});
  auto other = h->infer({{"caf", x}});
  ASSERT_FALSE(other);
  EXPECT_TRUE(is(other.error(), errc::infer_failed)) << describe(other.error());
  auto mine = h->infer({{"x", x}});
  ASSERT_FALSE(mine);
  EXPECT_TRUE(is(mine.error(), errc::invalid_argument)) << describe(mine.error());
}

TEST_F(registry_test, LoadTimeoutAnswersEveryWaiterAndLateResultLeaksNothing) {
  rcfg.load_timeout = 100ms;
  auto& reg = start();
  auto runs = std::make_shared<std::atomic<int>>(0);
  auto slow = counting_loader(runs, 1000, 500ms);
  std::vector<std::future<caf::expected<model_handle>>> waiters;
  for (int i = 0; i < 3; ++i)
    waiters.push_back(reg.get_or_load_async("slow", slow));
  for (auto& w : waiters) {
    auto r = w.get();
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), errc::load_timeout)) << describe(r.error());
  }
  EXPECT_TRUE(reg.list().empty());
  // The loader finishes later; its model is disposed of, not leaked.
  EXPECT_TRUE(eventually([&] { return snapshot().totals.late_results_disposed == 1; }));
  EXPECT_TRUE(eventually([&] { return counted_model::live.load() == 0; }));
  EXPECT_EQ(snapshot().totals.load_timeouts, 1u);
}

TEST_F(registry_test, QueuedLoadTimesOutFromItsRequestAndHungLoadersGiveTheirSlotBack) {
  // One load slot; two loaders that hang until the end of the test.
  rcfg.max_concurrent_loads = 1;
  rcfg.load_timeout = 300ms;
  auto& reg = start();
  auto hang = std::make_shared<gate>();
  auto started = std::make_shared<std::atomic<int>>(0);
  auto hanging = [hang, started]() -> caf::expected<model_ptr> {
    ++*started;
    hang->wait();
    return std::make_shared<counted_model>();
  };
  auto first = reg.get_or_load_async("first", hanging);
  ASSERT_TRUE(eventually([&] { return started->load() == 1; }));
  // The second queues behind the first. Its timeout counts from its request:
  // it fails with load_timeout (it used to wait for a slot the hung loader
  // never gave back, then got CAF's request_timeout 30 s later).
  auto second = reg.get_or_load_async("second", hanging);
  for (auto* f : {&first, &second}) {
    auto r = f->get();
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), errc::load_timeout)) << describe(r.error());
  }
  // Both loaders still run, but their slots went to the next load.
  auto runs = std::make_shared<std::atomic<int>>(0);
  auto later = reg.get_or_load("later", counting_loader(runs));
  ASSERT_TRUE(later) << describe(later.error());
  EXPECT_EQ(runs->load(), 1);
  auto snap = snapshot();
  EXPECT_EQ(snap.totals.load_timeouts, 2u);
  EXPECT_EQ(snap.totals.loads_in_progress, 0u);
  later = caf::error{};
  // When the hung loaders return, their models are disposed of, not leaked.
  hang->open();
  EXPECT_TRUE(eventually([&] { return snapshot().totals.late_results_disposed == 2; }));
}

TEST_F(registry_test, StatusHitsAndOtherLoadsAreAnsweredWhileASlowLoadRuns) {
  auto& reg = start();
  auto runs = std::make_shared<std::atomic<int>>(0);
  ASSERT_TRUE(reg.get_or_load("fast", counting_loader(runs)));
  auto release = std::make_shared<gate>();
  auto blocked = reg.get_or_load_async("slow", [release]() -> caf::expected<model_ptr> {
    release->wait();
    return std::make_shared<counted_model>();
  });
  // While "slow" loads: status, a hit through the actor, and another load.
  EXPECT_TRUE(eventually([&] { return snapshot().totals.loads_in_progress == 1; }));
  auto snap = snapshot();
  ASSERT_EQ(snap.models.size(), 2u);
  EXPECT_EQ(snap.models[1].key, "slow");
  EXPECT_EQ(snap.models[1].state, model_state::loading);
  caf::scoped_actor self{sys};
  bool hit = false;
  self->request(reg.actor(), 5s, get_or_load_atom::value, std::string{"fast"}, loader_fn{})
    .receive([&](const model_handle& h) { hit = h.valid(); },
             [&](const caf::error& e) { FAIL() << describe(e); });
  EXPECT_TRUE(hit);
  EXPECT_TRUE(reg.get_or_load("other", counting_loader(runs)));
  EXPECT_EQ(blocked.wait_for(0ms), std::future_status::timeout);
  release->open();
  EXPECT_TRUE(blocked.get());
}

TEST_F(registry_test, LoadsBeyondMaxConcurrentLoadsWaitTheirTurn) {
  rcfg.max_concurrent_loads = 1;
  auto& reg = start();
  auto first_gate = std::make_shared<gate>();
  std::atomic<int> running{0}, max_running{0};
  auto loader = [&](std::shared_ptr<gate> g) {
    return [&, g]() -> caf::expected<model_ptr> {
      auto now = ++running;
      max_running = std::max(max_running.load(), now);
      if (g)
        g->wait();
      --running;
      return std::make_shared<counted_model>();
    };
  };
  auto a = reg.get_or_load_async("a", loader(first_gate));
  ASSERT_TRUE(eventually([&] { return running.load() == 1; }));
  auto b = reg.get_or_load_async("b", loader(nullptr));
  EXPECT_TRUE(eventually([&] { return snapshot().totals.loads_in_progress == 2; }));
  EXPECT_EQ(b.wait_for(50ms), std::future_status::timeout) << "b must wait for a's slot";
  first_gate->open();
  EXPECT_TRUE(a.get());
  EXPECT_TRUE(b.get());
  EXPECT_EQ(max_running.load(), 1);
}

TEST_F(registry_test, ModelSpecLoadsABuiltinBackendThatDoesRealWork) {
  auto& reg = start();
  auto h = reg.get_or_load("gain2", model_spec{"gain", {{"gain", "2"}}});
  ASSERT_TRUE(h) << describe(h.error());
  auto in = tensor::from_values<float>({1.f, -2.f, 0.25f});
  ASSERT_TRUE(in);
  auto out = h->infer({{"audio", *in}});
  ASSERT_TRUE(out) << describe(out.error());
  auto values = out->at("audio").values<float>();
  ASSERT_TRUE(values);
  EXPECT_EQ(std::vector<float>(values->begin(), values->end()),
            (std::vector<float>{2.f, -4.f, 0.5f}));
}

/// Quick and thread-safe: a caller's thread may run it. Throws on "throw".
class quick_model final : public model {
public:
  caf::expected<tensor_map> infer(const tensor_map& inputs, tensor_allocator&) override {
    if (inputs.count("throw") != 0)
      throw std::runtime_error("asked to throw");
    return inputs;
  }
  uint64_t memory_bytes() const override { return 1; }
  model_capabilities capabilities() const override {
    model_capabilities caps;
    caps.thread_safe = true;
    caps.quick = true;
    return caps;
  }
  std::string describe() const override { return "quick"; }
};

TEST_F(registry_test, AQuickModelRunsOnTheCallersThreadOnlyWhereItMay) {
  auto& reg = start();
  auto h = reg.get_or_load("gain2", model_spec{"gain", {{"gain", "2"}}});
  ASSERT_TRUE(h) << describe(h.error());
  auto in = tensor::from_values<float>({1.f, -2.f, 0.25f});
  auto out = h->try_infer_here({{"audio", *in}}, heap_allocator());
  ASSERT_TRUE(out.has_value()) << "gain is quick and thread-safe";
  ASSERT_TRUE(*out) << describe(out->error());
  auto values = (*out)->at("audio").values<float>();
  EXPECT_EQ(std::vector<float>(values->begin(), values->end()),
            (std::vector<float>{2.f, -4.f, 0.5f}));
  // Over quick_max_input_bytes: the caller sends it to the actor instead.
  auto big = tensor::allocate(dtype::f32, {static_cast<int64_t>(quick_max_input_bytes / 4 + 1)});
  EXPECT_FALSE(h->try_infer_here({{"audio", *big}}, heap_allocator()).has_value());
  // Counted as the actor counts: one request, its latency.
  EXPECT_EQ(snapshot().models.at(0).requests, 1u);
  // A model that throws answers the caller with a typed error, counted.
  auto q = reg.get_or_load("q", [] { return model_ptr{std::make_shared<quick_model>()}; });
  ASSERT_TRUE(q);
  auto thrown = q->try_infer_here({{"throw", *in}}, heap_allocator());
  ASSERT_TRUE(thrown.has_value());
  ASSERT_FALSE(*thrown);
  EXPECT_TRUE(is(thrown->error(), errc::infer_failed)) << describe(thrown->error());
  EXPECT_TRUE(q->try_infer_here({{"x", *in}}, heap_allocator()).value());
  for (const auto& m : snapshot().models)
    if (m.key == "q") {
      EXPECT_EQ(m.requests, 2u);
      EXPECT_EQ(m.errors, 1u);
    }
  // Not where it may not: a model that is not thread-safe, or batched, and
  // a released handle.
  auto serial = reg.get_or_load("serial", model_spec{"identity", {}});
  auto batched = reg.get_or_load("batched", model_spec{"identity", {{"thread_safe", "true"},
                                                                     {"batchable", "true"}}});
  ASSERT_TRUE(serial && batched);
  EXPECT_FALSE(serial->try_infer_here({{"x", *in}}, heap_allocator()).has_value());
  EXPECT_FALSE(batched->try_infer_here({{"x", *in}}, heap_allocator()).has_value());
  auto released = *q;
  ASSERT_TRUE(released.release());
  EXPECT_FALSE(released.try_infer_here({{"x", *in}}, heap_allocator()).has_value());
}

TEST_F(registry_test, ModelSpecWithUnknownBackendOrBadParameterIsRejected) {
  auto& reg = start();
  auto unknown = reg.get_or_load("x", model_spec{"no-such-backend", {}});
  ASSERT_FALSE(unknown);
  EXPECT_TRUE(is(unknown.error(), errc::backend_not_found));
  auto bad = reg.get_or_load("y", model_spec{"gain", {{"gain", "loud"}}});
  ASSERT_FALSE(bad);
  EXPECT_TRUE(is(bad.error(), errc::invalid_argument)) << describe(bad.error());
  EXPECT_TRUE(reg.list().empty());
}

TEST_F(registry_test, WrongInputGetsAClearErrorAndTheModelKeepsServing) {
  auto& reg = start();
  auto h = reg.get_or_load("g", model_spec{"gain", {}});
  ASSERT_TRUE(h);
  auto ints = tensor::from_values<int16_t>({1, 2});
  auto wrong = h->infer({{"audio", *ints}});
  ASSERT_FALSE(wrong);
  EXPECT_TRUE(is(wrong.error(), errc::invalid_argument));
  EXPECT_NE(describe(wrong.error()).find("expected f32"), std::string::npos);
  auto missing = h->infer({});
  ASSERT_FALSE(missing);
  EXPECT_NE(describe(missing.error()).find("missing input tensor 'audio'"), std::string::npos);
  auto floats = tensor::from_values<float>({1.f});
  EXPECT_TRUE(h->infer({{"audio", *floats}}));
}

TEST_F(registry_test, InferThrowingAnswersTheCallerAndTheModelKeepsServing) {
  auto& reg = start();
  auto h = reg.get_or_load("m", [] { return model_ptr{std::make_shared<counted_model>()}; });
  ASSERT_TRUE(h);
  auto x = tensor::from_values<float>({1.f});
  auto thrown = h->infer({{"throw", *x}});
  ASSERT_FALSE(thrown);
  EXPECT_TRUE(is(thrown.error(), errc::infer_failed));
  EXPECT_NE(describe(thrown.error()).find("asked to throw"), std::string::npos);
  EXPECT_TRUE(h->infer({{"x", *x}}));
  // Routed through the supervisor as well.
  EXPECT_TRUE(reg.infer("m", {{"x", *x}}));
  auto snap = snapshot();
  ASSERT_EQ(snap.models.size(), 1u);
  EXPECT_EQ(snap.models[0].requests, 3u);
  EXPECT_EQ(snap.models[0].errors, 1u);
}

TEST_F(registry_test, KilledModelActorFailsCallersAndTheNextRequestReloads) {
  auto& reg = start();
  auto log = subscribe();
  auto runs = std::make_shared<std::atomic<int>>(0);
  auto h = reg.get_or_load("m", counting_loader(runs));
  ASSERT_TRUE(h);
  caf::anon_send_exit(h->actor(), caf::exit_reason::kill);
  EXPECT_TRUE(eventually([&] { return reg.list().empty(); }));
  EXPECT_FALSE(h->valid());
  auto x = tensor::from_values<float>({1.f});
  auto r = h->infer({{"x", *x}});
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::model_crashed)) << describe(r.error());
  auto routed = reg.infer("m", {{"x", *x}});
  ASSERT_FALSE(routed);
  EXPECT_TRUE(is(routed.error(), errc::model_not_found));
  // The next get_or_load reloads.
  auto again = reg.get_or_load("m", counting_loader(runs));
  ASSERT_TRUE(again);
  EXPECT_EQ(runs->load(), 2);
  EXPECT_FALSE(again->same_model(*h));
  EXPECT_TRUE(again->infer({{"x", *x}}));
  EXPECT_EQ(snapshot().totals.crashes, 1u);
  EXPECT_TRUE(eventually([&] { return log->size() >= 5; }));
  auto t = log->transitions();
  ASSERT_GE(t.size(), 3u);
  EXPECT_EQ(t[2], std::make_pair(std::string{"m"}, model_state::failed));
}

TEST_F(registry_test, RoutedInferWaitsForALoadInProgress) {
  auto& reg = start();
  auto release = std::make_shared<gate>();
  auto loading = reg.get_or_load_async("m", [release]() -> caf::expected<model_ptr> {
    release->wait();
    return std::make_shared<counted_model>();
  });
  // The load request and the routed infer travel from different threads; the
  // infer must reach a key that is already loading, not race ahead of it.
  ASSERT_TRUE(eventually([&] {
    auto s = snapshot();
    return !s.models.empty() && s.models[0].waiters == 1;
  }));
  auto x = tensor::from_values<float>({3.f});
  auto routed = std::async(std::launch::async, [&] { return reg.infer("m", {{"x", *x}}); });
  EXPECT_TRUE(eventually([&] {
    auto s = snapshot();
    return !s.models.empty() && s.models[0].waiters == 2;
  }));
  release->open();
  auto out = routed.get();
  ASSERT_TRUE(out) << describe(out.error());
  EXPECT_EQ(out->at("x").values<float>()->front(), 3.f);
  EXPECT_TRUE(loading.get());
}

TEST_F(registry_test, InferenceIsSerialUnlessTheModelIsThreadSafe) {
  rcfg.inference_lanes = 2;
  auto& reg = start();
  std::shared_ptr<counted_model> serial, parallel;
  auto hs = reg.get_or_load("serial", [&]() -> caf::expected<model_ptr> {
    serial = std::make_shared<counted_model>(1000, model_capabilities{false, true, false});
    serial->enable_rendezvous();
    return serial;
  });
  auto hp = reg.get_or_load("parallel", [&]() -> caf::expected<model_ptr> {
    parallel = std::make_shared<counted_model>(1000, model_capabilities{true, true, false});
    parallel->enable_rendezvous();
    return parallel;
  });
  ASSERT_TRUE(hs);
  ASSERT_TRUE(hp);
  auto x = tensor::from_values<float>({1.f});
  auto run_pair = [&](const model_handle& h) {
    auto a = std::async(std::launch::async, [&] { return h.infer({{"pair", *x}}); });
    auto b = std::async(std::launch::async, [&] { return h.infer({{"pair", *x}}); });
    EXPECT_TRUE(a.get());
    EXPECT_TRUE(b.get());
  };
  run_pair(*hs);
  run_pair(*hp);
  EXPECT_EQ(serial->max_concurrent(), 1);
  EXPECT_EQ(parallel->max_concurrent(), 2);
  serial.reset();
  parallel.reset();
}

TEST_F(registry_test, SubscriberSeesLoadingReadyEvictedInOrder) {
  rcfg.snapshot_interval = 20ms;
  auto& reg = start();
  auto log = subscribe();
  {
    auto h = reg.get_or_load("m", counting_loader(std::make_shared<std::atomic<int>>(0)));
    ASSERT_TRUE(h);
  }
  auto r = reg.unload("m");
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->count, 1u);
  EXPECT_EQ(r->freed_bytes, 1000u);
  EXPECT_TRUE(eventually([&] { return log->size() >= 3; }));
  auto t = log->transitions();
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0].second, model_state::loading);
  EXPECT_EQ(t[1].second, model_state::ready);
  EXPECT_EQ(t[2].second, model_state::unloaded);
  std::lock_guard guard{log->mutex};
  for (size_t i = 1; i < log->events.size(); ++i)
    EXPECT_LT(log->events[i - 1].seq, log->events[i].seq);
}

TEST_F(registry_test, SubscriberReceivesPeriodicSnapshots) {
  rcfg.snapshot_interval = 10ms;
  start();
  auto log = subscribe();
  EXPECT_TRUE(eventually([&] {
    std::lock_guard guard{log->mutex};
    return log->snapshots >= 3;
  }));
}

// Snapshots keep their interval whatever the TTL sweep's period. Virtual time
// (CAF's test coordinator) makes this exact: every advance of one interval
// yields one snapshot, none in between.
TEST(registry_snapshots, ArriveEveryIntervalWhateverTheTtl) {
  struct params {
    std::chrono::milliseconds interval, ttl;
  };
  for (auto p : {params{1000ms, 3000ms}, params{300ms, 1000ms}, params{200ms, 20ms}}) {
    SCOPED_TRACE("interval " + std::to_string(p.interval.count()) + " ms, ttl " +
                 std::to_string(p.ttl.count()) + " ms");
    system_config cfg;
    cfg.set("scheduler.policy", caf::atom("testing"));
    caf::actor_system sys{cfg};
    auto& sched = dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler());
    registry_config rcfg;
    rcfg.snapshot_interval = p.interval;
    rcfg.idle_ttl = p.ttl;
    auto reg = spawn_registry(sys, rcfg);
    auto log = std::make_shared<status_log>();
    auto listener = sys.spawn(recorder, log);
    caf::anon_send(reg, subscribe_atom::value, listener);
    sched.run();
    ASSERT_EQ(log->snapshots, 1u) << "one snapshot right after subscribing";
    auto step = p.interval / 10;
    for (size_t expected = 2; expected <= 6; ++expected) {
      for (int i = 0; i < 9; ++i) {
        sched.advance_time(step);
        sched.run();
      }
      EXPECT_EQ(log->snapshots, expected - 1) << "early";
      sched.advance_time(step);
      sched.run();
      EXPECT_EQ(log->snapshots, expected) << "late";
    }
    caf::anon_send_exit(listener, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(reg, caf::exit_reason::user_shutdown);
    sched.run();
  }
}

TEST_F(registry_test, ShutdownAnswersEveryWaiterAndLeavesNothing) {
  auto& reg = start();
  auto release = std::make_shared<gate>();
  auto waiting = reg.get_or_load_async("m", [release]() -> caf::expected<model_ptr> {
    release->wait();
    return std::make_shared<counted_model>();
  });
  EXPECT_TRUE(eventually([&] { return snapshot().totals.loads_in_progress == 1; }));
  sut.reset();
  auto r = waiting.get();
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::shutting_down)) << describe(r.error());
  // The loader finishes after the registry is gone; its model is freed
  // (checked by the fixture).
  release->open();
}

TEST_F(registry_test, ExplicitReleaseGivesTheLeaseBackForEveryCopy) {
  auto& reg = start();
  auto h = reg.get_or_load("m", counting_loader(std::make_shared<std::atomic<int>>(0)));
  ASSERT_TRUE(h);
  auto copy = *h;
  caf::scoped_actor self{sys};
  bool first = false, second = true;
  self->request(reg.actor(), 5s, release_atom::value, *h).receive(
    [&](bool released) { first = released; }, [&](const caf::error& e) { FAIL() << describe(e); });
  self->request(reg.actor(), 5s, release_atom::value, copy).receive(
    [&](bool released) { second = released; }, [&](const caf::error& e) { FAIL() << describe(e); });
  EXPECT_TRUE(first);
  EXPECT_FALSE(second);
  EXPECT_FALSE(copy.valid());
  auto x = tensor::from_values<float>({1.f});
  auto r = copy.infer({{"x", *x}});
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::handle_released));
  EXPECT_EQ(snapshot().models.at(0).handles, 0u);
}

// -- fair queueing (models served one request at a time) ----------------------

/// Records which client each call served, in order; can be held.
class recording_model final : public model {
public:
  caf::expected<tensor_map> infer(const tensor_map& in, tensor_allocator&) override {
    ++entered;
    if (hold)
      hold->wait();
    std::lock_guard guard{mutex};
    order.push_back(static_cast<int>((*in.at("who").values<float>())[0]));
    return in;
  }
  uint64_t memory_bytes() const override { return 1; }
  std::string describe() const override { return "recording"; }

  std::vector<int> served() {
    std::lock_guard guard{mutex};
    return order;
  }

  std::shared_ptr<gate> hold;
  std::atomic<int> entered{0};
  std::mutex mutex;
  std::vector<int> order;
};

/// A request from `client`, answered through a sink that records the outcome.
struct sent_request {
  std::shared_ptr<std::atomic<int>> outcome = std::make_shared<std::atomic<int>>(-1); // -1: none yet; 0: ok; else errc
};

sent_request send_from(const model_actor& actor, uint64_t client) {
  sent_request r;
  auto outcome = r.outcome;
  auto sink = std::make_shared<reply_sink>([outcome](caf::expected<tensor_map> out) {
    *outcome = out ? 0 : static_cast<int>(out.error().code());
  });
  auto who = *tensor::from_values<float>({static_cast<float>(client)}, {1});
  caf::anon_send(actor, infer_request{{{"who", who}}, nullptr, nullptr, std::move(sink), client});
  return r;
}

/// A recording model held by a closed gate, loaded into `reg` as "m".
struct held_model {
  std::shared_ptr<recording_model> m = std::make_shared<recording_model>();
  std::shared_ptr<gate> g = std::make_shared<gate>();
  caf::expected<model_handle> h;

  explicit held_model(registry& reg)
    : h(reg.get_or_load("m", [m = m]() -> caf::expected<model_ptr> { return m; })) {
    m->hold = g;
  }
};

TEST_F(registry_test, AModelServedOneAtATimeTakesItsClientsInTurn) {
  held_model held{start()};
  auto& m = held.m;
  auto& g = held.g;
  auto& h = held.h;
  ASSERT_TRUE(h) << describe(h.error());
  // Client 1's first request holds the model; ten more wait behind it ...
  std::vector<sent_request> sent{send_from(h->actor(), 1)};
  ASSERT_TRUE(eventually([&] { return m->entered.load() == 1; }));
  for (int i = 0; i < 10; ++i)
    sent.push_back(send_from(h->actor(), 1));
  // ... when client 2 sends its one request.
  sent.push_back(send_from(h->actor(), 2));
  g->open();
  ASSERT_TRUE(eventually([&] { return m->served().size() == 12; }));
  auto order = m->served();
  // Client 2 waits for the call that was running, not for the ten queued.
  EXPECT_EQ(order[1], 2) << "client 2 served at position "
                         << (std::find(order.begin(), order.end(), 2) - order.begin());
  for (auto& r : sent)
    EXPECT_TRUE(eventually([&] { return r.outcome->load() == 0; }));
}

TEST_F(registry_test, AModelWhoseQueueIsFullAnswersBusyAtOnce) {
  rcfg.max_queue = 2;
  auto& reg = start();
  held_model held{reg};
  auto& m = held.m;
  auto& g = held.g;
  auto& h = held.h;
  ASSERT_TRUE(h) << describe(h.error());
  auto running = send_from(h->actor(), 1);
  ASSERT_TRUE(eventually([&] { return m->entered.load() == 1; }));
  auto a = send_from(h->actor(), 1);
  auto b = send_from(h->actor(), 2);
  auto over = send_from(h->actor(), 3);
  g->open();
  ASSERT_TRUE(eventually([&] { return over.outcome->load() != -1; }));
  EXPECT_EQ(over.outcome->load(), static_cast<int>(errc::busy));
  for (auto* r : {&running, &a, &b})
    EXPECT_TRUE(eventually([&] { return r->outcome->load() == 0; }));
  EXPECT_EQ(m->served().size(), 3u);
  // The model keeps serving.
  auto again = reg.infer("m", {{"who", *tensor::from_values<float>({4.f}, {1})}});
  EXPECT_TRUE(again) << describe(again.error());
}

} // namespace
} // namespace modelreg::test

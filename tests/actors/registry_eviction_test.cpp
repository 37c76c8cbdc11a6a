// Eviction through a running registry: byte budget in LRU order, TTL,
// max_models, pinning, manual unload, and what blocks eviction (live handles,
// requests in flight).
#include <future>
#include <thread>

#include <caf/scoped_actor.hpp>

#include "actors/registry_fixture.hpp"
#include "modelreg/actors/detail/entry_block.hpp"
#include "modelreg/actors/detail/supervisor.hpp"

namespace modelreg::test {
namespace {

using namespace std::chrono_literals;

std::vector<std::string> keys_of(const registry_snapshot& snap) {
  std::vector<std::string> result;
  for (const auto& m : snap.models)
    result.push_back(m.key);
  return result;
}

class eviction_test : public registry_test {
protected:
  /// Loads `key` (a counted model of `bytes`) and drops the handle.
  void load_idle(const std::string& key, uint64_t bytes = 1000) {
    auto h = sut->get_or_load(key, counting_loader(runs, bytes));
    ASSERT_TRUE(h) << key << ": " << describe(h.error());
  }

  std::shared_ptr<std::atomic<int>> runs = std::make_shared<std::atomic<int>>(0);
};

TEST_F(eviction_test, BudgetEvictsTheLeastRecentlyUsedIdleModel) {
  rcfg.max_memory_bytes = 3000;
  start();
  auto log = subscribe();
  load_idle("a");
  load_idle("b");
  load_idle("c");
  std::this_thread::sleep_for(2ms);
  load_idle("a"); // a hit: a is now the most recently used
  load_idle("d");
  auto snap = snapshot();
  EXPECT_EQ(keys_of(snap), (std::vector<std::string>{"a", "c", "d"}));
  EXPECT_EQ(snap.totals.evictions_budget, 1u);
  EXPECT_EQ(snap.totals.bytes_in_use, 3000u);
  load_idle("e");
  EXPECT_EQ(keys_of(snapshot()), (std::vector<std::string>{"a", "d", "e"}));
  EXPECT_TRUE(eventually([&] { return log->size() >= 10; }));
  auto t = log->transitions();
  EXPECT_NE(std::find(t.begin(), t.end(), std::make_pair(std::string{"b"}, model_state::evicted)),
            t.end());
}

TEST_F(eviction_test, LiveHandlesBlockEvictionAndAdmissionFailsWithOutOfMemory) {
  rcfg.max_memory_bytes = 2500;
  auto& reg = start();
  auto a = reg.get_or_load("a", counting_loader(runs));
  auto b = reg.get_or_load("b", counting_loader(runs));
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  auto c = reg.get_or_load("c", counting_loader(runs));
  ASSERT_FALSE(c);
  EXPECT_TRUE(is(c.error(), errc::out_of_memory));
  EXPECT_EQ(describe(c.error()),
            "out_of_memory: model needs 1000 bytes, 500 bytes available of a budget of 2500 "
            "bytes (the rest is held by models in use or pinned)");
  EXPECT_EQ(keys_of(snapshot()), (std::vector<std::string>{"a", "b"}));
  // Once a handle goes, its model makes room.
  a = caf::error{};
  auto c2 = reg.get_or_load("c", counting_loader(runs));
  ASSERT_TRUE(c2) << describe(c2.error());
  EXPECT_EQ(keys_of(snapshot()), (std::vector<std::string>{"b", "c"}));
}

TEST_F(eviction_test, ModelLargerThanTheWholeBudgetIsRefused) {
  rcfg.max_memory_bytes = 1000;
  auto& reg = start();
  auto big = reg.get_or_load("big", counting_loader(runs, 5000));
  ASSERT_FALSE(big);
  EXPECT_TRUE(is(big.error(), errc::out_of_memory));
  EXPECT_NE(describe(big.error()).find("needs 5000 bytes, 1000 bytes available"),
            std::string::npos);
  EXPECT_EQ(snapshot().totals.bytes_in_use, 0u);
}

TEST_F(eviction_test, IdleModelsExpireAfterTheTtl) {
  rcfg.idle_ttl = 30ms;
  auto& reg = start();
  auto log = subscribe();
  auto held = reg.get_or_load("held", counting_loader(runs));
  ASSERT_TRUE(held);
  load_idle("idle");
  EXPECT_TRUE(eventually([&] { return snapshot().models.size() == 1; }));
  std::this_thread::sleep_for(100ms); // well past the TTL: a handle keeps "held"
  auto snap = snapshot();
  EXPECT_EQ(keys_of(snap), std::vector<std::string>{"held"});
  EXPECT_EQ(snap.totals.evictions_ttl, 1u);
  held = caf::error{};
  EXPECT_TRUE(eventually([&] { return snapshot().models.empty(); }));
  EXPECT_TRUE(eventually([&] { return log->size() >= 6; }));
  auto t = log->transitions();
  EXPECT_EQ(t.back(), std::make_pair(std::string{"held"}, model_state::evicted));
  std::vector<model_state> idle;
  for (const auto& [key, state] : t)
    if (key == "idle")
      idle.push_back(state);
  EXPECT_EQ(idle, (std::vector<model_state>{model_state::loading, model_state::ready,
                                            model_state::evicted}));
}

TEST_F(eviction_test, EvictExpiredReportsCountAndFreedBytes) {
  rcfg.idle_ttl = 20ms;
  rcfg.ttl_sweep = false;
  auto& reg = start();
  load_idle("a", 1000);
  load_idle("b", 234);
  auto held = reg.get_or_load("c", counting_loader(runs, 99));
  std::this_thread::sleep_for(40ms);
  auto r = reg.evict_expired();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->count, 2u);
  EXPECT_EQ(r->freed_bytes, 1234u);
  EXPECT_EQ(keys_of(snapshot()), std::vector<std::string>{"c"});
}

TEST_F(eviction_test, RequestsInFlightBlockUnloadAndEviction) {
  rcfg.idle_ttl = 10ms;
  auto& reg = start();
  auto hold = std::make_shared<gate>();
  auto h = reg.get_or_load("m", [hold]() -> caf::expected<model_ptr> {
    auto m = std::make_shared<counted_model>(1000, model_capabilities{false, true, false});
    m->hold_on(hold);
    return m;
  });
  ASSERT_TRUE(h);
  auto x = tensor::from_values<float>({1.f});
  auto pending = std::async(std::launch::async, [&] { return reg.infer("m", {{"x", *x}}); });
  ASSERT_TRUE(eventually([&] {
    auto s = snapshot();
    return !s.models.empty() && s.models[0].in_flight == 1;
  }));
  // No handles left: only the request holds the model. (Dropped only now:
  // on a busy machine the TTL could evict the idle model before the request
  // above reached it.)
  h = caf::error{};
  std::this_thread::sleep_for(50ms); // time passes beyond the TTL: what is tested
  auto busy = reg.unload("m");
  ASSERT_FALSE(busy);
  EXPECT_TRUE(is(busy.error(), errc::busy));
  EXPECT_NE(describe(busy.error()).find("1 requests in flight"), std::string::npos);
  EXPECT_EQ(snapshot().models.size(), 1u);
  hold->open();
  EXPECT_TRUE(pending.get());
  EXPECT_TRUE(eventually([&] { return snapshot().models.empty(); }));
}

TEST_F(eviction_test, PinnedModelsSurviveBudgetAndTtl) {
  rcfg.max_memory_bytes = 2000;
  rcfg.idle_ttl = 20ms;
  auto& reg = start();
  load_idle("pinned");
  ASSERT_TRUE(reg.pin("pinned"));
  load_idle("other");
  load_idle("newest"); // over budget: "pinned" is LRU but pinned
  EXPECT_TRUE(eventually([&] { return keys_of(snapshot()) == std::vector<std::string>{"pinned"}; }));
  std::this_thread::sleep_for(60ms);
  EXPECT_EQ(keys_of(snapshot()), std::vector<std::string>{"pinned"});
  auto unknown = reg.pin("nope");
  ASSERT_FALSE(unknown);
  EXPECT_TRUE(is(unknown.error(), errc::model_not_found));
  ASSERT_TRUE(reg.pin("pinned", false));
  EXPECT_TRUE(eventually([&] { return snapshot().models.empty(); }));
}

TEST_F(eviction_test, MaxModelsEvictsLruOrRefusesWhenAllAreInUse) {
  rcfg.max_models = 1;
  auto& reg = start();
  load_idle("a");
  auto b = reg.get_or_load("b", counting_loader(runs));
  ASSERT_TRUE(b);
  EXPECT_EQ(keys_of(snapshot()), std::vector<std::string>{"b"});
  EXPECT_EQ(snapshot().totals.evictions_max_models, 1u);
  auto c = reg.get_or_load("c", counting_loader(runs));
  ASSERT_FALSE(c);
  EXPECT_TRUE(is(c.error(), errc::overloaded)) << describe(c.error());
}

TEST_F(eviction_test, UnloadRefusesModelsInUseAndUnknownKeys) {
  auto& reg = start();
  auto h = reg.get_or_load("m", counting_loader(runs));
  ASSERT_TRUE(h);
  auto busy = reg.unload("m");
  ASSERT_FALSE(busy);
  EXPECT_TRUE(is(busy.error(), errc::busy));
  EXPECT_NE(describe(busy.error()).find("1 handles"), std::string::npos);
  h = caf::error{};
  EXPECT_TRUE(reg.unload("m"));
  auto unknown = reg.unload("m");
  ASSERT_FALSE(unknown);
  EXPECT_TRUE(is(unknown.error(), errc::model_not_found));
  EXPECT_EQ(snapshot().totals.unloads, 1u);
}

TEST_F(eviction_test, FastPathHitsNeverReceiveAModelBeingEvicted) {
  // Many threads take and drop handles while the TTL sweep runs every few
  // milliseconds: every handle they get must be usable.
  rcfg.idle_ttl = 1ms;
  auto& reg = start();
  auto x = tensor::from_values<float>({1.f});
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      for (int i = 0; i < 200; ++i) {
        auto h = reg.get_or_load("hot", counting_loader(runs));
        if (!h || !h->valid() || !h->infer({{"x", *x}}))
          ++failures;
      }
    });
  for (auto& t : threads)
    t.join();
  EXPECT_EQ(failures.load(), 0);
  auto snap = snapshot();
  EXPECT_EQ(snap.totals.hits + snap.totals.misses + snap.totals.coalesced, 800u);
  EXPECT_EQ(static_cast<uint64_t>(runs->load()), snap.totals.misses);
}

TEST_F(eviction_test, TicketsWithoutAHandleNeverReachAModelBeingEvicted) {
  // The HTTP and gRPC doors' path: a loaded model from the supervisor's
  // table, a ticket instead of a handle, the request straight to the model
  // actor, while the TTL sweep evicts the model whenever it is idle.
  rcfg.idle_ttl = 1ms;
  auto table = make_ready_table();
  auto reg = spawn_registry(sys, rcfg, table);
  auto x = tensor::from_values<float>({1.f});
  std::atomic<int> failures{0}, on_ticket{0}, loads_asked{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t)
    threads.emplace_back([&] {
      caf::scoped_actor self{sys};
      for (int i = 0; i < 200; ++i) {
        request_ticket ticket;
        std::optional<model_actor> actor;
        if (auto block = table->find("hot"))
          if ((ticket = detail::try_ticket(block)))
            actor = block->actor;
        if (!ticket) {
          ++loads_asked;
          self->request(reg, 10s, get_or_load_atom::value, std::string{"hot"},
                        counting_loader(runs))
            .receive([](model_handle&) {}, [&](caf::error&) { ++failures; });
          continue;
        }
        ++on_ticket;
        std::promise<caf::expected<tensor_map>> answer;
        auto sink = std::make_shared<reply_sink>(
          [&answer](caf::expected<tensor_map> out) { answer.set_value(std::move(out)); });
        caf::anon_send(*actor, infer_request{{{"x", *x}}, std::move(ticket), nullptr, sink, 0});
        sink.reset();
        if (!answer.get_future().get())
          ++failures;
      }
    });
  for (auto& t : threads)
    t.join();
  caf::anon_send_exit(reg, caf::exit_reason::user_shutdown);
  EXPECT_EQ(failures.load(), 0);
  EXPECT_GT(on_ticket.load(), 0);
  EXPECT_GT(loads_asked.load(), 0);
}

TEST(ticket_test, AClosedBlockGivesNoTicketAndATicketKeepsItOpen) {
  auto block = std::make_shared<detail::entry_block>("k", 1, model_actor{}, caf::weak_actor_ptr{},
                                                     "", 0, nullptr, 0);
  {
    auto ticket = detail::try_ticket(block);
    ASSERT_TRUE(ticket);
    EXPECT_EQ(block->in_flight.load(), 1);
    EXPECT_FALSE(block->try_close()); // a request is on it
  }
  EXPECT_EQ(block->in_flight.load(), 0);
  ASSERT_TRUE(block->try_close());
  EXPECT_FALSE(detail::try_ticket(block));
  EXPECT_EQ(block->in_flight.load(), 0);
}

} // namespace
} // namespace modelreg::test

// The registry supervisor: single-flight loads, one actor per model, leases,
// eviction and status. See registry_actor.hpp for the state machine.
#include "modelreg/actors/detail/supervisor.hpp"

#include <algorithm>
#include <deque>
#include <mutex>
#include <unordered_set>
#include <vector>

#include <caf/actor_cast.hpp>
#include <caf/actor_clock.hpp>
#include <caf/actor_system.hpp>
#include <caf/blocking_actor.hpp>
#include <caf/scheduler/abstract_coordinator.hpp>
#include <caf/exit_reason.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>
#include <caf/typed_response_promise.hpp>

#include "modelreg/actors/detail/entry_block.hpp"
#include "modelreg/actors/detail/lease.hpp"
#include "modelreg/backend/instances.hpp"
#include "modelreg/cache/eviction.hpp"
#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg::detail {

// -- registry_shared ----------------------------------------------------------

std::shared_ptr<entry_block> registry_shared::find(const std::string& key) const {
  std::shared_lock guard{mutex};
  auto i = ready.find(key);
  return i == ready.end() ? nullptr : i->second;
}

void registry_shared::publish(const std::shared_ptr<entry_block>& block) {
  std::unique_lock guard{mutex};
  ready[block->key] = block;
}

void registry_shared::withdraw(const std::string& key) {
  std::unique_lock guard{mutex};
  ready.erase(key);
}

void registry_shared::clear() {
  std::unique_lock guard{mutex};
  ready.clear();
}

namespace {

int64_t wall_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

std::string format_bytes(uint64_t bytes) {
  return std::to_string(bytes) + " bytes";
}

/// One key the supervisor knows about: loading, or ready.
struct entry {
  uint64_t generation = 0;
  model_state state = model_state::loading;
  loader_fn loader;              // until the load starts
  bool load_started = false;
  int64_t load_started_ns = 0;
  bool pinned = false;
  entry_ptr block;               // when ready
  model_ptr forwarded;           // a model served by an actor elsewhere (a cluster peer)
  std::string holder;            // where that model runs
  std::vector<caf::typed_response_promise<model_handle>> waiters;
  std::vector<std::pair<caf::typed_response_promise<tensor_map>, tensor_map>> parked_infers;
};

struct supervisor_state {
  static inline const char* name = "modelreg.registry";

  registry_config cfg;
  std::shared_ptr<registry_shared> shared;
  std::shared_ptr<spdlog::logger> log = log::get("modelreg.registry");
  std::unordered_map<std::string, entry> entries;
  std::unordered_map<caf::actor_addr, std::string> key_of_actor;
  std::deque<std::pair<std::string, uint64_t>> queued_loads; // (key, generation)
  size_t active_loads = 0;
  /// Loads that timed out while their loader still runs: their slot was
  /// given back, their result will be disposed of when it comes.
  std::unordered_set<uint64_t> abandoned_loads; // generations
  uint64_t next_generation = 1;
  uint64_t next_seq = 1;
  registry_totals totals;
  std::vector<status_listener> subscribers;
  bool tick_armed = false;
  bool snapshot_armed = false;
  caf::actor_clock::time_point next_snapshot; // fixed-rate schedule
};

using supervisor_ptr = supervisor_actor::stateful_pointer<supervisor_state>;

// -- status -------------------------------------------------------------------

void publish_event(supervisor_ptr self, const std::string& key, model_state state,
                   uint64_t generation, uint64_t bytes, std::string detail) {
  auto& st = self->state;
  status_event ev{st.next_seq++, key, state, generation, bytes, wall_now_ns(), std::move(detail)};
  st.log->info("{} #{} -> {}{}{}", key, generation, to_string(state),
               ev.detail.empty() ? "" : ": ", ev.detail);
  for (const auto& sub : st.subscribers)
    self->send(sub, status_atom::value, ev);
}

model_status status_of(const std::string& key, const entry& e, int64_t now) {
  model_status s;
  s.key = key;
  s.state = e.state;
  s.generation = e.generation;
  s.pinned = e.pinned;
  s.waiters = e.waiters.size() + e.parked_infers.size();
  s.holder = e.holder;
  if (auto b = e.block) {
    s.description = b->description;
    s.handles = static_cast<uint64_t>(std::max<int64_t>(b->handles.load(), 0));
    s.in_flight = static_cast<uint64_t>(std::max<int64_t>(b->in_flight.load(), 0));
    s.memory_bytes = b->memory_bytes;
    s.load_time_us = static_cast<uint64_t>(b->load_time_us);
    s.requests = b->stats->requests.load(std::memory_order_relaxed);
    s.errors = b->stats->errors.load(std::memory_order_relaxed);
    s.batches = b->stats->batches.load(std::memory_order_relaxed);
    s.abandoned = b->stats->abandoned.load(std::memory_order_relaxed);
    s.max_instances = b->stats->max_instances;
    s.instances = b->stats->instances.load(std::memory_order_relaxed);
    s.instances_busy = b->stats->instances_busy.load(std::memory_order_relaxed);
    s.instance_restarts = b->stats->instance_restarts.load(std::memory_order_relaxed);
    s.sessions = b->stats->sessions.load(std::memory_order_relaxed);
    s.sessions_expired = b->stats->sessions_expired.load(std::memory_order_relaxed);
    if (const auto& set = b->stats->instances_of) {
      s.zygote_pid = set->zygote_pid();
      for (const auto& p : set->processes())
        s.processes.push_back({p.pid, p.private_bytes});
    }
    s.latency_p50_us = b->stats->latency.quantile(0.50) / 1000;
    s.latency_p99_us = b->stats->latency.quantile(0.99) / 1000;
    s.idle_ms = static_cast<uint64_t>(std::max<int64_t>(now - b->last_used_ns.load(), 0)) / 1000000;
  }
  return s;
}

registry_snapshot make_snapshot(supervisor_ptr self) {
  auto& st = self->state;
  registry_snapshot snap;
  snap.timestamp_ns = wall_now_ns();
  auto now = steady_now_ns();
  for (const auto& [key, e] : st.entries)
    snap.models.push_back(status_of(key, e, now));
  std::sort(snap.models.begin(), snap.models.end(),
            [](const auto& a, const auto& b) { return a.key < b.key; });
  snap.totals = st.totals;
  snap.totals.hits += st.shared->fast_hits.load(std::memory_order_relaxed);
  snap.totals.loads_in_progress = st.active_loads + st.queued_loads.size();
  snap.totals.max_memory_bytes = st.cfg.max_memory_bytes;
  return snap;
}

// -- timers -------------------------------------------------------------------

// Two independent timers: the TTL sweep, and the snapshots. A snapshot never
// waits for a sweep tick, so subscribers get one every `snapshot_interval`
// whatever the TTL.

caf::timespan tick_period(const registry_config& cfg) {
  using namespace std::chrono;
  return std::clamp(cfg.idle_ttl / 4, milliseconds{5}, milliseconds{1000});
}

/// Keeps one sweep tick pending while models may expire. An idle registry
/// sleeps.
void arm_tick(supervisor_ptr self) {
  auto& st = self->state;
  bool watching = st.cfg.ttl_sweep && st.cfg.idle_ttl.count() > 0 && !st.entries.empty();
  if (st.tick_armed || !watching)
    return;
  st.tick_armed = true;
  self->delayed_send(self, tick_period(st.cfg), tick_atom::value);
}

/// Keeps the next snapshot pending while anyone subscribes. The schedule is
/// fixed-rate (due times are multiples of the interval from the first), so a
/// late wake-up does not push every later snapshot back; one missed entirely
/// is skipped rather than sent twice.
void arm_snapshot(supervisor_ptr self) {
  auto& st = self->state;
  if (st.snapshot_armed || st.subscribers.empty())
    return;
  auto now = self->clock().now();
  if (st.next_snapshot <= now)
    st.next_snapshot = now + st.cfg.snapshot_interval;
  st.snapshot_armed = true;
  self->delayed_send(self, st.next_snapshot - now, snapshot_atom::value);
}

// -- leases ------------------------------------------------------------------

/// A new lease on a ready entry, or nothing if the block is closing.
std::optional<model_handle> acquire(const entry_ptr& block) {
  if (!block->try_acquire())
    return std::nullopt;
  return model_handle{std::make_shared<lease>(block)};
}

// -- eviction -----------------------------------------------------------------

std::vector<eviction_candidate> candidates(supervisor_ptr self, const std::string& except = {}) {
  std::vector<eviction_candidate> result;
  for (const auto& [key, e] : self->state.entries) {
    if (e.state != model_state::ready || key == except)
      continue;
    const auto& b = *e.block;
    bool idle = b.handles.load() == 0 && b.in_flight.load() == 0;
    bool spare = e.holder.empty() && self->state.cfg.spare_copy && self->state.cfg.spare_copy(key);
    result.push_back({key, b.memory_bytes, b.last_used_ns.load(), idle && !e.pinned, spare});
  }
  return result;
}

/// Removes a ready entry whose block is already closed, stops its actor.
void drop_ready(supervisor_ptr self, std::unordered_map<std::string, entry>::iterator i,
                model_state state, const std::string& detail) {
  auto& st = self->state;
  auto key = i->first;
  auto block = i->second.block;
  auto generation = i->second.generation;
  block->retire();
  st.shared->withdraw(key);
  st.key_of_actor.erase(block->actor.address());
  st.totals.bytes_in_use -= std::min(st.totals.bytes_in_use, block->memory_bytes);
  st.totals.models_loaded -= std::min<uint64_t>(st.totals.models_loaded, 1);
  st.entries.erase(i);
  self->send_exit(block->actor, caf::exit_reason::user_shutdown);
  publish_event(self, key, state, generation, block->memory_bytes, detail);
}

/// Evicts `key` if it is still idle; returns the bytes freed (0 if not).
uint64_t try_evict(supervisor_ptr self, const std::string& key, eviction_reason reason) {
  auto& st = self->state;
  auto i = st.entries.find(key);
  if (i == st.entries.end() || i->second.state != model_state::ready)
    return 0;
  if (reason != eviction_reason::manual && i->second.pinned)
    return 0;
  if (!i->second.block->try_close())
    return 0;
  auto bytes = i->second.block->memory_bytes;
  st.cfg.metrics->model(key)->evictions[static_cast<size_t>(reason)].add();
  switch (reason) {
    case eviction_reason::ttl: ++st.totals.evictions_ttl; break;
    case eviction_reason::budget: ++st.totals.evictions_budget; break;
    case eviction_reason::max_models: ++st.totals.evictions_max_models; break;
    case eviction_reason::manual: ++st.totals.unloads; break;
    case eviction_reason::crashed: ++st.totals.crashes; break;
  }
  drop_ready(self, i, reason == eviction_reason::manual ? model_state::unloaded
                                                        : model_state::evicted,
             to_string(reason));
  return bytes;
}

eviction_report evict_expired(supervisor_ptr self) {
  eviction_report report;
  auto& st = self->state;
  if (st.cfg.idle_ttl.count() <= 0)
    return report;
  auto ttl_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(st.cfg.idle_ttl).count();
  for (const auto& key : select_expired(candidates(self), steady_now_ns(), ttl_ns)) {
    auto freed = try_evict(self, key, eviction_reason::ttl);
    if (st.entries.count(key) == 0) {
      ++report.count;
      report.freed_bytes += freed;
    }
  }
  return report;
}

// -- loading ------------------------------------------------------------------

void start_load(supervisor_ptr self, const std::string& key, entry& e);

void pump_queue(supervisor_ptr self) {
  auto& st = self->state;
  while (!st.queued_loads.empty() &&
         (st.cfg.max_concurrent_loads == 0 || st.active_loads < st.cfg.max_concurrent_loads)) {
    auto [key, generation] = st.queued_loads.front();
    st.queued_loads.pop_front();
    auto i = st.entries.find(key);
    if (i != st.entries.end() && i->second.generation == generation && !i->second.load_started)
      start_load(self, key, i->second);
  }
}

void begin_load(supervisor_ptr self, const std::string& key, loader_fn loader,
                caf::typed_response_promise<model_handle> rp) {
  auto& st = self->state;
  ++st.totals.misses;
  auto& e = st.entries[key];
  e = entry{};
  e.generation = st.next_generation++;
  e.loader = std::move(loader);
  e.waiters.push_back(std::move(rp));
  publish_event(self, key, model_state::loading, e.generation, 0, {});
  st.queued_loads.emplace_back(key, e.generation);
  // The timeout counts from the request, time queued behind
  // max_concurrent_loads included.
  self->delayed_send(self, st.cfg.load_timeout, load_timeout_atom::value, key, e.generation);
  pump_queue(self);
  arm_tick(self);
}

void start_load(supervisor_ptr self, const std::string& key, entry& e) {
  auto& st = self->state;
  ++st.active_loads;
  e.load_started = true;
  e.load_started_ns = steady_now_ns();
  auto loader = std::move(e.loader);
  auto generation = e.generation;
  auto sup = caf::actor_cast<supervisor_actor>(self);
  // A blocking actor runs on its own thread and ends when the function
  // returns: the loader may block as long as it likes. (Arguments are passed
  // to spawn rather than captured: CAF 0.17 dereferences a null tuple for
  // functions spawned without arguments.)
  auto run = [](caf::blocking_actor* loader_self, loader_fn loader, std::string key,
                uint64_t generation, supervisor_actor sup) {
    load_outcome outcome;
    auto started = steady_now_ns();
    try {
      auto result = loader();
      if (!result)
        outcome.error = as_modelreg_error(std::move(result.error()), errc::load_failed, "loader");
      else if (!*result)
        outcome.error = make_error(errc::load_failed, "loader returned no model");
      else
        outcome.model = std::move(*result);
    } catch (const std::exception& ex) {
      outcome.error = make_error(errc::load_failed, std::string{"loader threw: "} + ex.what());
    } catch (...) {
      outcome.error = make_error(errc::load_failed, "loader threw a non-standard exception");
    }
    outcome.duration_ns = steady_now_ns() - started;
    loader_self->send(sup, loaded_atom::value, key, generation, std::move(outcome));
  };
  self->system().spawn(run, std::move(loader), key, generation, sup);
}

/// Ends a load in failure: every waiter gets `err`, the key is absent again.
void fail_load(supervisor_ptr self, std::unordered_map<std::string, entry>::iterator i,
               const caf::error& err) {
  auto& st = self->state;
  auto key = i->first;
  auto e = std::move(i->second);
  st.entries.erase(i);
  st.cfg.metrics->model(key)->load_failures.add();
  for (auto& rp : e.waiters)
    rp.deliver(err);
  for (auto& [rp, in] : e.parked_infers)
    rp.deliver(err);
  publish_event(self, key, model_state::failed, e.generation, 0, describe(err));
}

/// The error for a model that cannot be admitted, naming needed and available.
caf::error admission_error(const registry_config& cfg, const admission_plan& plan,
                           size_t models_loaded) {
  if (cfg.max_memory_bytes != 0 && plan.needed > plan.available)
    return make_error(errc::out_of_memory,
                      "model needs " + format_bytes(plan.needed) + ", " +
                        format_bytes(plan.available) + " available of a budget of " +
                        format_bytes(cfg.max_memory_bytes) +
                        " (the rest is held by models in use or pinned)");
  return make_error(errc::overloaded, "max_models=" + std::to_string(cfg.max_models) +
                                        " reached with " + std::to_string(models_loaded) +
                                        " models in use or pinned");
}

void finish_load(supervisor_ptr self, std::unordered_map<std::string, entry>::iterator i,
                 load_outcome outcome) {
  auto& st = self->state;
  auto key = i->first;
  auto bytes = outcome.model->memory_bytes();
  auto plan = plan_admission(candidates(self, key), st.totals.bytes_in_use,
                             st.cfg.max_memory_bytes, st.cfg.max_models, bytes);
  if (!plan.fits) {
    ++st.totals.load_failures;
    auto err = admission_error(st.cfg, plan, st.totals.models_loaded);
    st.log->warn("{}: not admitted: {}", key, describe(err));
    outcome.model.reset();
    fail_load(self, i, err);
    return;
  }
  bool budget_bound = st.cfg.max_memory_bytes != 0 &&
                      st.totals.bytes_in_use + bytes > st.cfg.max_memory_bytes;
  for (const auto& victim : plan.victims)
    try_evict(self, victim,
              budget_bound ? eviction_reason::budget : eviction_reason::max_models);
  // try_evict may have rehashed the map: look the entry up again.
  i = st.entries.find(key);
  auto& ready = i->second;
  auto stats = std::make_shared<model_stats>();
  stats->metrics = st.cfg.metrics->model(key);
  bool forwarded = static_cast<bool>(outcome.model->served_by());
  if (!forwarded) { // a forwarded model was loaded (and counted) by its holder
    stats->metrics->loads.add();
    stats->metrics->load_seconds.observe(static_cast<double>(outcome.duration_ns) * 1e-9);
  }
  auto description = outcome.model->describe();
  auto lanes = st.cfg.inference_lanes != 0 ? st.cfg.inference_lanes
                                           : self->system().scheduler().num_workers();
  // A quick, thread-safe model that runs as one object (not instances, not
  // batched, not streamed): a transport thread may call it itself.
  model_ptr quick;
  auto caps = outcome.model->capabilities();
  if (caps.quick && caps.thread_safe && !caps.blocking && !caps.batchable && !caps.streaming &&
      !forwarded && !std::dynamic_pointer_cast<instance_set>(outcome.model))
    quick = outcome.model;
  model_actor actor;
  if (auto elsewhere = outcome.model->served_by()) {
    // A model another node runs: its actor takes the requests; the model
    // object (which holds the lease there) lives as long as the entry.
    actor = caf::actor_cast<model_actor>(elsewhere);
    ready.holder = outcome.model->location();
    ready.forwarded = std::move(outcome.model);
  } else {
    actor = spawn_model_actor(self->system(), std::move(outcome.model), stats,
                              model_actor_options{lanes, st.cfg.max_batch, st.cfg.batch_timeout,
                                                  st.cfg.max_queue, st.cfg.session_idle_timeout});
  }
  self->monitor(actor);
  st.key_of_actor[actor.address()] = key;
  auto load_us = outcome.duration_ns / 1000;
  ready.block = std::make_shared<entry_block>(key, ready.generation, actor,
                                              caf::actor_cast<caf::weak_actor_ptr>(self->ctrl()),
                                              description, bytes, stats, load_us, 0,
                                              std::move(quick));
  ready.state = model_state::ready;
  if (!forwarded)
    ++st.totals.loads;
  ++st.totals.models_loaded;
  st.totals.bytes_in_use += bytes;
  st.shared->publish(ready.block);
  publish_event(self, key, model_state::ready, ready.generation, bytes,
                description + ", loaded in " + std::to_string(load_us / 1000) + " ms");
  for (auto& rp : ready.waiters) {
    if (auto h = acquire(ready.block))
      rp.deliver(std::move(*h));
    else
      rp.deliver(make_error(errc::model_crashed, key + " closed while loading"));
  }
  ready.waiters.clear();
  for (auto& [rp, in] : ready.parked_infers)
    rp.delegate(actor, infer_request{std::move(in), make_ticket(ready.block)});
  ready.parked_infers.clear();
  arm_tick(self);
}

void on_loaded(supervisor_ptr self, const std::string& key, uint64_t generation,
               load_outcome& outcome) {
  auto& st = self->state;
  if (st.abandoned_loads.erase(generation) == 0) {
    st.active_loads -= std::min<size_t>(st.active_loads, 1);
    pump_queue(self);
  }
  auto i = st.entries.find(key);
  if (i == st.entries.end() || i->second.generation != generation ||
      i->second.state != model_state::loading) {
    // The load timed out (or the registry moved on): dispose of the model
    // here, on the supervisor, so nothing leaks.
    ++st.totals.late_results_disposed;
    st.log->warn("{} #{}: late load result disposed ({})", key, generation,
                 outcome.model ? "model destroyed" : describe(outcome.error));
    outcome.model.reset();
    return;
  }
  if (!outcome.model) {
    ++st.totals.load_failures;
    st.log->warn("{} #{}: load failed: {}", key, generation, describe(outcome.error));
    fail_load(self, i, outcome.error);
    return;
  }
  finish_load(self, i, std::move(outcome));
}

// -- shutdown -----------------------------------------------------------------

/// Stops a model actor as soon as its running call returns: the exit goes
/// ahead of queued requests (each still answered, `model_crashed`), so a
/// stopping node does not first run every queued request.
void stop_now(supervisor_ptr self, const model_actor& actor) {
  auto ptr = caf::actor_cast<caf::strong_actor_ptr>(actor);
  if (!ptr)
    return;
  ptr->enqueue(self->ctrl(), caf::make_message_id(caf::message_priority::high),
               caf::make_message(caf::exit_msg{self->address(), caf::exit_reason::user_shutdown}),
               self->context());
}

void shut_down(supervisor_ptr self, const caf::error& reason) {
  auto& st = self->state;
  auto err = make_error(errc::shutting_down, "registry is shutting down");
  for (auto& [key, e] : st.entries) {
    for (auto& rp : e.waiters)
      rp.deliver(err);
    for (auto& [rp, in] : e.parked_infers)
      rp.deliver(err);
    if (e.block) {
      e.block->retire();
      stop_now(self, e.block->actor);
    }
  }
  st.entries.clear();
  st.key_of_actor.clear();
  st.shared->clear();
  st.subscribers.clear();
  self->quit(reason);
}

// -- the behavior -------------------------------------------------------------

caf::result<model_handle> get_or_load(supervisor_ptr self, const std::string& key,
                                      loader_fn loader) {
  auto& st = self->state;
  if (auto i = st.entries.find(key); i != st.entries.end()) {
    auto& e = i->second;
    if (e.state == model_state::ready) {
      // Only the supervisor closes blocks, and never across messages, so a
      // ready entry's block is open here.
      auto h = acquire(e.block);
      if (!h)
        return make_error(errc::model_crashed, "'" + key + "' is closing");
      ++st.totals.hits;
      return std::move(*h);
    } else {
      ++st.totals.coalesced;
      st.cfg.metrics->model(key)->coalesced.add();
      auto rp = self->make_response_promise<model_handle>();
      e.waiters.push_back(rp);
      return rp;
    }
  }
  auto rp = self->make_response_promise<model_handle>();
  begin_load(self, key, std::move(loader), rp);
  return rp;
}

supervisor_actor::behavior_type supervisor(supervisor_ptr self, registry_config cfg,
                                           std::shared_ptr<registry_shared> shared) {
  auto& st = self->state;
  if (!cfg.backends)
    cfg.backends = backend_registry::with_builtins();
  st.cfg = std::move(cfg);
  if (!st.cfg.metrics)
    st.cfg.metrics = std::make_shared<node_metrics>();
  st.shared = std::move(shared);
  st.totals.max_memory_bytes = st.cfg.max_memory_bytes;
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    if (auto k = st.key_of_actor.find(dm.source); k != st.key_of_actor.end()) {
      auto key = k->second;
      st.key_of_actor.erase(k);
      auto i = st.entries.find(key);
      if (i == st.entries.end() || !i->second.block)
        return;
      if (!i->second.holder.empty()) {
        // A forwarded model: the node that runs it left the cluster.
        st.log->warn("{}: its holder {} is gone: {}", key, i->second.holder,
                     caf::to_string(dm.reason));
        drop_ready(self, i, model_state::failed,
                   "its holder " + i->second.holder + " is gone; next request places it again");
        return;
      }
      ++st.totals.crashes;
      st.cfg.metrics->model(key)->evictions[static_cast<size_t>(eviction_reason::crashed)].add();
      st.log->error("{}: model actor died: {}", key, caf::to_string(dm.reason));
      drop_ready(self, i, model_state::failed,
                 "model actor died (" + caf::to_string(dm.reason) + "); next request reloads");
      return;
    }
    auto& subs = st.subscribers;
    subs.erase(std::remove_if(subs.begin(), subs.end(),
                              [&](const auto& s) { return s.address() == dm.source; }),
               subs.end());
  });
  self->set_exit_handler([self](caf::exit_msg& em) { shut_down(self, em.reason); });
  return {
    [self](get_or_load_atom, const std::string& key, loader_fn& loader) {
      return get_or_load(self, key, std::move(loader));
    },
    [self](get_or_load_atom, const std::string& key,
           const model_spec& spec) -> caf::result<model_handle> {
      auto& st = self->state;
      auto i = st.entries.find(key);
      if (i == st.entries.end() || i->second.state != model_state::ready) {
        // Only a miss needs the backend; hits and coalesced calls skip it.
        const model_spec* resolved = &spec;
        if (spec.backend.empty()) {
          resolved = st.cfg.catalog ? st.cfg.catalog->find(key) : nullptr;
          if (resolved == nullptr)
            return make_error(errc::model_not_found, "'" + key + "' is not in the catalog");
        }
        auto loader = st.cfg.placement ? st.cfg.placement(key, spec, *resolved)
                                       : st.cfg.backends->loader_for(*resolved);
        if (!loader)
          return std::move(loader.error());
        return get_or_load(self, key, std::move(*loader));
      }
      return get_or_load(self, key, {});
    },
    [self](infer_atom, const std::string& key,
           tensor_map& inputs) -> caf::result<tensor_map> {
      auto& st = self->state;
      auto i = st.entries.find(key);
      if (i == st.entries.end())
        return make_error(errc::model_not_found, "no model loaded under '" + key + "'");
      auto& e = i->second;
      if (e.state == model_state::loading) {
        auto rp = self->make_response_promise<tensor_map>();
        e.parked_infers.emplace_back(rp, std::move(inputs));
        return rp;
      }
      return self->delegate(e.block->actor, infer_request{std::move(inputs), make_ticket(e.block)});
    },
    [](release_atom, const model_handle& h) { return h.release(); },
    [self](unload_atom, const std::string& key) -> caf::result<eviction_report> {
      auto& st = self->state;
      auto i = st.entries.find(key);
      if (i == st.entries.end())
        return make_error(errc::model_not_found, "no model loaded under '" + key + "'");
      if (i->second.state != model_state::ready)
        return make_error(errc::busy, "'" + key + "' is still loading");
      auto block = i->second.block;
      auto freed = try_evict(self, key, eviction_reason::manual);
      if (st.entries.count(key) > 0)
        return make_error(errc::busy, "'" + key + "' has " +
                                        std::to_string(block->handles.load()) + " handles and " +
                                        std::to_string(block->in_flight.load()) +
                                        " requests in flight");
      return eviction_report{1, freed};
    },
    [self](pin_atom, const std::string& key, bool pinned) -> caf::result<bool> {
      auto i = self->state.entries.find(key);
      if (i == self->state.entries.end())
        return make_error(errc::model_not_found, "no model loaded under '" + key + "'");
      auto previous = i->second.pinned;
      i->second.pinned = pinned;
      return previous;
    },
    [self](list_atom) { return make_snapshot(self); },
    [self](evict_expired_atom) { return evict_expired(self); },
    [self](subscribe_atom, const status_listener& listener) {
      if (!listener)
        return;
      self->monitor(listener);
      self->state.subscribers.push_back(listener);
      self->send(listener, snapshot_atom::value, make_snapshot(self));
      arm_snapshot(self);
    },
    [self](unsubscribe_atom, const status_listener& listener) {
      auto& subs = self->state.subscribers;
      subs.erase(std::remove(subs.begin(), subs.end(), listener), subs.end());
    },
    [self](shutdown_atom) { shut_down(self, caf::exit_reason::user_shutdown); },
    [self](loaded_atom, const std::string& key, uint64_t generation, load_outcome& outcome) {
      on_loaded(self, key, generation, outcome);
    },
    [self](load_timeout_atom, const std::string& key, uint64_t generation) {
      auto& st = self->state;
      auto i = st.entries.find(key);
      if (i == st.entries.end() || i->second.generation != generation ||
          i->second.state != model_state::loading)
        return;
      ++st.totals.load_timeouts;
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(st.cfg.load_timeout);
      auto started = i->second.load_started;
      fail_load(self, i, make_error(errc::load_timeout, "loading '" + key + "' took longer than " +
                                                          std::to_string(ms.count()) + " ms"));
      if (!started) {
        auto& q = st.queued_loads;
        q.erase(std::remove(q.begin(), q.end(), std::make_pair(key, generation)), q.end());
      } else {
        // The loader thread cannot be stopped; it keeps running, and its
        // result is disposed of when it comes. Its slot goes to the next
        // queued load, so a hung loader cannot stop every later load.
        st.abandoned_loads.insert(generation);
        st.active_loads -= std::min<size_t>(st.active_loads, 1);
        st.log->warn("{} #{}: loader still running after load_timeout; {} such loader(s)", key,
                     generation, st.abandoned_loads.size());
        pump_queue(self);
      }
    },
    [self](handles_zero_atom, const std::string& key, uint64_t) {
      self->state.log->debug("{}: last handle released", key);
      arm_tick(self);
    },
    [self](tick_atom) {
      auto& st = self->state;
      st.tick_armed = false;
      if (st.cfg.ttl_sweep)
        evict_expired(self);
      arm_tick(self);
    },
    [self](snapshot_atom) {
      auto& st = self->state;
      st.snapshot_armed = false;
      if (st.subscribers.empty())
        return;
      auto snap = make_snapshot(self);
      for (const auto& sub : st.subscribers)
        self->send(sub, snapshot_atom::value, snap);
      st.next_snapshot += st.cfg.snapshot_interval;
      arm_snapshot(self);
    },
  };
}

} // namespace

} // namespace modelreg::detail

namespace modelreg {

registry_actor spawn_registry(caf::actor_system& sys, registry_config cfg,
                              std::shared_ptr<detail::registry_shared> shared) {
  if (!shared)
    shared = std::make_shared<detail::registry_shared>();
  return sys.spawn(detail::supervisor, std::move(cfg), std::move(shared));
}

registry_actor spawn_registry(caf::actor_system& sys, registry_config cfg) {
  return spawn_registry(sys, std::move(cfg), nullptr);
}

std::shared_ptr<detail::registry_shared> make_ready_table() {
  return std::make_shared<detail::registry_shared>();
}

} // namespace modelreg

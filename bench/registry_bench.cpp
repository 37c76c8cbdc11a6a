// `modelreg bench registry`: what a hit, an actor round trip, inference and
// single-flight loading cost on this machine, measured side by side in one
// run so the ratios mean something on a noisy machine.
#include "bench/registry_bench.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <nlohmann/json.hpp>

#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"
#include "modelreg/registry.hpp"

namespace modelreg::bench {

namespace {

using clock_type = std::chrono::steady_clock;
using namespace std::chrono_literals;

int64_t ns_since(clock_type::time_point t0) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock_type::now() - t0).count();
}

int64_t percentile(std::vector<int64_t> samples, double q) {
  if (samples.empty())
    return 0;
  auto n = static_cast<size_t>(q * static_cast<double>(samples.size() - 1));
  std::nth_element(samples.begin(), samples.begin() + static_cast<long>(n), samples.end());
  return samples[n];
}

// -- the actor round-trip floor and the actor hit -----------------------------

using ping_atom = caf::atom_constant<caf::atom("benchping")>;

caf::behavior ponger(caf::event_based_actor*) {
  return {[](ping_atom, int x) { return x; }};
}

/// Sends `n` requests one after another from inside an actor (`send_one`
/// issues a request and calls `next` on the reply); records each round trip.
struct sequential_driver_state {
  std::vector<int64_t> samples;
  clock_type::time_point started;
  std::function<void()> step; // lives (and dies) with the actor
};

template <class SendOne>
std::vector<int64_t> run_sequential(caf::actor_system& sys, size_t n, SendOne send_one) {
  auto done = std::make_shared<std::promise<std::vector<int64_t>>>();
  auto result = done->get_future();
  sys.spawn([n, send_one, done](caf::stateful_actor<sequential_driver_state>* self) {
    self->state.samples.reserve(n);
    self->state.step = [self, n, send_one, done] {
      if (self->state.samples.size() == n) {
        done->set_value(std::move(self->state.samples));
        self->quit();
        return;
      }
      self->state.started = clock_type::now();
      send_one(self, [self] {
        self->state.samples.push_back(ns_since(self->state.started));
        self->state.step();
      });
    };
    self->state.step();
  });
  return result.get();
}

// -- throughput with many requests in flight -----------------------------------

struct window_state {
  size_t sent = 0;
  size_t received = 0;
  std::function<void()> on_reply; // lives (and dies) with the actor
};

/// Keeps `window` requests in flight until `total` have been answered;
/// returns requests per second.
template <class SendOne>
double run_windowed(caf::actor_system& sys, size_t total, size_t window, SendOne send_one) {
  auto done = std::make_shared<std::promise<double>>();
  auto result = done->get_future();
  sys.spawn([=](caf::stateful_actor<window_state>* self) {
    auto started = clock_type::now();
    self->state.on_reply = [=] {
      auto& st = self->state;
      if (++st.received == total) {
        auto secs = static_cast<double>(ns_since(started)) / 1e9;
        done->set_value(static_cast<double>(total) / secs);
        self->quit();
        return;
      }
      if (st.sent < total) {
        ++st.sent;
        send_one(self, [self] { self->state.on_reply(); });
      }
    };
    for (size_t i = 0; i < window && i < total; ++i) {
      ++self->state.sent;
      send_one(self, [self] { self->state.on_reply(); });
    }
  });
  return result.get();
}

} // namespace

std::string run_registry_bench(const registry_bench_options& opts) {
  modelreg::system_config cfg;
  cfg.set("scheduler.max-threads", opts.scheduler_threads);
  caf::actor_system sys{cfg};
  nlohmann::json out;
  out["scheduler_threads"] = sys.scheduler().num_workers();
  {
    registry_config rcfg;
    rcfg.inference_lanes = 1;
    registry reg{sys, rcfg};
    auto held = reg.get_or_load("bench", model_spec{"identity", {}});
    if (!held)
      throw std::runtime_error("cannot load the benchmark model: " + describe(held.error()));

    // 1. Facade hit: the fast path, on this thread.
    std::vector<int64_t> hits;
    hits.reserve(opts.hit_iterations);
    loader_fn never = []() -> caf::expected<model_ptr> {
      return make_error(errc::load_failed, "a hit must not load");
    };
    for (size_t i = 0; i < opts.hit_iterations; ++i) {
      auto t0 = clock_type::now();
      auto h = reg.get_or_load("bench", never);
      auto dt = ns_since(t0);
      if (!h)
        throw std::runtime_error("hit failed: " + describe(h.error()));
      hits.push_back(dt);
    }
    out["hit_ns_p50"] = percentile(hits, 0.50);
    out["hit_ns_p99"] = percentile(hits, 0.99);

    // 2. The floor: a bare request to an actor that answers at once; then
    //    the same shape of request as a registry hit through the supervisor.
    //    Interleaved in rounds so both see the same machine.
    auto pong = sys.spawn(ponger);
    auto reg_actor = reg.actor();
    std::vector<int64_t> ping_samples, actor_hit_samples;
    for (size_t round = 0; round < 5; ++round) {
      auto p = run_sequential(sys, opts.actor_iterations / 5, [pong](auto* self, auto next) {
        self->request(pong, caf::infinite, ping_atom::value, 1).then([next](int) { next(); });
      });
      ping_samples.insert(ping_samples.end(), p.begin(), p.end());
      auto a = run_sequential(sys, opts.actor_iterations / 5, [reg_actor](auto* self, auto next) {
        self->request(reg_actor, caf::infinite, get_or_load_atom::value, std::string{"bench"},
                      loader_fn{})
          .then([next](const model_handle&) { next(); });
      });
      actor_hit_samples.insert(actor_hit_samples.end(), a.begin(), a.end());
    }
    caf::anon_send_exit(pong, caf::exit_reason::user_shutdown);
    out["caf_ping_ns_p50"] = percentile(ping_samples, 0.50);
    out["actor_hit_ns_p50"] = percentile(actor_hit_samples, 0.50);
    out["actor_hit_ns_p99"] = percentile(actor_hit_samples, 0.99);
    out["actor_hit_over_ping"] = static_cast<double>(out["actor_hit_ns_p50"].get<int64_t>()) /
                                 static_cast<double>(out["caf_ping_ns_p50"].get<int64_t>());

    // 3. Inference throughput, many requests in flight: straight to the model
    //    actor, and routed by key through the supervisor.
    auto x = tensor::from_values<float>({1.f});
    tensor_map inputs{{"x", *x}};
    auto model = held->actor();
    std::vector<double> direct, routed;
    for (size_t round = 0; round < opts.rounds; ++round) {
      direct.push_back(run_windowed(sys, opts.infer_requests, opts.window,
                                    [model, inputs](auto* self, auto next) {
                                      self->request(model, caf::infinite, infer_request{inputs})
                                        .then([next](const tensor_map&) { next(); });
                                    }));
      routed.push_back(run_windowed(sys, opts.infer_requests, opts.window,
                                    [reg_actor, inputs](auto* self, auto next) {
                                      self->request(reg_actor, caf::infinite, infer_atom::value,
                                                    std::string{"bench"}, inputs)
                                        .then([next](const tensor_map&) { next(); });
                                    }));
    }
    std::sort(direct.begin(), direct.end());
    std::sort(routed.begin(), routed.end());
    out["infer_direct_per_s"] = static_cast<int64_t>(direct[direct.size() / 2]);
    out["infer_routed_per_s"] = static_cast<int64_t>(routed[routed.size() / 2]);
    out["infer_routed_over_direct"] = routed[routed.size() / 2] / direct[direct.size() / 2];
  }
  {
    // 4. Single flight: many concurrent callers of a cold key, a slow loader.
    registry reg{sys};
    auto runs = std::make_shared<std::atomic<int>>(0);
    auto load_ns = std::make_shared<std::atomic<int64_t>>(0);
    auto delay = std::chrono::milliseconds{opts.dedup_load_ms};
    loader_fn slow = [runs, load_ns, delay]() -> caf::expected<model_ptr> {
      auto t0 = clock_type::now();
      ++*runs;
      std::this_thread::sleep_for(delay);
      auto spec_loader = backend_registry::with_builtins()->loader_for({"identity", {}});
      auto m = (*spec_loader)();
      *load_ns = ns_since(t0);
      return m;
    };
    std::vector<std::future<caf::expected<model_handle>>> callers;
    callers.reserve(opts.dedup_callers);
    auto t0 = clock_type::now();
    for (size_t i = 0; i < opts.dedup_callers; ++i)
      callers.push_back(reg.get_or_load_async("cold", slow));
    size_t ok = 0;
    for (auto& c : callers)
      if (c.get())
        ++ok;
    auto wall_ns = ns_since(t0);
    out["dedup_callers"] = opts.dedup_callers;
    out["dedup_ok"] = ok;
    out["dedup_loads"] = runs->load();
    out["dedup_load_ms"] = static_cast<double>(load_ns->load()) / 1e6;
    out["dedup_wall_ms"] = static_cast<double>(wall_ns) / 1e6;
  }
  return out.dump();
}

} // namespace modelreg::bench

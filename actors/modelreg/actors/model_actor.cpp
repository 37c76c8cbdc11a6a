#include "modelreg/actors/model_actor.hpp"

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "modelreg/actors/detail/entry_block.hpp"
#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

/// Runs the model once, turning exceptions into errors and recording stats.
caf::result<tensor_map> run_model(model& m, detail::model_stats& stats, const tensor_map& in) {
  auto started = detail::steady_now_ns();
  caf::expected<tensor_map> out{tensor_map{}};
  try {
    out = m.infer(in, heap_allocator());
  } catch (const std::exception& e) {
    out = make_error(errc::infer_failed, m.describe() + " threw: " + e.what());
  } catch (...) {
    out = make_error(errc::infer_failed, m.describe() + " threw a non-standard exception");
  }
  stats.requests.fetch_add(1, std::memory_order_relaxed);
  stats.latency.record(static_cast<uint64_t>(detail::steady_now_ns() - started));
  if (!out) {
    stats.errors.fetch_add(1, std::memory_order_relaxed);
    log::get("modelreg.model")->debug("{}: infer failed: {}", m.describe(), describe(out.error()));
    return std::move(out.error());
  }
  return std::move(*out);
}

struct serial_state {
  model_ptr model;
  std::shared_ptr<detail::model_stats> stats;
};

model_actor::behavior_type serial_model(model_actor::stateful_pointer<serial_state> self,
                                        model_ptr m, std::shared_ptr<detail::model_stats> stats) {
  self->state.model = std::move(m);
  self->state.stats = std::move(stats);
  return {
    [self](infer_atom, const tensor_map& in) -> caf::result<tensor_map> {
      return run_model(*self->state.model, *self->state.stats, in);
    },
    [self](infer_atom, const tensor_map& in, const request_ticket&) -> caf::result<tensor_map> {
      return run_model(*self->state.model, *self->state.stats, in);
    },
  };
}

struct dispatcher_state {
  std::vector<model_actor> lanes;
  size_t next = 0;

  const model_actor& pick() { return lanes[next++ % lanes.size()]; }
};

/// Front of a thread-safe model: spreads requests over lanes (serial actors
/// sharing the model), which are linked to it and die with it.
model_actor::behavior_type dispatcher(model_actor::stateful_pointer<dispatcher_state> self,
                                      model_ptr m, std::shared_ptr<detail::model_stats> stats,
                                      size_t lanes) {
  bool blocking = m->capabilities().blocking;
  for (size_t i = 0; i < std::max<size_t>(lanes, 1); ++i) {
    auto lane = blocking ? self->spawn<caf::linked + caf::detached>(serial_model, m, stats)
                         : self->spawn<caf::linked>(serial_model, m, stats);
    self->state.lanes.push_back(lane);
  }
  return {
    [self](infer_atom atom, tensor_map& in) -> caf::result<tensor_map> {
      return self->delegate(self->state.pick(), atom, std::move(in));
    },
    [self](infer_atom atom, tensor_map& in, request_ticket& t) -> caf::result<tensor_map> {
      return self->delegate(self->state.pick(), atom, std::move(in), std::move(t));
    },
  };
}

} // namespace

model_actor spawn_model_actor(caf::actor_system& sys, model_ptr m,
                              std::shared_ptr<detail::model_stats> stats,
                              model_actor_options options) {
  auto caps = m->capabilities();
  if (caps.thread_safe && options.lanes > 1)
    return sys.spawn(dispatcher, std::move(m), std::move(stats), options.lanes);
  if (caps.blocking)
    return sys.spawn<caf::detached>(serial_model, std::move(m), std::move(stats));
  return sys.spawn(serial_model, std::move(m), std::move(stats));
}

} // namespace modelreg

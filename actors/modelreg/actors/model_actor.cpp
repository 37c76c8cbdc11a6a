#include "modelreg/actors/model_actor.hpp"

#include <deque>
#include <map>

#include <caf/actor_system.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "modelreg/actors/detail/entry_block.hpp"
#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/tensor/batch.hpp"

namespace modelreg {

namespace {

using flush_atom = caf::atom_constant<caf::atom("flush")>;
using run_atom = caf::atom_constant<caf::atom("runnext")>;

/// Calls the model once, turning exceptions into errors.
caf::expected<tensor_map> call_model(model& m, const tensor_map& in, tensor_allocator& out) {
  try {
    auto result = m.infer(in, out);
    if (!result)
      return as_modelreg_error(std::move(result.error()), errc::infer_failed, m.describe());
    return result;
  } catch (const std::exception& e) {
    return make_error(errc::infer_failed, m.describe() + " threw: " + e.what());
  } catch (...) {
    return make_error(errc::infer_failed, m.describe() + " threw a non-standard exception");
  }
}

/// Counts a request; its latency only if it succeeded (a refused input
/// answers in microseconds and would make the model look fast).
void record(model& m, detail::model_stats& stats, int64_t started, const caf::error* err) {
  stats.requests.fetch_add(1, std::memory_order_relaxed);
  if (err == nullptr) {
    stats.latency.record(static_cast<uint64_t>(detail::steady_now_ns() - started));
  } else {
    stats.errors.fetch_add(1, std::memory_order_relaxed);
    log::get("modelreg.model")->debug("{}: infer failed: {}", m.describe(), describe(*err));
  }
}

/// Answers `req`: through its reply sink if it has one (the CAF response is
/// then skipped), else as the response to its sender.
caf::result<tensor_map> answer(infer_request& req, caf::expected<tensor_map> out) {
  if (req.reply) {
    req.reply->deliver(std::move(out));
    return caf::delegated<tensor_map>{};
  }
  if (!out)
    return std::move(out.error());
  return std::move(*out);
}

/// A request whose caller went away (its connection closed) while it
/// waited: it is answered without running the model, so a client that dies
/// with requests queued does not keep the model from the others.
bool abandoned(const infer_request& req) {
  return req.reply && req.reply->abandoned();
}

caf::error abandoned_error() {
  return make_error(errc::peer_disconnected,
                    "the client went away before its request ran; the request was dropped");
}

/// What a request hears when its model actor stops before running it.
caf::error went_down_error() {
  return make_error(errc::model_crashed, "the model actor went down before answering (it "
                                         "crashed, was unloaded or the node is stopping)");
}

// -- dynamic batching ----------------------------------------------------

struct queued {
  infer_request request;
  /// Unused when the request has a reply sink.
  caf::typed_response_promise<tensor_map> promise;
  int64_t arrived_ns;

  const tensor_map& inputs() const { return request.inputs; }
  void deliver(caf::expected<tensor_map> out) {
    if (request.reply)
      request.reply->deliver(std::move(out));
    else if (out)
      promise.deliver(std::move(*out));
    else
      promise.deliver(std::move(out.error()));
  }
};

/// Answers `q` without running it if its client went away; true if so.
bool drop_if_abandoned(queued& q, detail::model_stats& stats) {
  if (!abandoned(q.request))
    return false;
  stats.abandoned.fetch_add(1, std::memory_order_relaxed);
  q.request.inputs.clear();
  q.deliver(abandoned_error());
  return true;
}

struct batch_state {
  model_ptr model;
  std::shared_ptr<detail::model_stats> stats;
  size_t max_batch = 8;
  std::chrono::milliseconds timeout{10};
  std::deque<queued> queue;
  uint64_t timer = 0; // which flush message is current
};

using batch_actor = model_actor::extend<caf::reacts_to<flush_atom, uint64_t>>;
using batch_ptr = batch_actor::stateful_pointer<batch_state>;

/// Runs `group` (compatible requests) as one model call and answers each.
void run_batch(batch_ptr self, std::vector<queued>& group) {
  auto& st = self->state;
  auto& m = *st.model;
  auto started = detail::steady_now_ns();
  auto fail_all = [&](const caf::error& err) {
    for (auto& q : group) {
      record(m, *st.stats, started, &err);
      q.deliver(err);
    }
  };
  std::vector<int64_t> rows;
  std::vector<const tensor_map*> parts;
  for (auto& q : group) {
    rows.push_back(batch_rows(q.inputs()));
    parts.push_back(&q.inputs());
  }
  auto joined = concat_rows(parts);
  if (!joined)
    return fail_all(joined.error());
  auto out = call_model(m, *joined, heap_allocator());
  if (!out)
    return fail_all(out.error());
  // Each caller's rows of each output: views of the batch's storage.
  auto answers = split_rows(*out, rows);
  if (!answers)
    return fail_all(make_error(errc::infer_failed, m.describe() + ": " + describe(answers.error())));
  st.stats->batches.fetch_add(1, std::memory_order_relaxed);
  for (size_t k = 0; k < group.size(); ++k) {
    record(m, *st.stats, group[k].arrived_ns, nullptr);
    group[k].deliver(std::move((*answers)[k]));
  }
}

/// Runs everything queued: compatible requests together, the rest alone.
void flush(batch_ptr self) {
  auto& st = self->state;
  ++st.timer;
  // Requests whose callers went away are answered first, without a call.
  std::erase_if(st.queue, [&](queued& q) { return drop_if_abandoned(q, *st.stats); });
  while (!st.queue.empty()) {
    std::vector<queued> group;
    group.push_back(std::move(st.queue.front()));
    st.queue.pop_front();
    for (auto i = st.queue.begin(); i != st.queue.end() && group.size() < st.max_batch;) {
      if (batch_rows(group.front().inputs()) >= 0 && batch_rows(i->inputs()) >= 0 &&
          batch_compatible(group.front().inputs(), i->inputs())) {
        group.push_back(std::move(*i));
        i = st.queue.erase(i);
      } else {
        ++i;
      }
    }
    if (group.size() == 1) {
      auto& q = group.front();
      auto r = call_model(*st.model, q.inputs(), heap_allocator());
      record(*st.model, *st.stats, q.arrived_ns, r ? nullptr : &r.error());
      q.deliver(std::move(r));
    } else {
      run_batch(self, group);
    }
  }
}

caf::result<tensor_map> enqueue(batch_ptr self, infer_request& req) {
  auto& st = self->state;
  caf::typed_response_promise<tensor_map> promise;
  bool own_reply = req.reply != nullptr;
  if (!own_reply)
    promise = self->make_response_promise<tensor_map>();
  st.queue.push_back(queued{std::move(req), promise, detail::steady_now_ns()});
  if (st.queue.size() >= st.max_batch)
    flush(self);
  else if (st.queue.size() == 1)
    self->delayed_send(self, st.timeout, flush_atom::value, st.timer);
  if (own_reply)
    return caf::delegated<tensor_map>{};
  return promise;
}

batch_actor::behavior_type batching_model(batch_ptr self, model_ptr m,
                                          std::shared_ptr<detail::model_stats> stats,
                                          model_actor_options options) {
  auto& st = self->state;
  st.model = std::move(m);
  st.stats = std::move(stats);
  st.max_batch = options.max_batch;
  st.timeout = options.batch_timeout;
  return {
    // Batched outputs live in one heap block (the allocator is not used):
    // a peer's reply copies its rows into its shared memory once.
    [self](infer_request& req) { return enqueue(self, req); },
    [self](flush_atom, uint64_t timer) {
      if (timer == self->state.timer)
        flush(self);
    },
  };
}

// -- serial and lanes ----------------------------------------------------

/// A model served one request at a time, fairly: one queue per client,
/// taken round-robin. A request that finds nothing waiting (no queue, an
/// empty mailbox) runs at once. Otherwise it is queued, and the next one runs
/// on a `run_atom` the actor sends itself; that message goes behind every
/// request already in the mailbox, so all of them are queued (and their
/// clients get their turn) before the next one runs.
struct serial_state {
  model_ptr model;
  std::shared_ptr<detail::model_stats> stats;
  size_t max_queue = 4096;
  std::map<uint64_t, std::deque<queued>> queues; // client -> its requests
  uint64_t last_client = 0;                       // the round-robin cursor
  size_t waiting = 0;
  bool scheduled = false;

  ~serial_state() {
    // The actor went down with requests queued: each hears (reply sinks
    // answer from their destructors; promises here).
    for (auto& [client, q] : queues)
      for (auto& r : q)
        if (!r.request.reply && r.promise.pending())
          r.promise.deliver(went_down_error());
  }
};

using serial_actor = model_actor::extend<caf::reacts_to<run_atom>>;
using serial_ptr = serial_actor::stateful_pointer<serial_state>;

/// Runs `q` now (or drops it if its client went away) and answers it.
void run_one(serial_ptr self, queued& q) {
  auto& st = self->state;
  if (drop_if_abandoned(q, *st.stats))
    return;
  auto started = detail::steady_now_ns();
  auto& req = q.request;
  auto out = call_model(*st.model, req.inputs, req.allocator ? *req.allocator : heap_allocator());
  record(*st.model, *st.stats, started, out ? nullptr : &out.error());
  // A remote caller's input memory goes back before the answer does.
  req.inputs.clear();
  q.deliver(std::move(out));
}

/// Runs the next request: the first client after the cursor with one queued.
void run_next(serial_ptr self) {
  auto& st = self->state;
  st.scheduled = false;
  if (st.queues.empty())
    return;
  auto i = st.queues.upper_bound(st.last_client);
  if (i == st.queues.end())
    i = st.queues.begin();
  st.last_client = i->first;
  auto q = std::move(i->second.front());
  i->second.pop_front();
  if (i->second.empty())
    st.queues.erase(i);
  --st.waiting;
  if (st.waiting > 0) {
    st.scheduled = true;
    self->send(self, run_atom::value);
  }
  run_one(self, q);
}

serial_actor::behavior_type serial_model(serial_ptr self, model_ptr m,
                                         std::shared_ptr<detail::model_stats> stats,
                                         size_t max_queue) {
  self->state.model = std::move(m);
  self->state.stats = std::move(stats);
  self->state.max_queue = std::max<size_t>(max_queue, 1);
  return {
    [self](infer_request& req) -> caf::result<tensor_map> {
      auto& st = self->state;
      if (st.waiting >= st.max_queue) {
        req.inputs.clear();
        return answer(req, make_error(errc::busy, st.model->describe() + ": " +
                                                    std::to_string(st.max_queue) +
                                                    " requests are already waiting (max_queue)"));
      }
      auto client = req.client != 0
                      ? req.client
                      : static_cast<uint64_t>(reinterpret_cast<uintptr_t>(self->current_sender().get()));
      caf::typed_response_promise<tensor_map> promise;
      bool own_reply = req.reply != nullptr;
      if (!own_reply)
        promise = self->make_response_promise<tensor_map>();
      queued q{std::move(req), promise, detail::steady_now_ns()};
      if (st.waiting == 0 && !st.scheduled && self->mailbox().empty()) {
        // Nobody else is waiting, here or in the mailbox: no turn to take.
        st.last_client = client;
        run_one(self, q);
      } else {
        st.queues[client].push_back(std::move(q));
        ++st.waiting;
        if (!st.scheduled) {
          st.scheduled = true;
          self->send(self, run_atom::value);
        }
      }
      if (own_reply)
        return caf::delegated<tensor_map>{};
      return promise;
    },
    [self](run_atom) { run_next(self); },
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
                                      size_t lanes, size_t max_queue) {
  bool blocking = m->capabilities().blocking;
  for (size_t i = 0; i < std::max<size_t>(lanes, 1); ++i) {
    auto lane = blocking ? self->spawn<caf::linked + caf::detached>(serial_model, m, stats, max_queue)
                         : self->spawn<caf::linked>(serial_model, m, stats, max_queue);
    self->state.lanes.push_back(caf::actor_cast<model_actor>(lane));
  }
  return {
    [self](infer_request& req) -> caf::result<tensor_map> {
      return self->delegate(self->state.pick(), std::move(req));
    },
  };
}

} // namespace

reply_sink::~reply_sink() {
  if (!answered_.load())
    deliver(went_down_error());
}

void reply_sink::deliver(caf::expected<tensor_map> result) {
  if (answered_.exchange(true))
    return;
  try {
    fn_(std::move(result));
  } catch (const std::exception& e) {
    log::get("modelreg.model")->error("a reply could not be sent: {}", e.what());
  }
}

model_actor spawn_model_actor(caf::actor_system& sys, model_ptr m,
                              std::shared_ptr<detail::model_stats> stats,
                              model_actor_options options) {
  auto caps = m->capabilities();
  if (caps.batchable && options.max_batch > 1) {
    auto a = caps.blocking ? sys.spawn<caf::detached>(batching_model, std::move(m),
                                                      std::move(stats), options)
                           : sys.spawn(batching_model, std::move(m), std::move(stats), options);
    return caf::actor_cast<model_actor>(a);
  }
  if (caps.thread_safe && options.lanes > 1)
    return sys.spawn(dispatcher, std::move(m), std::move(stats), options.lanes, options.max_queue);
  if (caps.blocking)
    return caf::actor_cast<model_actor>(
      sys.spawn<caf::detached>(serial_model, std::move(m), std::move(stats), options.max_queue));
  return caf::actor_cast<model_actor>(
    sys.spawn(serial_model, std::move(m), std::move(stats), options.max_queue));
}

} // namespace modelreg

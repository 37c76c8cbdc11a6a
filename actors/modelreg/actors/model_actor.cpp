#include "modelreg/actors/model_actor.hpp"

#include <algorithm>
#include <deque>
#include <map>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "modelreg/actors/detail/entry_block.hpp"
#include "modelreg/backend/instances.hpp"
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
/// answers in microseconds and would make the model look fast). `arrived`:
/// when it reached the model actor (0: when it started), for the queueing
/// figure; `own_call`: it ran alone (batches count their size themselves).
void record(model& m, detail::model_stats& stats, int64_t started, const caf::error* err,
            int64_t arrived = 0, bool own_call = true) {
  stats.requests.fetch_add(1, std::memory_order_relaxed);
  auto now = detail::steady_now_ns();
  if (stats.metrics) {
    int code = err == nullptr ? 0 : err->category() == error_category ? err->code() : -1;
    stats.metrics->record(arrived != 0 ? started - arrived : 0, now - started, code);
    if (own_call && err == nullptr)
      stats.metrics->batch_size.observe(1);
  }
  if (err == nullptr) {
    stats.latency.record(static_cast<uint64_t>(now - started));
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

/// The answer of a model that does not stream to a session request.
caf::error no_sessions(const model& m) {
  return make_error(errc::unsupported, m.describe() + " does not stream (no sessions)");
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
  if (st.stats->metrics)
    st.stats->metrics->batch_size.observe(static_cast<double>(group.size()));
  for (size_t k = 0; k < group.size(); ++k) {
    record(m, *st.stats, started, nullptr, group[k].arrived_ns, false);
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
      auto started = detail::steady_now_ns();
      auto r = call_model(*st.model, q.inputs(), heap_allocator());
      record(*st.model, *st.stats, started, r ? nullptr : &r.error(), q.arrived_ns);
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
    [self](session_request&) -> caf::result<tensor_map> { return no_sessions(*self->state.model); },
  };
}

// -- serial and lanes ----------------------------------------------------

/// Requests waiting for a model, one queue per client, taken round-robin
/// across clients: a client with a hundred queued requests delays another
/// client's single request by one turn, not a hundred.
struct fair_queue {
  std::map<uint64_t, std::deque<queued>> queues; // client -> its requests
  uint64_t last_client = 0;                       // the round-robin cursor
  size_t waiting = 0;

  fair_queue() = default;
  fair_queue(const fair_queue&) = delete;
  fair_queue& operator=(const fair_queue&) = delete;

  ~fair_queue() {
    // The actor went down with requests queued: each hears (reply sinks
    // answer from their destructors; promises here).
    for (auto& [client, q] : queues)
      for (auto& r : q)
        if (!r.request.reply && r.promise.pending())
          r.promise.deliver(went_down_error());
  }

  void push(uint64_t client, queued q) {
    queues[client].push_back(std::move(q));
    ++waiting;
  }

  /// The next request: the first client after the cursor with one queued.
  /// Precondition: waiting > 0.
  queued pop() {
    auto i = queues.upper_bound(last_client);
    if (i == queues.end())
      i = queues.begin();
    last_client = i->first;
    auto q = std::move(i->second.front());
    i->second.pop_front();
    if (i->second.empty())
      queues.erase(i);
    --waiting;
    return q;
  }
};

/// Who a request comes from, for fair queueing.
template <class Self>
uint64_t client_of(Self* self, const infer_request& req) {
  return req.client != 0
           ? req.client
           : static_cast<uint64_t>(reinterpret_cast<uintptr_t>(self->current_sender().get()));
}

caf::error queue_full(const model& m, size_t max_queue) {
  return make_error(errc::busy, m.describe() + ": " + std::to_string(max_queue) +
                                  " requests are already waiting (max_queue)");
}

/// A model served one request at a time, fairly (see fair_queue). A
/// request that finds nothing waiting (no queue, an empty mailbox) runs at
/// once. Otherwise it is queued, and the next one runs on a `run_atom` the
/// actor sends itself; that message goes behind every request already in
/// the mailbox, so all of them are queued (and their clients get their
/// turn) before the next one runs.
struct serial_state {
  model_ptr model;
  std::shared_ptr<detail::model_stats> stats;
  size_t max_queue = 4096;
  fair_queue queue;
  bool scheduled = false;
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
  record(*st.model, *st.stats, started, out ? nullptr : &out.error(), q.arrived_ns);
  // A remote caller's input memory goes back before the answer does.
  req.inputs.clear();
  q.deliver(std::move(out));
}

/// Runs the next request in turn.
void run_next(serial_ptr self) {
  auto& st = self->state;
  st.scheduled = false;
  if (st.queue.waiting == 0)
    return;
  auto q = st.queue.pop();
  if (st.queue.waiting > 0) {
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
      if (st.queue.waiting >= st.max_queue) {
        req.inputs.clear();
        return answer(req, queue_full(*st.model, st.max_queue));
      }
      auto client = client_of(self, req);
      caf::typed_response_promise<tensor_map> promise;
      bool own_reply = req.reply != nullptr;
      if (!own_reply)
        promise = self->make_response_promise<tensor_map>();
      queued q{std::move(req), promise, detail::steady_now_ns()};
      if (st.queue.waiting == 0 && !st.scheduled && self->mailbox().empty()) {
        // Nobody else is waiting, here or in the mailbox: no turn to take.
        st.queue.last_client = client;
        run_one(self, q);
      } else {
        st.queue.push(client, std::move(q));
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
    [self](session_request&) -> caf::result<tensor_map> { return no_sessions(*self->state.model); },
  };
}

struct dispatcher_state {
  std::vector<model_actor> lanes;
  size_t next = 0;
  model_ptr model;

  const model_actor& pick() { return lanes[next++ % lanes.size()]; }
};

/// Front of a thread-safe model: spreads requests over lanes (serial actors
/// sharing the model), which are linked to it and die with it.
model_actor::behavior_type dispatcher(model_actor::stateful_pointer<dispatcher_state> self,
                                      model_ptr m, std::shared_ptr<detail::model_stats> stats,
                                      size_t lanes, size_t max_queue) {
  bool blocking = m->capabilities().blocking;
  self->state.model = m;
  for (size_t i = 0; i < std::max<size_t>(lanes, 1); ++i) {
    auto lane = blocking ? self->spawn<caf::linked + caf::detached>(serial_model, m, stats, max_queue)
                         : self->spawn<caf::linked>(serial_model, m, stats, max_queue);
    self->state.lanes.push_back(caf::actor_cast<model_actor>(lane));
  }
  return {
    [self](infer_request& req) -> caf::result<tensor_map> {
      return self->delegate(self->state.pick(), std::move(req));
    },
    [self](session_request&) -> caf::result<tensor_map> { return no_sessions(*self->state.model); },
  };
}

// -- instances -----------------------------------------------------------

using instance_up_atom = caf::atom_constant<caf::atom("instup")>;
using instance_lost_atom = caf::atom_constant<caf::atom("instlost")>;
using make_instance_atom = caf::atom_constant<caf::atom("mkinst")>;

/// How long the front waits before it tries to grow again after a growth
/// that failed.
constexpr auto grow_retry = std::chrono::seconds{5};

/// One instance's worker: a detached actor that owns the instance, runs one
/// request at a time on it, and replaces it when its process died.
struct worker_state {
  caf::actor front;
  size_t index = 0;
  instance_set_ptr set;
  model_ptr instance;
  /// The session's stream on `instance` (declared after it: goes first).
  std::unique_ptr<model_stream> stream;
  std::shared_ptr<detail::model_stats> stats;
};

/// The instance's process died (`out` is model_crashed from a forked
/// instance): the front hears first, then a new one is started.
template <class T>
bool lost_instance(caf::stateful_actor<worker_state>* self, const caf::expected<T>& out) {
  auto& st = self->state;
  if (out || !is(out.error(), errc::model_crashed) || !st.set->forked())
    return false;
  st.stats->instance_restarts.fetch_add(1, std::memory_order_relaxed);
  st.stream.reset();
  self->send(st.front, instance_lost_atom::value, st.index);
  st.instance = nullptr;
  self->send(self, make_instance_atom::value);
  return true;
}

/// Runs one session request on the worker's instance (the front answers
/// its caller).
caf::expected<tensor_map> run_session(caf::stateful_actor<worker_state>* self,
                                      session_request& req) {
  auto& st = self->state;
  auto& out_alloc = req.allocator ? *req.allocator : heap_allocator();
  auto guarded = [&](auto&& f) -> caf::expected<tensor_map> {
    try {
      return f();
    } catch (const std::exception& e) {
      return make_error(errc::infer_failed, st.instance->describe() + " threw: " + e.what());
    }
  };
  switch (req.op) {
    case session_op::open: {
      st.stream.reset();
      auto s = guarded([&]() -> caf::expected<tensor_map> {
        auto opened = st.instance->open_stream();
        if (!opened)
          return std::move(opened.error());
        st.stream = std::move(*opened);
        return tensor_map{};
      });
      return s;
    }
    case session_op::push:
      if (!st.stream)
        return make_error(errc::invalid_argument, "the session's stream is gone");
      return guarded([&] { return st.stream->push(req.inputs, out_alloc); });
    case session_op::finish: {
      if (!st.stream)
        return make_error(errc::invalid_argument, "the session's stream is gone");
      auto out = guarded([&] { return st.stream->finish(out_alloc); });
      st.stream.reset();
      return out;
    }
    case session_op::cancel:
    default:
      st.stream.reset();
      return tensor_map{};
  }
}

caf::behavior instance_worker(caf::stateful_actor<worker_state>* self, caf::actor front,
                              size_t index, instance_set_ptr set, model_ptr instance,
                              std::shared_ptr<detail::model_stats> stats) {
  auto& st = self->state;
  st.front = std::move(front);
  st.index = index;
  st.set = std::move(set);
  st.instance = std::move(instance);
  st.stats = std::move(stats);
  if (!st.instance)
    self->send(self, make_instance_atom::value);
  return {
    [self](infer_request& req) -> caf::result<tensor_map> {
      auto& st = self->state;
      if (!st.set->serving(*st.instance)) {
        // Its process died while idle: a new fork takes this request.
        st.stats->instance_restarts.fetch_add(1, std::memory_order_relaxed);
        auto m = st.set->make_instance();
        if (!m) {
          self->send(st.front, instance_lost_atom::value, st.index);
          self->send(self, make_instance_atom::value);
          return answer(req, make_error(errc::model_crashed,
                                        "an instance of " + st.set->describe() +
                                          " died and no new one started: " +
                                          modelreg::describe(m.error())));
        }
        st.stream.reset();
        st.instance = std::move(*m);
      }
      auto started = detail::steady_now_ns();
      auto out = call_model(*st.instance, req.inputs,
                            req.allocator ? *req.allocator : heap_allocator());
      record(*st.instance, *st.stats, started, out ? nullptr : &out.error(), req.arrived_ns);
      req.inputs.clear();
      // Its process died: this caller hears model_crashed; the front sends
      // nothing here until a new fork serves (the lost message reaches it
      // before this answer does).
      lost_instance(self, out);
      if (req.reply) {
        req.reply->deliver(std::move(out));
        return tensor_map{};
      }
      if (!out)
        return std::move(out.error());
      return std::move(*out);
    },
    [self](session_request& req) -> caf::result<tensor_map> {
      auto& st = self->state;
      if (!st.instance) {
        auto err = make_error(errc::model_crashed, "the session's instance died");
        if (req.reply) {
          req.reply->deliver(std::move(err));
          return tensor_map{};
        }
        return err;
      }
      auto started = detail::steady_now_ns();
      auto out = run_session(self, req);
      if (req.op == session_op::push)
        record(*st.instance, *st.stats, started, out ? nullptr : &out.error());
      req.inputs.clear();
      lost_instance(self, out);
      if (req.reply) {
        req.reply->deliver(std::move(out));
        return tensor_map{};
      }
      if (!out)
        return std::move(out.error());
      return std::move(*out);
    },
    [self](make_instance_atom) {
      auto& st = self->state;
      auto m = st.set->make_instance();
      if (m) {
        st.instance = std::move(*m);
        self->send(st.front, instance_up_atom::value, st.index, true);
        return;
      }
      log::get("modelreg.model")
        ->warn("{}: a new instance did not start: {}", st.set->describe(), describe(m.error()));
      self->send(st.front, instance_up_atom::value, st.index, false);
      self->quit();
    },
  };
}

struct front_state {
  struct slot {
    caf::actor worker;
    bool ready = false;   // its instance serves
    bool busy = false;    // a request is on it
    bool dead = false;    // its instance could not be started
    uint64_t session = 0; // the session pinned to it, if any

    bool idle() const { return ready && !busy && session == 0; }
  };
  struct session_info {
    size_t slot = 0;
    uint64_t client = 0;
    int64_t last_ns = 0;
  };
  /// An open waiting for a free instance.
  struct pending_open {
    session_request request;
    caf::typed_response_promise<tensor_map> promise;
    int64_t deadline_ns = 0;
  };
  instance_set_ptr set;
  std::shared_ptr<detail::model_stats> stats;
  size_t max_queue = 4096;
  std::chrono::milliseconds idle_timeout{30000};
  fair_queue queue;
  std::vector<slot> slots;
  bool growing = false;
  int64_t grow_after_ns = 0;
  std::map<uint64_t, session_info> sessions;
  std::deque<pending_open> opens;
  bool sweeping = false;

  ~front_state() {
    for (auto& p : opens)
      if (!p.request.reply && p.promise.pending())
        p.promise.deliver(went_down_error());
  }

  size_t count(bool front_state::slot::*flag) const {
    return static_cast<size_t>(
      std::count_if(slots.begin(), slots.end(), [flag](const slot& s) { return s.*flag; }));
  }
};

using sweep_atom = caf::atom_constant<caf::atom("sweep")>;
using open_due_atom = caf::atom_constant<caf::atom("opendue")>;

using front_actor = model_actor::extend<caf::reacts_to<instance_up_atom, size_t, bool>,
                                        caf::reacts_to<instance_lost_atom, size_t>,
                                        caf::reacts_to<sweep_atom>, caf::reacts_to<open_due_atom>>;
using front_ptr = front_actor::stateful_pointer<front_state>;

void publish(front_ptr self) {
  auto& st = self->state;
  st.stats->instances.store(st.count(&front_state::slot::ready), std::memory_order_relaxed);
  st.stats->instances_busy.store(st.count(&front_state::slot::busy), std::memory_order_relaxed);
  st.stats->sessions.store(st.sessions.size(), std::memory_order_relaxed);
}

void add_worker(front_ptr self, model_ptr instance) {
  auto& st = self->state;
  auto index = st.slots.size();
  bool ready = instance != nullptr;
  auto w = self->spawn<caf::linked + caf::detached>(instance_worker,
                                                    caf::actor_cast<caf::actor>(self), index,
                                                    st.set, std::move(instance), st.stats);
  st.slots.push_back({w, ready, false, false, 0});
}

void dispatch(front_ptr self);

/// A request finished on slot `i`: its answer goes to the caller if the
/// worker did not send it already.
void finished(front_ptr self, size_t i) {
  self->state.slots[i].busy = false;
  dispatch(self);
}

/// Starts one more instance when every instance is busy and requests wait
/// (up to the set's limit; after a failed start, not for a while).
void maybe_grow(front_ptr self) {
  auto& st = self->state;
  if (st.growing || (st.queue.waiting == 0 && st.opens.empty()) ||
      st.slots.size() >= st.set->limit() ||
      detail::steady_now_ns() < st.grow_after_ns)
    return;
  st.growing = true;
  add_worker(self, nullptr);
}

/// Delivers a session request's outcome to its caller.
void deliver_session(const reply_sink_ptr& reply, caf::typed_response_promise<tensor_map>& promise,
                     caf::expected<tensor_map> out) {
  if (reply) {
    reply->deliver(std::move(out));
  } else if (promise.pending()) {
    if (out)
      promise.deliver(std::move(*out));
    else
      promise.deliver(std::move(out.error()));
  }
}

/// Frees the instance session `id` was pinned to.
void end_session(front_ptr self, uint64_t id) {
  auto& st = self->state;
  auto i = st.sessions.find(id);
  if (i == st.sessions.end())
    return;
  auto& slot = st.slots[i->second.slot];
  if (slot.session == id)
    slot.session = 0;
  st.sessions.erase(i);
}

void start_sweeping(front_ptr self) {
  auto& st = self->state;
  if (st.sweeping || st.sessions.empty())
    return;
  st.sweeping = true;
  auto period = std::clamp(st.idle_timeout / 4, std::chrono::milliseconds{5},
                           std::chrono::milliseconds{1000});
  self->delayed_send(self, period, sweep_atom::value);
}

/// Pins idle slot `i` to a new session for `p` and opens a stream there.
void pin(front_ptr self, size_t i, front_state::pending_open p) {
  auto& st = self->state;
  auto id = new_session_id();
  st.slots[i].session = id;
  st.sessions[id] = {i, p.request.client, detail::steady_now_ns()};
  start_sweeping(self);
  session_request open;
  open.op = session_op::open;
  auto waiting = std::make_shared<front_state::pending_open>(std::move(p));
  self->request(st.slots[i].worker, caf::infinite, std::move(open))
    .then(
      [self, id, waiting](tensor_map&) {
        auto t = tensor::allocate(dtype::u64, {1});
        if (!t) {
          end_session(self, id);
          deliver_session(waiting->request.reply, waiting->promise, t.error());
          return;
        }
        (*t->mutable_values<uint64_t>())[0] = id;
        deliver_session(waiting->request.reply, waiting->promise, tensor_map{{"session", *t}});
        publish(self);
      },
      [self, id, waiting](caf::error& err) {
        end_session(self, id);
        deliver_session(waiting->request.reply, waiting->promise, std::move(err));
        dispatch(self);
      });
}

/// Hands waiting opens, then waiting requests, to idle instances (requests
/// in fair order).
void dispatch(front_ptr self) {
  auto& st = self->state;
  while (!st.opens.empty()) {
    auto idle = std::find_if(st.slots.begin(), st.slots.end(),
                             [](const front_state::slot& s) { return s.idle(); });
    if (idle == st.slots.end()) {
      maybe_grow(self);
      break;
    }
    auto p = std::move(st.opens.front());
    st.opens.pop_front();
    if (p.request.reply && p.request.reply->abandoned())
      continue;
    pin(self, static_cast<size_t>(idle - st.slots.begin()), std::move(p));
  }
  while (st.queue.waiting > 0) {
    auto idle = std::find_if(st.slots.begin(), st.slots.end(),
                             [](const front_state::slot& s) { return s.idle(); });
    if (idle == st.slots.end()) {
      maybe_grow(self);
      break;
    }
    auto q = st.queue.pop();
    if (drop_if_abandoned(q, *st.stats))
      continue;
    auto i = static_cast<size_t>(idle - st.slots.begin());
    idle->busy = true;
    auto promise = q.promise;
    q.request.arrived_ns = q.arrived_ns;
    self->request(idle->worker, caf::infinite, std::move(q.request))
      .then(
        [self, i, promise](tensor_map& out) mutable {
          if (promise.pending())
            promise.deliver(std::move(out));
          finished(self, i);
        },
        [self, i, promise](caf::error& err) mutable {
          if (promise.pending())
            promise.deliver(std::move(err));
          finished(self, i);
        });
  }
  publish(self);
}

/// No instance serves and none is starting: the model is down. Everything
/// waiting hears so, and the actor ends (the registry then treats the model
/// as crashed: the next request loads it again).
void check_alive(front_ptr self) {
  auto& st = self->state;
  bool any = std::any_of(st.slots.begin(), st.slots.end(),
                         [](const front_state::slot& s) { return !s.dead; });
  if (any)
    return;
  while (st.queue.waiting > 0) {
    auto q = st.queue.pop();
    q.deliver(make_error(errc::model_crashed, st.set->describe() + ": no instance could be started"));
  }
  self->quit(make_error(errc::model_crashed, st.set->describe() + ": no instance left"));
}

/// A push, finish or cancel: goes to the session's instance, in order.
caf::result<tensor_map> session_step(front_ptr self, session_request& req) {
  auto& st = self->state;
  auto i = st.sessions.find(req.session);
  if (i == st.sessions.end() ||
      (i->second.client != 0 && req.client != 0 && i->second.client != req.client)) {
    req.inputs.clear();
    auto err = make_error(errc::invalid_argument,
                          "no open session " + std::to_string(req.session) + " on " +
                            st.set->describe() +
                            " (finished, cancelled, idle too long, its instance died, or "
                            "never opened by this client)");
    if (req.reply) {
      req.reply->deliver(std::move(err));
      return caf::delegated<tensor_map>{};
    }
    return err;
  }
  i->second.last_ns = detail::steady_now_ns();
  auto slot = i->second.slot;
  auto id = req.session;
  auto op = req.op;
  caf::typed_response_promise<tensor_map> promise;
  bool own_reply = req.reply != nullptr;
  if (own_reply) {
    // The worker answers the caller itself (one hop less per chunk); the
    // request keeps its ticket until then. If its instance dies, the front
    // hears `instance_lost` first and ends the session.
    caf::anon_send(st.slots[slot].worker, std::move(req));
  } else {
    promise = self->make_response_promise<tensor_map>();
    auto ticket = std::move(req.ticket);
    self->request(st.slots[slot].worker, caf::infinite, std::move(req))
      .then(
        [promise, ticket](tensor_map& out) mutable {
          deliver_session(nullptr, promise, std::move(out));
        },
        [self, id, promise, ticket](caf::error& err) mutable {
          // An instance that died takes its session with it.
          if (is(err, errc::model_crashed)) {
            end_session(self, id);
            publish(self);
          }
          deliver_session(nullptr, promise, std::move(err));
        });
  }
  if (op == session_op::finish || op == session_op::cancel) {
    // Later requests of this session are refused; the instance is free for
    // what comes next. Only now: what comes next (an open waiting for an
    // instance, say) must reach the worker after this finish, or the finish
    // would end the next session's stream.
    end_session(self, id);
    dispatch(self);
  }
  publish(self);
  if (own_reply)
    return caf::delegated<tensor_map>{};
  return promise;
}

/// An open: pins an idle instance now, or waits up to `req.wait` for one.
caf::result<tensor_map> session_open(front_ptr self, session_request& req) {
  auto& st = self->state;
  auto fail = [&](caf::error err) -> caf::result<tensor_map> {
    if (req.reply) {
      req.reply->deliver(std::move(err));
      return caf::delegated<tensor_map>{};
    }
    return err;
  };
  if (!st.set->capabilities().streaming)
    return fail(no_sessions(*st.set));
  front_state::pending_open p;
  if (!req.reply)
    p.promise = self->make_response_promise<tensor_map>();
  auto own_reply = req.reply != nullptr;
  auto promise = p.promise;
  auto wait = req.wait;
  p.request = std::move(req);
  auto idle = std::find_if(st.slots.begin(), st.slots.end(),
                           [](const front_state::slot& s) { return s.idle(); });
  if (idle != st.slots.end()) {
    pin(self, static_cast<size_t>(idle - st.slots.begin()), std::move(p));
  } else if (wait.count() <= 0 || st.opens.size() >= st.max_queue) {
    auto err = make_error(errc::busy, st.set->describe() + ": all " +
                                        std::to_string(st.slots.size()) +
                                        " instances are in use (sessions or requests)" +
                                        (wait.count() > 0 ? " and too many opens wait" : ""));
    deliver_session(p.request.reply, p.promise, std::move(err));
    maybe_grow(self);
  } else {
    p.deadline_ns = detail::steady_now_ns() +
                    std::chrono::duration_cast<std::chrono::nanoseconds>(wait).count();
    st.opens.push_back(std::move(p));
    self->delayed_send(self, wait, open_due_atom::value);
    maybe_grow(self);
  }
  if (own_reply)
    return caf::delegated<tensor_map>{};
  return promise;
}

front_actor::behavior_type instances_front(front_ptr self, instance_set_ptr set,
                                           std::shared_ptr<detail::model_stats> stats,
                                           model_actor_options options) {
  auto& st = self->state;
  st.set = std::move(set);
  st.stats = std::move(stats);
  st.max_queue = std::max<size_t>(options.max_queue, 1);
  st.idle_timeout = std::max(options.session_idle_timeout, std::chrono::milliseconds{1});
  for (auto& m : st.set->take_initial())
    add_worker(self, std::move(m));
  publish(self);
  return {
    [self](infer_request& req) -> caf::result<tensor_map> {
      auto& st = self->state;
      if (st.queue.waiting >= st.max_queue) {
        req.inputs.clear();
        return answer(req, queue_full(*st.set, st.max_queue));
      }
      auto client = client_of(self, req);
      caf::typed_response_promise<tensor_map> promise;
      bool own_reply = req.reply != nullptr;
      if (!own_reply)
        promise = self->make_response_promise<tensor_map>();
      st.queue.push(client, queued{std::move(req), promise, detail::steady_now_ns()});
      dispatch(self);
      if (own_reply)
        return caf::delegated<tensor_map>{};
      return promise;
    },
    [self](instance_up_atom, size_t i, bool ok) {
      auto& st = self->state;
      if (i + 1 == st.slots.size() && st.growing)
        st.growing = false;
      if (ok) {
        st.slots[i].ready = true;
      } else {
        st.slots[i].ready = false;
        st.slots[i].dead = true;
        st.grow_after_ns = detail::steady_now_ns() +
                           std::chrono::duration_cast<std::chrono::nanoseconds>(grow_retry).count();
        check_alive(self);
      }
      dispatch(self);
    },
    [self](instance_lost_atom, size_t i) {
      // Its process died: so did the stream of the session pinned to it.
      auto& st = self->state;
      st.slots[i].ready = false;
      if (auto session = st.slots[i].session; session != 0)
        end_session(self, session);
      publish(self);
    },
    [self](session_request& req) -> caf::result<tensor_map> {
      if (req.op == session_op::open)
        return session_open(self, req);
      return session_step(self, req);
    },
    [self](sweep_atom) {
      // Sessions idle too long are cancelled; their instances are freed.
      auto& st = self->state;
      st.sweeping = false;
      auto now = detail::steady_now_ns();
      auto limit = std::chrono::duration_cast<std::chrono::nanoseconds>(st.idle_timeout).count();
      std::vector<uint64_t> expired;
      for (const auto& [id, info] : st.sessions)
        if (now - info.last_ns > limit)
          expired.push_back(id);
      for (auto id : expired) {
        session_request cancel;
        cancel.op = session_op::cancel;
        cancel.session = id;
        caf::anon_send(st.slots[st.sessions[id].slot].worker, std::move(cancel));
        end_session(self, id);
        st.stats->sessions_expired.fetch_add(1, std::memory_order_relaxed);
        log::get("modelreg.model")
          ->info("{}: session {} was idle for {} ms: cancelled", st.set->describe(), id,
                 st.idle_timeout.count());
      }
      start_sweeping(self);
      dispatch(self);
    },
    [self](open_due_atom) {
      auto& st = self->state;
      auto now = detail::steady_now_ns();
      std::erase_if(st.opens, [&](front_state::pending_open& p) {
        if (p.deadline_ns > now)
          return false;
        deliver_session(p.request.reply, p.promise,
                        make_error(errc::busy, st.set->describe() +
                                                 ": no instance became free in time for a new "
                                                 "session"));
        return true;
      });
    },
  };
}

} // namespace

reply_sink::~reply_sink() {
  if (!answered_.load())
    deliver(if_dropped_ ? std::move(if_dropped_) : went_down_error());
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

uint64_t new_session_id() {
  static std::atomic<uint64_t> next{1};
  return next.fetch_add(1, std::memory_order_relaxed);
}

model_actor spawn_model_actor(caf::actor_system& sys, model_ptr m,
                              std::shared_ptr<detail::model_stats> stats,
                              model_actor_options options) {
  auto caps = m->capabilities();
  auto set = std::dynamic_pointer_cast<instance_set>(m);
  if (!set && caps.streaming && !caps.thread_safe)
    set = single_instance(m); // sessions pin it: the instances front serves it
  if (set) {
    stats->instances_of = set;
    stats->max_instances = set->limit();
    auto a = sys.spawn(instances_front, std::move(set), std::move(stats), options);
    return caf::actor_cast<model_actor>(a);
  }
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

namespace detail {

caf::expected<tensor_map> run_quick(entry_block& block, const tensor_map& inputs,
                                    tensor_allocator& out) {
  auto started = steady_now_ns();
  auto result = call_model(*block.quick, inputs, out);
  record(*block.quick, *block.stats, started, result ? nullptr : &result.error());
  return result;
}

} // namespace detail

} // namespace modelreg

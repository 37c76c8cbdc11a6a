#include "modelreg/actors/gateway.hpp"

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <unordered_map>

#include <unistd.h>

#include <caf/actor_companion.hpp>
#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/scoped_execution_unit.hpp>
#include <caf/sec.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include <nlohmann/json.hpp>

#include "modelreg/log.hpp"
#include "modelreg/messages/cluster.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/timeouts.hpp"
#include "modelreg/transport/codec.hpp"

namespace modelreg {

namespace {

using transport::connection_ptr;
using transport::frame_ptr;
using transport::outgoing_frame;

using force_quit_atom = caf::atom_constant<caf::atom("forcequit")>;

/// How the gateway answers one peer.
class peer_link {
public:
  virtual ~peer_link() = default;
  virtual outgoing_frame new_frame() = 0;
  virtual caf::error send(outgoing_frame& frame) = 0;
  /// Where the peer wants model outputs (null: the heap).
  virtual allocator_ptr allocator() = 0;
  /// False once the peer is gone: its queued requests need not run.
  virtual bool open() const { return true; }
};

/// A peer on this host: the shared-memory transport.
class shm_link final : public peer_link {
public:
  explicit shm_link(connection_ptr conn) : conn_(std::move(conn)) {}
  outgoing_frame new_frame() override { return conn_->new_frame(); }
  caf::error send(outgoing_frame& frame) override { return conn_->send(frame); }
  allocator_ptr allocator() override {
    if (!conn_->shared_memory())
      return nullptr;
    // Aliases the connection: the allocator lives as long as the request.
    return allocator_ptr{conn_, &conn_->allocator()};
  }
  bool open() const override { return conn_->is_open(); }

private:
  connection_ptr conn_;
};

/// A peer on another host: CAF's middleman, frames as bytes.
class remote_link final : public peer_link {
public:
  remote_link(caf::actor peer, std::shared_ptr<shm::pool> pool,
              std::shared_ptr<transport::copy_counters> counters)
    : peer_(std::move(peer)), pool_(std::move(pool)), counters_(std::move(counters)) {}
  outgoing_frame new_frame() override { return outgoing_frame{pool_, false, *counters_}; }
  caf::error send(outgoing_frame& frame) override {
    caf::anon_send(peer_, frame_atom::value, transport::to_bytes(frame));
    return {};
  }
  allocator_ptr allocator() override { return nullptr; }

private:
  caf::actor peer_;
  std::shared_ptr<shm::pool> pool_;
  std::shared_ptr<transport::copy_counters> counters_;
};

/// Requests of one peer not answered yet (shared with the threads that
/// answer them).
struct peer_counter {
  std::atomic<uint64_t> in_flight{0};
};

struct peer {
  std::shared_ptr<peer_link> link;
  bool subscribed = false;
  peer_role role = peer_role::infer;
  std::shared_ptr<peer_counter> counter = std::make_shared<peer_counter>();
  /// Opens sent to a model and not answered yet (they count against the
  /// session limit with the peer's open sessions, which the core holds).
  size_t opening = 0;
};

} // namespace

namespace detail {

/// What the gateway shares with the threads that serve inferences and
/// session steps without it (each connection's loop thread, and the model
/// actors that send the answers): the leases it handed out, the sessions
/// its peers opened, the in-flight counts and whether it is stopping. The
/// gateway adds leases and sessions (on loads and opens) and removes them
/// when a peer goes; a loop thread reads them, and ends a session its peer
/// finishes or cancels.
struct gateway_core {
  /// A lease, or an open session: who holds it, and how to answer them.
  struct lease_entry {
    uint64_t peer = 0;
    model_handle handle; // a session's keeps its model loaded while it lives
    std::shared_ptr<peer_link> link;
    std::shared_ptr<peer_counter> counter;
  };

  caf::weak_actor_ptr gateway; // told when the last request of a stop is answered
  size_t max_in_flight_per_peer = 1024;
  std::atomic<bool> stopping{false};
  /// Requests of every peer not answered yet.
  std::atomic<uint64_t> in_flight{0};
  /// Inferences handed straight to a model (on a lease), and routed by key
  /// through the registry.
  std::atomic<uint64_t> on_lease{0};
  std::atomic<uint64_t> by_key{0};
  /// Of those on a lease: run by the thread that decoded them (quick models).
  std::atomic<uint64_t> quick{0};

  std::mutex mutex;
  std::unordered_map<uint64_t, lease_entry> leases;   // lease id -> holder
  std::unordered_map<uint64_t, lease_entry> sessions; // session id -> holder

  /// The entry of `lease` if `peer` holds it.
  std::optional<lease_entry> find(uint64_t lease, uint64_t peer_id) {
    std::lock_guard guard{mutex};
    auto i = leases.find(lease);
    if (i == leases.end() || i->second.peer != peer_id)
      return std::nullopt;
    return i->second;
  }

  /// A valid lease `peer` holds on `key` (frames that name no lease).
  std::optional<lease_entry> find_by_key(uint64_t peer_id, const std::string& key) {
    std::lock_guard guard{mutex};
    for (auto& [id, e] : leases)
      if (e.peer == peer_id && e.handle.key() == key && e.handle.valid())
        return e;
    return std::nullopt;
  }

  void add(uint64_t lease, lease_entry e) {
    std::lock_guard guard{mutex};
    leases.emplace(lease, std::move(e));
  }

  /// Gives back `lease` if `peer` holds it.
  bool remove(uint64_t lease, uint64_t peer_id) {
    std::optional<lease_entry> gone; // released outside the lock
    std::lock_guard guard{mutex};
    auto i = leases.find(lease);
    if (i == leases.end() || i->second.peer != peer_id)
      return false;
    gone = std::move(i->second);
    leases.erase(i);
    return true;
  }

  /// Gives back every lease of `peer`; how many there were.
  size_t remove_peer(uint64_t peer_id) {
    std::vector<lease_entry> gone; // released outside the lock
    std::lock_guard guard{mutex};
    for (auto i = leases.begin(); i != leases.end();) {
      if (i->second.peer == peer_id) {
        gone.push_back(std::move(i->second));
        i = leases.erase(i);
      } else {
        ++i;
      }
    }
    return gone.size();
  }

  void add_session(uint64_t session, lease_entry e) {
    std::lock_guard guard{mutex};
    sessions.emplace(session, std::move(e));
  }

  /// The entry of `session` if `peer` opened it; with `end`, it ends here
  /// (a finish or cancel: later steps are refused).
  std::optional<lease_entry> find_session(uint64_t session, uint64_t peer_id, bool end) {
    std::lock_guard guard{mutex};
    auto i = sessions.find(session);
    if (i == sessions.end() || i->second.peer != peer_id)
      return std::nullopt;
    std::optional<lease_entry> e{i->second};
    if (end)
      sessions.erase(i);
    return e;
  }

  size_t sessions_of(uint64_t peer_id) {
    std::lock_guard guard{mutex};
    return static_cast<size_t>(std::count_if(sessions.begin(), sessions.end(),
                                             [&](const auto& s) { return s.second.peer == peer_id; }));
  }

  /// Ends every session of `peer`: their ids and handles.
  std::vector<std::pair<uint64_t, lease_entry>> remove_peer_sessions(uint64_t peer_id) {
    std::vector<std::pair<uint64_t, lease_entry>> gone;
    std::lock_guard guard{mutex};
    for (auto i = sessions.begin(); i != sessions.end();) {
      if (i->second.peer == peer_id) {
        gone.emplace_back(i->first, std::move(i->second));
        i = sessions.erase(i);
      } else {
        ++i;
      }
    }
    return gone;
  }
};

} // namespace detail
} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<modelreg::detail::gateway_core>)

namespace modelreg {
namespace {

using detail::gateway_core;
using core_ptr = std::shared_ptr<gateway_core>;
using core_atom = caf::atom_constant<caf::atom("core")>;
using drained_atom = caf::atom_constant<caf::atom("drained")>;

/// Counts one request in flight, for its peer and node-wide, until `done()`
/// (or its destruction): on whatever thread answers it.
class flight_guard {
public:
  flight_guard(core_ptr core, std::shared_ptr<peer_counter> counter)
    : core_(std::move(core)), counter_(std::move(counter)) {}
  ~flight_guard() { done(); }
  flight_guard(const flight_guard&) = delete;
  flight_guard& operator=(const flight_guard&) = delete;

  void done() {
    if (done_.exchange(true))
      return;
    counter_->in_flight.fetch_sub(1);
    if (core_->in_flight.fetch_sub(1) == 1 && core_->stopping.load())
      if (auto gw = core_->gateway.lock())
        caf::anon_send(caf::actor_cast<caf::actor>(gw), drained_atom::value);
  }

private:
  core_ptr core_;
  std::shared_ptr<peer_counter> counter_;
  std::atomic<bool> done_{false};
};

using flight = std::shared_ptr<flight_guard>;

/// A flight for one more request of a peer, or `overloaded` past its limit
/// (unless `limited` is false: a request whose number is bounded otherwise).
caf::expected<flight> take_flight(const core_ptr& core, const std::shared_ptr<peer_counter>& c,
                                  bool limited = true) {
  auto before = c->in_flight.fetch_add(1);
  core->in_flight.fetch_add(1);
  auto f = std::make_shared<flight_guard>(core, c);
  if (limited && before >= core->max_in_flight_per_peer)
    return make_error(errc::overloaded,
                      std::to_string(before) +
                        " requests of this connection are in flight (the limit, "
                        "max_in_flight_per_peer): wait for answers first");
  return f;
}

struct gateway_state {
  static inline const char* name = "modelreg.gateway";
  // Not an aggregate: CAF would otherwise try to build it from the self pointer.
  gateway_state() = default;
  registry_actor registry;
  gateway_options options;
  std::map<uint64_t, peer> peers;
  /// Peers on other hosts: actor address -> peer id.
  std::map<caf::actor_addr, uint64_t> remote_ids;
  uint64_t next_remote_id = uint64_t{1} << 40; // apart from connection ids
  uint64_t next_lease = 1;
  std::shared_ptr<shm::pool> remote_pool;
  std::shared_ptr<transport::copy_counters> remote_counters =
    std::make_shared<transport::copy_counters>();
  bool subscribed_to_registry = false;
  bool stopping = false;
  core_ptr core;
  /// Loads whose answer has not gone out: a stopping node answers them at
  /// once (`shutting_down`) instead of leaving their callers to a timeout.
  struct waiting_load {
    std::shared_ptr<peer_link> link;
    uint64_t id;
    std::string key;
    std::function<void()> done;
  };
  std::map<uint64_t, waiting_load> waiting_loads;
  uint64_t next_load = 1;
};

/// The gateway plus its private timer message.
using gateway_impl = gateway_actor::extend<caf::reacts_to<force_quit_atom>,
                                           caf::reacts_to<drained_atom>,
                                           caf::replies_to<core_atom>::with<core_ptr>>;
using gateway_ptr = gateway_impl::stateful_pointer<gateway_state>;

void respond_error(peer_link& link, uint64_t id, const caf::error& err) {
  auto frame = link.new_frame();
  auto resp = frame.root().initResponse();
  resp.setId(id);
  transport::put_error(resp.initError(), err);
  link.send(frame);
}

void respond_outputs(peer_link& link, uint64_t id, const tensor_map& outputs) {
  auto frame = link.new_frame();
  auto resp = frame.root().initResponse();
  resp.setId(id);
  if (auto err = frame.put_tensors(resp.initOutputs(static_cast<uint32_t>(outputs.size())), outputs))
    return respond_error(link, id, err);
  if (auto err = link.send(frame))
    respond_error(link, id, err); // e.g. quota_exceeded: the connection stays usable
}

void respond_ok(peer_link& link, uint64_t id) {
  auto frame = link.new_frame();
  auto resp = frame.root().initResponse();
  resp.setId(id);
  resp.setOk();
  link.send(frame);
}

void maybe_quit(gateway_ptr self) {
  if (self->state.stopping && self->state.core->in_flight.load() == 0)
    self->quit();
}

/// Why `role` may not make `request`, or nothing if it may.
caf::error authorize(peer_role role, wire::Request::Reader request) {
  if (role == peer_role::admin)
    return {};
  switch (request.which()) {
    case wire::Request::GET_OR_LOAD:
      if (request.getGetOrLoad().getSpec().getBackend().size() == 0)
        return {}; // a catalog name
      return make_error(errc::permission_denied,
                        "loading a model spec needs the admin role; this peer may load "
                        "catalog names only");
    case wire::Request::UNLOAD:
      return make_error(errc::permission_denied, "unloading needs the admin role");
    default:
      return {};
  }
}

/// Tells `h`'s model that `peer`'s session is over (no answer awaited).
void cancel_session(const model_handle& h, uint64_t session, uint64_t peer_id) {
  session_request cancel;
  cancel.op = session_op::cancel;
  cancel.session = session;
  cancel.client = peer_id;
  caf::anon_send(h.actor(), std::move(cancel));
}

/// Sends a session's push or finish to its model; the model's thread
/// answers the peer (outputs into memory the peer maps).
void session_step(const model_handle& h, session_op op, uint64_t session, uint64_t peer_id,
                  const std::shared_ptr<peer_link>& link, uint64_t id, tensor_map inputs,
                  flight f) {
  session_request req;
  req.op = op;
  req.session = session;
  req.inputs = std::move(inputs);
  req.client = peer_id;
  req.allocator = link->allocator();
  req.ticket = h.ticket();
  req.reply = std::make_shared<reply_sink>(
    [link, id, f](caf::expected<tensor_map> out) {
      if (out)
        respond_outputs(*link, id, *out);
      else
        respond_error(*link, id, out.error());
      f->done();
    },
    [link] { return link->open(); });
  caf::anon_send(h.actor(), std::move(req));
}

caf::error no_session(uint64_t session) {
  return make_error(errc::invalid_argument,
                    "no open session " + std::to_string(session) +
                      " on this connection (finished, cancelled, or never opened here)");
}

/// Checks list lengths before anything walks them.
caf::error check_limits(const gateway_options& opts, wire::Request::Reader request) {
  if (request.isOpenSession() && request.getOpenSession().getWaitMs() > 600000)
    return make_error(errc::invalid_argument, "an open may wait at most 600000 ms");
  if (request.isGetOrLoad()) {
    auto params = request.getGetOrLoad().getSpec().getParams().size();
    if (params > opts.max_spec_params)
      return make_error(errc::invalid_argument,
                        "a model spec with " + std::to_string(params) + " parameters (at most " +
                          std::to_string(opts.max_spec_params) + ")");
  }
  return {};
}

/// Runs a decoded Infer request on the model of `lease`: here, if the model
/// is quick (this thread encodes and sends the answer), else through its
/// actor, with a reply sink that encodes and sends the answer from the
/// model's thread.
void infer_direct(gateway_core& core, const gateway_core::lease_entry& lease, uint64_t id,
                  tensor_map inputs, flight f) {
  core.on_lease.fetch_add(1, std::memory_order_relaxed);
  auto link = lease.link;
  auto alloc = link->allocator();
  if (auto out = lease.handle.try_infer_here(inputs, alloc ? *alloc : heap_allocator())) {
    core.quick.fetch_add(1, std::memory_order_relaxed);
    inputs.clear(); // the caller's memory goes back before the answer
    if (*out)
      respond_outputs(*link, id, **out);
    else
      respond_error(*link, id, out->error());
    return f->done();
  }
  auto sink = std::make_shared<reply_sink>([link, id, f](caf::expected<tensor_map> out) {
    if (out)
      respond_outputs(*link, id, *out);
    else
      respond_error(*link, id, out.error());
    f->done();
  }, [link] { return link->open(); });
  caf::anon_send(lease.handle.actor(),
                 infer_request{std::move(inputs), lease.handle.ticket(), std::move(alloc),
                               std::move(sink), lease.peer});
}

/// What became of an Infer frame that names a lease.
enum class lease_outcome {
  handled,   // handed to the model, or answered with an error
  not_mine,  // not an Infer with a lease: the gateway's business
  by_key,    // its model left the registry (crashed, its holder gone, or stopping): the
             // registry answers it by key, on a copy loaded since if there is one
};

/// The per-frame path, on the thread that decoded the frame (a
/// connection's loop thread, or the gateway for a peer on another host).
/// `link` answers the peer if the lease does not.
lease_outcome infer_on_lease(const core_ptr& core, uint64_t peer_id, const frame_ptr& frame,
                             const std::function<std::shared_ptr<peer_link>()>& link) {
  auto root = frame->root();
  if (!root.isRequest() || !root.getRequest().isInfer() ||
      root.getRequest().getInfer().getLease() == 0)
    return lease_outcome::not_mine;
  auto request = root.getRequest();
  auto id = request.getId();
  auto r = request.getInfer();
  if (core->stopping.load()) {
    respond_error(*link(), id, make_error(errc::shutting_down, "the node is shutting down"));
    return lease_outcome::handled;
  }
  auto lease = core->find(r.getLease(), peer_id);
  if (!lease) {
    // Never issued, released, or another connection's: the same answer, so
    // a peer learns nothing about other peers' leases.
    respond_error(*link(), id,
                  make_error(errc::handle_released,
                             "lease " + std::to_string(r.getLease()) +
                               " is not held by this connection (released, or never given to "
                               "it): load the model again"));
    return lease_outcome::handled;
  }
  if (r.getKey().size() > 0 && lease->handle.key() != r.getKey().cStr()) {
    respond_error(*lease->link, id,
                  make_error(errc::invalid_argument, "lease " + std::to_string(r.getLease()) +
                                                       " is for '" + lease->handle.key() +
                                                       "', not '" + r.getKey().cStr() + "'"));
    return lease_outcome::handled;
  }
  if (!lease->handle.valid())
    return lease_outcome::by_key;
  auto f = take_flight(core, lease->counter);
  if (!f) {
    respond_error(*lease->link, id, f.error());
    return lease_outcome::handled;
  }
  // Views of the sender's memory: the model reads its inputs in place.
  auto inputs = frame->tensors(r.getInputs());
  if (!inputs) {
    respond_error(*lease->link, id, inputs.error());
    return lease_outcome::handled;
  }
  infer_direct(*core, *lease, id, std::move(*inputs), std::move(*f));
  return lease_outcome::handled;
}

/// A session's push, finish or cancel, on the thread that decoded the
/// frame: straight to the session's model, whose thread answers. Frames of
/// one connection are decoded in order on one thread, so its steps reach
/// the model in order, and a finish ends the session before a later push
/// is looked up.
lease_outcome step_session(const core_ptr& core, uint64_t peer_id, const frame_ptr& frame,
                           const std::function<std::shared_ptr<peer_link>()>& link) {
  auto root = frame->root();
  if (!root.isRequest())
    return lease_outcome::not_mine;
  auto request = root.getRequest();
  uint64_t session = 0;
  session_op op{};
  switch (request.which()) {
    case wire::Request::PUSH:
      session = request.getPush().getSession();
      op = session_op::push;
      break;
    case wire::Request::FINISH_SESSION:
      session = request.getFinishSession();
      op = session_op::finish;
      break;
    case wire::Request::CANCEL_SESSION:
      session = request.getCancelSession();
      op = session_op::cancel;
      break;
    default:
      return lease_outcome::not_mine;
  }
  auto id = request.getId();
  if (core->stopping.load()) {
    respond_error(*link(), id, make_error(errc::shutting_down, "the node is shutting down"));
    return lease_outcome::handled;
  }
  auto s = core->find_session(session, peer_id, op != session_op::push);
  if (!s) {
    respond_error(*link(), id, no_session(session));
    return lease_outcome::handled;
  }
  if (op == session_op::cancel) {
    cancel_session(s->handle, session, peer_id);
    respond_ok(*s->link, id);
    return lease_outcome::handled;
  }
  // A finish is not refused for the limit: the session has ended here, and
  // a peer has at most max_sessions_per_peer of them.
  auto f = take_flight(core, s->counter, op == session_op::push);
  if (!f) {
    respond_error(*s->link, id, f.error());
    return lease_outcome::handled;
  }
  tensor_map inputs;
  if (op == session_op::push) {
    // Views of the sender's memory: the model reads the chunk in place.
    auto chunk = frame->tensors(request.getPush().getInputs());
    if (!chunk) {
      respond_error(*s->link, id, chunk.error());
      return lease_outcome::handled;
    }
    inputs = std::move(*chunk);
  }
  session_step(s->handle, op, session, peer_id, s->link, id, std::move(inputs), std::move(*f));
  return lease_outcome::handled;
}

/// What a connection's thread serves itself: infers on a lease and session
/// steps. The rest is the gateway's business (`not_mine`), or the
/// registry's (`by_key`).
lease_outcome serve_on_thread(const core_ptr& core, uint64_t peer_id, const frame_ptr& frame,
                              const std::function<std::shared_ptr<peer_link>()>& link) {
  auto done = infer_on_lease(core, peer_id, frame, link);
  if (done == lease_outcome::not_mine)
    done = step_session(core, peer_id, frame, link);
  return done;
}

void handle_request(gateway_ptr self, uint64_t peer_id, const frame_ptr& frame) {
  auto& st = self->state;
  auto& p = st.peers[peer_id];
  auto link = p.link;
  if (serve_on_thread(st.core, peer_id, frame, [link] { return link; }) == lease_outcome::handled)
    return;
  auto request = frame->root().getRequest();
  auto id = request.getId();
  if (st.stopping)
    return respond_error(*link, id, make_error(errc::shutting_down, "the node is shutting down"));
  auto taken = take_flight(st.core, p.counter);
  if (!taken)
    return respond_error(*link, id, taken.error());
  auto f = std::move(*taken);
  if (auto err = authorize(p.role, request))
    return respond_error(*link, id, err);
  if (auto err = check_limits(st.options, request))
    return respond_error(*link, id, err);
  // No timer per request unless asked for: a timeout costs a clock event per
  // request, and a dead model actor already answers with an error.
  caf::duration timeout = st.options.request_timeout.count() > 0
                            ? caf::duration{st.options.request_timeout}
                            : caf::infinite;
  auto on_error = [f, link, id](caf::error& err) {
    // A model actor that died under a direct request: the caller should
    // reload, not reconnect.
    if (err == caf::sec::request_receiver_down)
      err = make_error(errc::model_crashed, "the model actor is down; the next load reloads it");
    else
      err = as_modelreg_error(std::move(err), errc::infer_failed, "the model");
    respond_error(*link, id, err);
    f->done();
  };
  switch (request.which()) {
    case wire::Request::GET_OR_LOAD: {
      auto r = request.getGetOrLoad();
      std::string key = r.getKey();
      auto token = st.next_load++;
      st.waiting_loads.emplace(token, gateway_state::waiting_load{link, id, key, [f] { f->done(); }});
      // True once: the answer is this one's to give (not already given
      // `shutting_down` by a stopping node).
      auto claim = [self, token] { return self->state.waiting_loads.erase(token) > 0; };
      self->request(st.registry, timeout, get_or_load_atom::value, key, transport::spec_of(r.getSpec()))
        .then(
          [self, f, link, peer_id, id, claim](model_handle& h) {
            if (!claim())
              return; // answered already; the handle goes with this scope
            auto& st = self->state;
            auto i = st.peers.find(peer_id);
            if (i == st.peers.end()) { // the peer left meanwhile: drop the handle
              f->done();
              return;
            }
            auto lease = st.next_lease++;
            st.core->add(lease, {peer_id, h, i->second.link, i->second.counter});
            auto out = link->new_frame();
            auto resp = out.root().initResponse();
            resp.setId(id);
            auto w = resp.initHandle();
            w.setLease(lease);
            w.setKey(h.key());
            w.setGeneration(h.generation());
            w.setMemoryBytes(h.memory_bytes());
            w.setDescription(h.description());
            link->send(out);
            f->done();
          },
          [on_error, claim](caf::error& err) {
            if (claim())
              on_error(err);
          });
      return;
    }
    case wire::Request::INFER: {
      auto r = request.getInfer();
      // Views of the sender's memory: the model reads its inputs in place.
      auto inputs = frame->tensors(r.getInputs());
      if (!inputs) {
        respond_error(*link, id, inputs.error());
        return f->done();
      }
      std::string key = r.getKey();
      if (auto lease = st.core->find_by_key(peer_id, key)) {
        // The peer holds this model but did not name its lease: straight to
        // the model all the same, outputs into memory the peer maps.
        return infer_direct(*st.core, *lease, id, std::move(*inputs), std::move(f));
      }
      st.core->by_key.fetch_add(1, std::memory_order_relaxed);
      // A request on a lease whose model left the registry comes here too
      // (a client names any lease it holds on the key): a copy loaded since
      // answers it; without one, its caller is told that the model it held
      // is gone, not that nothing was ever loaded under the key.
      auto lease = r.getLease();
      self->request(st.registry, timeout, infer_atom::value, key, std::move(*inputs))
        .then(
          [f, link, id](tensor_map& out) {
            respond_outputs(*link, id, out);
            f->done();
          },
          [on_error, lease, key](caf::error& err) {
            if (lease != 0 && is(err, errc::model_not_found))
              err = make_error(errc::model_crashed,
                               "model '" + key + "' of lease " + std::to_string(lease) +
                                 " is no longer loaded (it crashed, its holder went away, or "
                                 "it was stopped): get it again");
            on_error(err);
          });
      return;
    }
    case wire::Request::RELEASE: {
      if (!st.core->remove(request.getRelease(), peer_id))
        respond_error(*link, id, make_error(errc::invalid_argument, "no such lease"));
      else
        respond_ok(*link, id);
      return f->done();
    }
    case wire::Request::UNLOAD:
      self->request(st.registry, timeout, unload_atom::value, std::string{request.getUnload()})
        .then(
          [f, link, id](const eviction_report& rep) {
            auto out = link->new_frame();
            auto resp = out.root().initResponse();
            resp.setId(id);
            auto e = resp.initEvicted();
            e.setCount(rep.count);
            e.setFreedBytes(rep.freed_bytes);
            link->send(out);
            f->done();
          },
          on_error);
      return;
    case wire::Request::STATUS:
      self->request(st.registry, timeout, list_atom::value)
        .then(
          [self, f, link, id](const registry_snapshot& snap) {
            auto json = nlohmann::json::parse(to_json(snap));
            json["connections"] = self->state.peers.size();
            json["gateway"] = {{"requests_on_lease", self->state.core->on_lease.load()},
                               {"requests_run_here", self->state.core->quick.load()},
                               {"requests_by_key", self->state.core->by_key.load()}};
            json["catalog"] = self->state.options.catalog;
            if (!self->state.options.catalog_details.empty())
              json["catalog_details"] =
                nlohmann::json::parse(self->state.options.catalog_details, nullptr, false);
            if (self->state.options.cluster_status) {
              auto cluster = self->state.options.cluster_status();
              if (!cluster.empty())
                json["cluster"] = nlohmann::json::parse(cluster, nullptr, false);
            }
            if (auto ep = self->state.options.endpoint.lock()) {
              auto es = ep->stats();
              json["transport"] = {{"connections", es.connections},
                                   {"zero_copy_tensors", es.zero_copy_tensors},
                                   {"copied_bytes", es.copied_bytes},
                                   {"rejected_frames", es.rejected_frames},
                                   {"loans_outstanding", es.pool.loans_outstanding},
                                   {"bytes_lent", es.pool.bytes_lent},
                                   {"bytes_mapped", es.pool.bytes_mapped}};
            }
            auto out = link->new_frame();
            auto resp = out.root().initResponse();
            resp.setId(id);
            resp.setStatusJson(json.dump());
            link->send(out);
            f->done();
          },
          on_error);
      return;
    case wire::Request::SUBSCRIBE:
      p.subscribed = true;
      if (!st.subscribed_to_registry) {
        st.subscribed_to_registry = true;
        self->send(st.registry, subscribe_atom::value,
                   caf::actor_cast<status_listener>(self));
      }
      respond_ok(*link, id);
      return f->done();
    case wire::Request::UNSUBSCRIBE:
      p.subscribed = false;
      respond_ok(*link, id);
      return f->done();
    case wire::Request::ECHO: {
      auto tensors = frame->tensors(request.getEcho());
      if (!tensors)
        respond_error(*link, id, tensors.error());
      else
        respond_outputs(*link, id, *tensors);
      return f->done();
    }
    case wire::Request::OPEN_SESSION: {
      auto r = request.getOpenSession();
      auto open_now = st.core->sessions_of(peer_id);
      if (open_now + p.opening >= st.options.max_sessions_per_peer) {
        respond_error(*link, id,
                      make_error(errc::quota_exceeded,
                                 "this connection has " + std::to_string(open_now + p.opening) +
                                   " sessions open (at most " +
                                   std::to_string(st.options.max_sessions_per_peer) + ")"));
        return f->done();
      }
      ++p.opening;
      std::string key = r.getKey();
      auto wait = std::chrono::milliseconds{r.getWaitMs()};
      // Opens the session on `h` and records it for this peer.
      auto open = [self, f, link, peer_id, id, wait](model_handle h) {
        session_request req;
        req.op = session_op::open;
        req.client = peer_id;
        req.wait = wait;
        req.ticket = h.ticket();
        auto actor = h.actor();
        self->request(actor, caf::infinite, std::move(req))
          .then(
            [self, f, link, peer_id, id, h](tensor_map& out) {
              auto& st = self->state;
              auto s = out.find("session");
              auto i = st.peers.find(peer_id);
              if (i != st.peers.end())
                --i->second.opening;
              if (s == out.end() || s->second.type() != dtype::u64) {
                respond_error(*link, id, make_error(errc::infer_failed, "the model opened no session"));
                return f->done();
              }
              auto session = (*s->second.values<uint64_t>())[0];
              if (i == st.peers.end()) { // the peer left meanwhile
                cancel_session(h, session, peer_id);
                return f->done();
              }
              st.core->add_session(session, {peer_id, h, link, i->second.counter});
              auto frame = link->new_frame();
              auto resp = frame.root().initResponse();
              resp.setId(id);
              resp.setSession(session);
              link->send(frame);
              f->done();
            },
            [self, f, link, peer_id, id](caf::error& err) {
              if (auto i = self->state.peers.find(peer_id); i != self->state.peers.end())
                --i->second.opening;
              respond_error(*link, id, as_modelreg_error(std::move(err), errc::infer_failed, "the model"));
              f->done();
            });
      };
      if (r.getLease() != 0) {
        auto lease = st.core->find(r.getLease(), peer_id);
        if (!lease) {
          --p.opening;
          respond_error(*link, id, make_error(errc::handle_released, "lease " +
                                                                       std::to_string(r.getLease()) +
                                                                       " is not held by this connection"));
          return f->done();
        }
        return open(lease->handle);
      }
      // By name: loaded if it is not (a catalog name, as a load by name).
      self->request(st.registry, timeout, get_or_load_atom::value, key, model_spec{})
        .then([open](model_handle& h) { open(h); },
              [self, f, link, peer_id, id](caf::error& err) {
                if (auto i = self->state.peers.find(peer_id); i != self->state.peers.end())
                  --i->second.opening;
                respond_error(*link, id, as_modelreg_error(std::move(err), errc::load_failed, "the model"));
                f->done();
              });
      return;
    }
    default:
      respond_error(*link, id, make_error(errc::unsupported, "request not supported"));
      return f->done();
  }
}

void on_frame(gateway_ptr self, uint64_t peer_id, const frame_ptr& frame) {
  if (frame->root().isRequest())
    handle_request(self, peer_id, frame);
}

void drop_peer(gateway_ptr self, uint64_t peer_id, const char* why) {
  auto i = self->state.peers.find(peer_id);
  if (i == self->state.peers.end())
    return;
  auto n = self->state.core->remove_peer(peer_id);
  // Its sessions end with it: their instances are free for the others.
  for (auto& [session, e] : self->state.core->remove_peer_sessions(peer_id))
    cancel_session(e.handle, session, peer_id);
  self->state.peers.erase(i);
  log::get("modelreg.gateway")->info("peer {} {}: released {} leases", peer_id, why, n);
}

peer_role role_of_uid(const gateway_options& opts, uid_t uid) {
  if (uid == opts.owner_uid)
    return peer_role::admin;
  for (auto admin : opts.admin_uids)
    if (admin == uid)
      return peer_role::admin;
  return peer_role::infer;
}

void tell_goodbye(peer_link& link, const std::string& why) {
  auto frame = link.new_frame();
  frame.root().setGoodbye(why);
  link.send(frame);
}

gateway_impl::behavior_type gateway(gateway_ptr self, registry_actor registry,
                                     gateway_options options) {
  self->state.registry = std::move(registry);
  self->state.options = options;
  auto core = std::make_shared<gateway_core>();
  core->gateway = caf::actor_cast<caf::weak_actor_ptr>(self->ctrl());
  core->max_in_flight_per_peer = options.max_in_flight_per_peer;
  self->state.core = core;
  // However the gateway ends, leased frames are refused and the leases go.
  self->attach_functor([core] {
    core->stopping.store(true);
    std::unordered_map<uint64_t, gateway_core::lease_entry> gone, ended;
    std::lock_guard guard{core->mutex};
    gone.swap(core->leases);
    ended.swap(core->sessions);
  });
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& ids = self->state.remote_ids;
    if (auto i = ids.find(dm.source); i != ids.end()) {
      drop_peer(self, i->second, "went away");
      ids.erase(i);
    }
  });
  return {
    [self](inbound_atom, const connection_ptr& conn, const frame_ptr& frame) {
      // A frame that raced its connection's end: the peer is retired (or
      // about to be, by the `closed` message already queued); never revive it.
      if (!conn->is_open())
        return;
      auto& p = self->state.peers[conn->id()];
      if (!p.link) {
        p.link = std::make_shared<shm_link>(conn);
        p.role = role_of_uid(self->state.options, conn->peer().uid);
      }
      on_frame(self, conn->id(), frame);
    },
    [self](closed_atom, const connection_ptr& conn) { drop_peer(self, conn->id(), "closed"); },
    [self](remote_frame_atom, const caf::actor& sender, uint8_t role,
           const std::vector<char>& bytes) {
      auto& st = self->state;
      if (!sender)
        return;
      auto i = st.remote_ids.find(sender.address());
      if (i == st.remote_ids.end()) {
        if (!st.remote_pool)
          st.remote_pool = shm::pool::create();
        i = st.remote_ids.emplace(sender.address(), st.next_remote_id++).first;
        auto& p = st.peers[i->second];
        p.link = std::make_shared<remote_link>(sender, st.remote_pool, st.remote_counters);
        p.role = role == static_cast<uint8_t>(peer_role::admin) ? peer_role::admin
                                                                 : peer_role::infer;
        self->monitor(sender);
      }
      auto frame = transport::from_bytes(bytes, *st.remote_counters);
      if (!frame) {
        log::get("modelreg.gateway")->warn("peer {}: {}", i->second, describe(frame.error()));
        return;
      }
      on_frame(self, i->second, *frame);
    },
    [self](status_atom, const status_event& ev) {
      auto json = to_json(ev);
      for (auto& [id, p] : self->state.peers) {
        if (!p.subscribed)
          continue;
        auto frame = p.link->new_frame();
        frame.root().setEvent(json);
        p.link->send(frame);
      }
    },
    [](snapshot_atom, const registry_snapshot&) {
      // Peers ask for snapshots when they want them (status requests).
    },
    [self](shutdown_atom) {
      auto& st = self->state;
      if (st.stopping)
        return;
      st.stopping = true;
      st.core->stopping.store(true);
      for (auto& [id, p] : st.peers)
        tell_goodbye(*p.link, "the node is shutting down");
      // A load may take minutes: its callers hear now, not at a timeout.
      auto loads = std::move(st.waiting_loads);
      st.waiting_loads.clear();
      for (auto& [token, w] : loads) {
        respond_error(*w.link, w.id,
                      make_error(errc::shutting_down, "the node is stopping; the load of '" +
                                                        w.key + "' was abandoned"));
        w.done();
      }
      self->delayed_send(self, st.options.drain_timeout, force_quit_atom::value);
      maybe_quit(self);
    },
    [self](force_quit_atom) { self->quit(); },
    [self](drained_atom) { maybe_quit(self); },
    [self](core_atom) { return self->state.core; },
  };
}

} // namespace

gateway_actor spawn_gateway(caf::actor_system& sys, registry_actor registry,
                            gateway_options options) {
  return caf::actor_cast<gateway_actor>(sys.spawn(gateway, std::move(registry), options));
}

namespace {

/// Listens through `listen(on_frame, on_closed)` with the gateway's handlers.
template <class Listen>
caf::error listen_with(const gateway_actor& gw, Listen listen) {
  core_ptr core;
  {
    caf::scoped_actor self{caf::actor_cast<caf::actor>(gw).home_system()};
    self->request(caf::actor_cast<caf::actor>(gw), timeouts::request, core_atom::value)
      .receive([&](core_ptr& c) { core = std::move(c); }, [](caf::error&) {});
  }
  if (!core)
    return make_error(errc::unavailable, "the gateway is not running");
  // The loop thread hands an Infer on a lease, and a session's steps,
  // straight to the model actor (the model's thread answers); everything
  // else goes to the gateway.
  caf::weak_actor_ptr weak = caf::actor_cast<caf::weak_actor_ptr>(gw);
  return listen(
    [weak, core](const connection_ptr& conn, frame_ptr frame) {
      auto own_link = [&conn]() -> std::shared_ptr<peer_link> {
        return std::make_shared<shm_link>(conn);
      };
      if (serve_on_thread(core, conn->id(), frame, own_link) == lease_outcome::handled)
        return;
      if (auto strong = weak.lock())
        caf::anon_send(caf::actor_cast<gateway_actor>(strong), inbound_atom::value, conn,
                       std::move(frame));
    },
    [weak](const connection_ptr& conn, const caf::error&) {
      if (auto strong = weak.lock())
        caf::anon_send(caf::actor_cast<gateway_actor>(strong), closed_atom::value, conn);
    });
}

} // namespace

caf::error listen_shm(const gateway_actor& gw, const std::shared_ptr<transport::endpoint>& ep,
                      const std::string& path) {
  return listen_with(gw, [&](auto on_frame, auto on_closed) {
    return ep->listen(path, std::move(on_frame), std::move(on_closed));
  });
}

caf::error listen_shm_socket(const gateway_actor& gw,
                             const std::shared_ptr<transport::endpoint>& ep, int listener) {
  return listen_with(gw, [&](auto on_frame, auto on_closed) {
    return ep->listen_socket(listener, std::move(on_frame), std::move(on_closed));
  });
}

std::string to_string(peer_role role) {
  return role == peer_role::admin ? "admin" : "infer";
}

wire_actor wire_interface(caf::actor_system& sys, const gateway_actor& gw, peer_role role,
                          const caf::actor& cluster) {
  // A companion is not a scheduled behaviour: every message, system
  // messages included, reaches only the callback below, on the thread that
  // delivers it. So a remote peer can send the node nothing but frames (and
  // cluster messages, from admins only).
  auto door = sys.spawn<caf::actor_companion>();
  auto* companion = static_cast<caf::actor_companion*>(caf::actor_cast<caf::abstract_actor*>(door));
  caf::weak_actor_ptr weak = caf::actor_cast<caf::weak_actor_ptr>(gw);
  caf::weak_actor_ptr weak_cluster = caf::actor_cast<caf::weak_actor_ptr>(cluster);
  auto code = static_cast<uint8_t>(role);
  caf::weak_actor_ptr weak_door = caf::actor_cast<caf::weak_actor_ptr>(door);
  companion->on_enqueue([weak, weak_cluster, weak_door, code, role](caf::mailbox_element_ptr ptr) {
    if (!ptr)
      return;
    auto& content = ptr->content();
    if (is_cluster_message(content)) {
      auto target = weak_cluster.lock();
      if (target && role == peer_role::admin && ptr->sender) {
        target->enqueue(std::move(ptr), nullptr);
        return;
      }
      if (ptr->sender && ptr->mid.is_request())
        ptr->sender->enqueue(
          weak_door.lock(), ptr->mid.response_id(),
          caf::make_message(make_error(
            target ? errc::permission_denied : errc::unsupported,
            target ? "joining this node's cluster needs the admin role (mutual TLS with "
                     "--tls-role admin, or --insecure-admin)"
                   : "this node is not in a cluster")),
          nullptr);
      return;
    }
    auto strong = weak.lock();
    if (!strong || !ptr->sender || !content.match_elements<frame_atom, std::vector<char>>()) {
      log::get("modelreg.gateway")->debug("door: dropped a message that is not a frame");
      return;
    }
    caf::anon_send(caf::actor_cast<gateway_actor>(strong), remote_frame_atom::value,
                   caf::actor_cast<caf::actor>(ptr->sender), code,
                   content.get_as<std::vector<char>>(1));
  });
  return caf::actor_cast<wire_actor>(door);
}

void close_wire_interface(const wire_actor& door) {
  if (!door)
    return;
  auto* companion = static_cast<caf::actor_companion*>(caf::actor_cast<caf::abstract_actor*>(door));
  companion->on_enqueue(nullptr);
  // What CAF's own Qt companion does when its widget goes (0.17 exports no
  // `disconnect`): terminate it, which also unpublishes it.
  caf::scoped_execution_unit host{&companion->home_system()};
  companion->cleanup(caf::error{}, &host);
}

caf::expected<gateway_actor> spawn_shm_gateway(caf::actor_system& sys, registry_actor registry,
                                               std::shared_ptr<transport::endpoint> ep,
                                               const std::string& path,
                                               gateway_options options) {
  auto gw = spawn_gateway(sys, std::move(registry), options);
  if (auto err = listen_shm(gw, ep, path)) {
    caf::anon_send_exit(gw, caf::exit_reason::user_shutdown);
    return err;
  }
  return gw;
}

} // namespace modelreg

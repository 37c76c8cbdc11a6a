#include "modelreg/actors/remote_registry.hpp"

#include "modelreg/actors/ask.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <set>

#include <unistd.h>

#include <caf/actor_registry.hpp>
#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/remote_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "modelreg/actors/detail/direct_link.hpp"
#include "modelreg/actors/detail/reach.hpp"
#include "modelreg/actors/detail/entry_block.hpp"
#include "modelreg/actors/detail/lease.hpp"
#include "modelreg/actors/gateway.hpp"
#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/transport/calls.hpp"
#include "modelreg/transport/codec.hpp"

namespace modelreg {

namespace {

using transport::connection_ptr;
using transport::frame_ptr;
using transport::outgoing_frame;

using adopt_atom = caf::atom_constant<caf::atom("adopt")>;
using link_atom = caf::atom_constant<caf::atom("link")>;
using reconnect_atom = caf::atom_constant<caf::atom("reconnect")>;
using allocate_atom = caf::atom_constant<caf::atom("allocate")>;
using stats_atom = caf::atom_constant<caf::atom("stats")>;
using raw_status_atom = caf::atom_constant<caf::atom("rawstatus")>;
using detail::direct_atom;
using answered_atom = caf::atom_constant<caf::atom("answered")>;
using quit_atom = caf::atom_constant<caf::atom("quit")>;
/// A forwarder's session request, for its proxy: (key, session_op, the
/// node's session id, chunk, wait in ms) -> the node's answer.
using remote_session_atom = caf::atom_constant<caf::atom("rsession")>;

/// What a connection attempt produced.
struct link_result {
  uint64_t generation = 0;
  connection_ptr conn;   // unix
  wire_actor server;     // tcp
  caf::error error;
};

} // namespace

} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::link_result)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(std::shared_ptr<modelreg::detail::direct_link>)

namespace modelreg {
namespace {

/// What the proxy does with the answer to one of its calls (in the proxy).
struct pending {
  std::function<void(const frame_ptr&, wire::Response::Reader)> on_response;
  std::function<void(const caf::error&)> on_error;
};

/// A call's answer (or error), on its way from the call table to the proxy.
struct answered {
  std::shared_ptr<pending> call;
  caf::expected<frame_ptr> result;
};
using answered_ptr = std::shared_ptr<answered>;

} // namespace
} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::answered_ptr)

namespace modelreg {
namespace {

struct proxy_state {
  static inline const char* name = "modelreg.remote_registry";
  proxy_state() = default;

  std::string uri;
  node_address where;
  connect_options options;
  std::shared_ptr<transport::endpoint> endpoint;
  bool own_endpoint = false;

  // The current link: a connection (unix) or the gateway's wire actor (tcp).
  connection_ptr conn;
  std::shared_ptr<connection_ptr> conn_box = std::make_shared<connection_ptr>(); // for exit
  wire_actor server;
  bool connected = false;
  bool server_leaving = false; // a goodbye arrived
  uint64_t link_generation = 0;
  uint64_t reconnects = 0;
  std::chrono::milliseconds backoff{0};
  bool reconnect_scheduled = false;

  std::shared_ptr<shm::pool> frame_pool; // tcp frames
  transport::copy_counters tcp_counters;

  std::shared_ptr<detail::direct_link> direct; // the call table of both paths; the Unix link for blocking callers
  std::vector<status_listener> listeners;
  // Handles given out on the current link: lease -> block.
  std::map<uint64_t, std::weak_ptr<detail::entry_block>> handles;
};

using proxy_ptr = caf::stateful_actor<proxy_state>*;

caf::error unavailable(proxy_ptr self, const std::string& why) {
  return make_error(errc::unavailable, "worker unavailable at " + self->state.uri + ": " + why);
}

outgoing_frame new_frame(proxy_ptr self) {
  auto& st = self->state;
  if (st.where.unix_socket)
    return st.conn->new_frame();
  if (!st.frame_pool)
    st.frame_pool = shm::pool::create();
  return outgoing_frame{st.frame_pool, false, st.tcp_counters};
}

caf::error send_frame(proxy_ptr self, outgoing_frame& frame) {
  auto& st = self->state;
  if (st.where.unix_socket)
    return st.conn->send(frame);
  self->send(caf::actor_cast<caf::actor>(st.server), frame_atom::value, transport::to_bytes(frame));
  return {};
}

using request_filler = std::function<caf::error(outgoing_frame&, wire::Request::Builder)>;

/// Fills and sends one request; `done` runs once with its answer or error,
/// on whichever thread has it (the connection's, a TCP frame's in the proxy,
/// or the one that fails the link), so it must not touch the proxy's state.
void send_call(proxy_ptr self, const request_filler& fill, transport::call_table::callback done) {
  auto& st = self->state;
  if (!st.connected || st.server_leaving)
    return done(unavailable(self, st.server_leaving ? "the node is shutting down"
                                                    : "not connected (reconnecting)"));
  auto frame = new_frame(self);
  auto request = frame.root().initRequest();
  auto& calls = st.direct->calls;
  auto id = calls.next_id();
  request.setId(id);
  if (auto err = fill(frame, request))
    return done(err);
  auto shared = std::make_shared<transport::call_table::callback>(std::move(done));
  calls.expect(id, [shared](caf::expected<frame_ptr> r) { (*shared)(std::move(r)); });
  if (auto err = send_frame(self, frame)) {
    if (!calls.forget(id))
      return; // failed meanwhile: the answer is on its way
    if (is(err, errc::peer_disconnected))
      err = unavailable(self, describe(err));
    (*shared)(err);
  }
}

/// Fills and sends one request; `p` gets its answer or error in the proxy
/// (through its mailbox: `p` may touch the proxy's state).
void call(proxy_ptr self, const request_filler& fill, pending p) {
  auto shared = std::make_shared<pending>(std::move(p));
  send_call(self, fill,
            [weak = caf::actor_cast<caf::weak_actor_ptr>(self->ctrl()),
             shared](caf::expected<frame_ptr> result) {
              if (auto proxy = weak.lock())
                caf::anon_send(caf::actor_cast<caf::actor>(proxy), answered_atom::value,
                               std::make_shared<answered>(answered{shared, std::move(result)}));
            });
}

void schedule_reconnect(proxy_ptr self) {
  auto& st = self->state;
  if (!st.options.reconnect || st.reconnect_scheduled)
    return;
  st.reconnect_scheduled = true;
  st.backoff = st.backoff.count() == 0
                 ? st.options.backoff_initial
                 : std::min(st.backoff * 2, st.options.backoff_max);
  self->delayed_send(self, st.backoff, reconnect_atom::value);
}

/// Opens a link to `where` (blocking: runs in connect()'s caller or in a
/// short-lived detached connector, never in the proxy). Frames and closes
/// go to `proxy`, tagged with `generation`.
/// A node's published wire interface at `host:port`, through `mm` (CAF's
/// middleman actor, plain or TLS), within `timeout`: CAF's own
/// `remote_actor` waits for ever on a peer that accepts and never speaks
/// BASP (an HTTP server, say).
///
/// In a system with BASP heartbeats on (`modelreg serve` has them), a
/// heartbeat tick that comes before the peer's handshake closes the new
/// connection at once with `connection_timeout`, however young it is (with
/// ticks every millisecond, about one first connect in five; see the
/// serve test TcpConnectsSucceedWhileTheCallersHeartbeatsTick). That says
/// nothing about the peer: it is tried again while `timeout` lasts.
caf::expected<wire_actor> remote_wire_actor(caf::actor_system& sys, const caf::io::middleman_actor& mm,
                                            const std::string& uri, const std::string& host,
                                            uint16_t port, caf::timespan timeout) {
  auto fail = [&](const std::string& why) {
    return make_error(errc::unavailable, "cannot reach " + uri + ": " + why);
  };
  caf::scoped_actor self{sys};
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    auto left = std::chrono::duration_cast<caf::timespan>(deadline - std::chrono::steady_clock::now());
    caf::expected<wire_actor> out{caf::error{}};
    bool again = false;
    self->request(mm, std::max(left, caf::timespan{std::chrono::milliseconds{1}}),
                  caf::connect_atom::value, host, port)
      .receive(
        [&](const caf::node_id&, caf::strong_actor_ptr& ptr, const std::set<std::string>& ifs) {
          if (!ptr)
            out = fail("nothing is published at port " + std::to_string(port));
          else if (!sys.assignable<wire_actor>(ifs))
            out = fail("the actor published there is not a modelreg node");
          else
            out = caf::actor_cast<wire_actor>(std::move(ptr));
        },
        [&](caf::error& err) {
          if (err == caf::sec::request_timeout)
            out = fail("no modelreg node answered within " +
                       std::to_string(
                         std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) +
                       " ms: something listens there but does not speak CAF's protocol (not a "
                       "modelreg node, or TLS on one side only?)");
          else if (err == caf::sec::cannot_connect_to_node)
            out = fail("nothing listens there (connection refused or host unreachable)");
          else
            out = fail(sys.render(err));
          again = err == caf::sec::connection_timeout;
        });
    if (!again || std::chrono::steady_clock::now() >= deadline)
      return out;
  }
}

} // namespace

caf::expected<caf::actor> reach_node(caf::actor_system& sys, const std::string& uri,
                                     caf::timespan timeout) {
  auto where = parse_connect_uri(uri);
  if (!where)
    return where.error();
  if (where->unix_socket)
    return make_error(errc::invalid_argument, uri + ": a cluster peer is reached over tcp://");
  caf::expected<wire_actor> server{caf::error{}};
  if (sys.has_openssl_manager())
    server = remote_wire_actor(sys, sys.openssl_manager().actor_handle(), uri, where->host,
                               where->port, timeout);
  else
    server = remote_wire_actor(sys, sys.middleman().actor_handle(), uri, where->host,
                               where->port, timeout);
  if (!server)
    return server.error();
  return caf::actor_cast<caf::actor>(std::move(*server));
}

namespace {

link_result open_link(caf::actor_system& sys, const node_address& where, const std::string& uri,
                      const std::shared_ptr<transport::endpoint>& ep, caf::weak_actor_ptr proxy,
                      uint64_t generation, std::shared_ptr<detail::direct_link> direct,
                      caf::timespan connect_timeout) {
  link_result r;
  r.generation = generation;
  if (where.unix_socket) {
    auto conn = ep->connect(
      where.path,
      [proxy, generation, direct](const connection_ptr&, frame_ptr f) {
        if (direct->calls.deliver(f))
          return; // matched: a blocking caller's answer goes to it directly
        if (f->root().isResponse())
          return; // its caller gave up: dropped (its loans go back)
        if (auto strong = proxy.lock())
          caf::anon_send(caf::actor_cast<caf::actor>(strong), inbound_atom::value, generation,
                         std::move(f));
      },
      [proxy, generation](const connection_ptr&, const caf::error& err) {
        if (auto strong = proxy.lock())
          caf::anon_send(caf::actor_cast<caf::actor>(strong), closed_atom::value, generation,
                         describe(err));
      });
    if (!conn)
      r.error = conn.error();
    else
      r.conn = std::move(*conn);
    return r;
  }
  if (!sys.has_middleman()) {
    r.error = make_error(errc::unsupported,
                         "tcp:// needs CAF's middleman: cfg.load<caf::io::middleman>()");
    return r;
  }
  caf::expected<wire_actor> server{caf::error{}};
  if (sys.has_openssl_manager()) {
    // CAF aborts the process on unusable files: check them first.
    const auto& cfg = sys.config();
    if (auto why = check_tls({cfg.openssl_certificate, cfg.openssl_key, cfg.openssl_cafile});
        !why.empty()) {
      r.error = make_error(errc::invalid_argument, why);
      return r;
    }
    server = remote_wire_actor(sys, sys.openssl_manager().actor_handle(), uri, where.host,
                               where.port, connect_timeout);
  } else {
    server = remote_wire_actor(sys, sys.middleman().actor_handle(), uri, where.host, where.port,
                               connect_timeout);
  }
  if (!server)
    r.error = server.error();
  else
    r.server = std::move(*server);
  return r;
}

/// Takes a link that `open_link` produced for the current generation.
caf::error adopt_link(proxy_ptr self, link_result& r) {
  auto& st = self->state;
  if (r.generation != st.link_generation || st.connected) {
    if (r.conn)
      r.conn->close(); // a stale attempt
    return make_error(errc::unavailable, "connection attempt superseded");
  }
  if (r.error)
    return r.error;
  if (st.where.unix_socket) {
    st.conn = std::move(r.conn);
    *st.conn_box = st.conn;
    st.direct->attach(st.conn);
  } else {
    st.server = std::move(r.server);
    self->monitor(st.server);
    st.direct->attach(nullptr);
  }
  st.connected = true;
  st.server_leaving = false;
  st.backoff = std::chrono::milliseconds{0};
  if (!st.listeners.empty())
    call(self, [](outgoing_frame&, wire::Request::Builder r) { r.setSubscribe(); return caf::error{}; },
         pending{[](const frame_ptr&, wire::Response::Reader) {}, [](const caf::error&) {}});
  return {};
}

/// A one-shot detached actor that connects (blocking) and reports back, so
/// the proxy never blocks a scheduler thread.
void connector(caf::event_based_actor* self, caf::actor proxy, node_address where, std::string uri,
               std::shared_ptr<transport::endpoint> ep, uint64_t generation,
               std::shared_ptr<detail::direct_link> direct, caf::timespan timeout) {
  auto r = open_link(self->system(), where, uri, ep, caf::actor_cast<caf::weak_actor_ptr>(proxy),
                     generation, std::move(direct), timeout);
  self->send(proxy, link_atom::value, std::move(r));
}

/// The link is gone: everything waiting on it fails now; reconnect later.
/// `by_caller`: the caller closed it (nothing to warn about).
void disconnected(proxy_ptr self, const std::string& why, bool by_caller = false) {
  auto& st = self->state;
  if (!st.connected)
    return;
  st.connected = false;
  if (st.conn) {
    st.conn->close();
    st.conn.reset();
    st.conn_box->reset();
  }
  if (st.server) {
    self->demonitor(st.server.address());
    st.server = nullptr;
  }
  log::get("modelreg.remote")
    ->log(by_caller ? spdlog::level::debug : spdlog::level::warn,
          "{}: connection lost ({}); {} requests failed", st.uri, why, st.direct->calls.in_flight());
  // Handles go invalid first, so a caller woken by its failed call below
  // already sees its handle invalid.
  for (auto& [lease, weak] : st.handles)
    if (auto block = weak.lock())
      block->retire();
  st.handles.clear();
  // Every call of both paths fails now (the proxy's own through its mailbox).
  st.direct->detach(unavailable(self, why), why);
  schedule_reconnect(self);
}

void on_frame(proxy_ptr self, const frame_ptr& frame) {
  auto& st = self->state;
  auto root = frame->root();
  switch (root.which()) {
    case wire::Frame::RESPONSE: // over TCP: matched like any other
      st.direct->calls.deliver(frame);
      return;
    case wire::Frame::EVENT: {
      status_event ev;
      if (!from_json(root.getEvent(), ev))
        return;
      for (auto& l : st.listeners)
        self->send(l, status_atom::value, ev);
      return;
    }
    case wire::Frame::GOODBYE:
      log::get("modelreg.remote")->info("{}: {}", st.uri, std::string{root.getGoodbye()});
      st.server_leaving = true;
      st.direct->close_to_new_calls("the node is shutting down");
      return;
    default:
      return;
  }
}

/// Asks the node for its status JSON (list and the raw status share it).
void ask_status(proxy_ptr self, std::function<void(std::string)> on_json,
                std::function<void(const caf::error&)> on_error) {
  call(
    self,
    [](outgoing_frame&, wire::Request::Builder r) {
      r.setStatus();
      return caf::error{};
    },
    pending{[on_json, on_error](const frame_ptr&, wire::Response::Reader resp) {
              if (resp.isStatusJson())
                on_json(resp.getStatusJson());
              else
                on_error(make_error(errc::malformed_frame, "expected a status"));
            },
            std::move(on_error)});
}

/// A model actor that forwards to the remote registry by key. Each request
/// keeps its ticket (the caller's model stays in flight) until the answer;
/// requests still unanswered when it stops get `unavailable`. Sessions get
/// ids of this process (the node's ids could be another open session's
/// here); sessions still open when it stops are cancelled there.
struct remote_session {
  uint64_t remote = 0; ///< the node's id
  uint64_t client = 0; ///< who opened it (0: no check)
};

struct forwarder_state {
  static inline const char* name = "modelreg.remote_model";
  std::shared_ptr<std::set<reply_sink_ptr>> pending = std::make_shared<std::set<reply_sink_ptr>>();
  std::shared_ptr<std::map<uint64_t, remote_session>> sessions =
    std::make_shared<std::map<uint64_t, remote_session>>();
};

/// The session answer {"session": u64 [1]}.
tensor_map session_answer(uint64_t id) {
  return {{"session", *tensor::from_values<uint64_t>({id})}};
}

/// Where the forwarder's answer to the current request goes: the request's
/// own sink, else its CAF response. A message sent without a request (a
/// session's cancel) gets a sink that drops the answer: a response promise
/// would hold the forwarder while the forwarder held the promise, and the
/// actor system would wait for it at exit.
reply_sink_ptr answer_sink(model_actor::stateful_pointer<forwarder_state> self,
                           reply_sink_ptr given) {
  if (given)
    return given;
  if (!self->current_sender())
    return std::make_shared<reply_sink>([](caf::expected<tensor_map>) {});
  auto rp = self->make_response_promise<tensor_map>();
  return std::make_shared<reply_sink>(
    [rp](caf::expected<tensor_map> out) mutable { deliver_outputs(rp, std::move(out)); });
}

model_actor::behavior_type forwarder(model_actor::stateful_pointer<forwarder_state> self,
                                     registry_actor proxy, std::string key) {
  self->attach_functor([pending = self->state.pending, sessions = self->state.sessions, proxy,
                        key] {
    for (const auto& reply : *pending)
      reply->deliver(make_error(errc::unavailable, "'" + key + "': the link to its node closed"));
    pending->clear();
    for (const auto& [local, s] : *sessions)
      caf::anon_send(caf::actor_cast<caf::actor>(proxy), remote_session_atom::value, key,
                     static_cast<uint8_t>(session_op::cancel), s.remote, tensor_map{},
                     uint32_t{0});
    sessions->clear();
  });
  return {
    [self, proxy, key](infer_request& req) -> caf::result<tensor_map> {
      auto reply = answer_sink(self, req.reply);
      self->state.pending->insert(reply);
      auto done = [self, reply, ticket = req.ticket](caf::expected<tensor_map> out) {
        self->state.pending->erase(reply);
        reply->deliver(std::move(out));
      };
      self->request(proxy, caf::infinite, infer_atom::value, key, std::move(req.inputs))
        .then([done](tensor_map& out) mutable { done(std::move(out)); },
              [done](caf::error& err) mutable {
                done(as_modelreg_error(std::move(err), errc::unavailable, "the node"));
              });
      return caf::delegated<tensor_map>{};
    },
    [self, proxy, key](session_request& req) -> caf::result<tensor_map> {
      auto& st = self->state;
      auto reply = answer_sink(self, req.reply);
      uint64_t remote = 0;
      if (req.op != session_op::open) {
        auto i = st.sessions->find(req.session);
        if (i == st.sessions->end() ||
            (i->second.client != 0 && req.client != 0 && i->second.client != req.client)) {
          reply->deliver(make_error(errc::invalid_argument,
                                    "no open session " + std::to_string(req.session) + " on '" +
                                      key + "' (finished, cancelled, or never opened by this "
                                            "client)"));
          return caf::delegated<tensor_map>{};
        }
        remote = i->second.remote;
        if (req.op != session_op::push)
          st.sessions->erase(i);
      }
      st.pending->insert(reply);
      auto wait_ms = static_cast<uint32_t>(std::clamp<int64_t>(req.wait.count(), 0, 600000));
      self
        ->request(caf::actor_cast<caf::actor>(proxy), caf::infinite, remote_session_atom::value,
                  key, static_cast<uint8_t>(req.op), remote, std::move(req.inputs), wait_ms)
        .then(
          [self, reply, op = req.op, client = req.client, ticket = req.ticket,
           key](tensor_map& out) {
            self->state.pending->erase(reply);
            if (op == session_op::open) {
              auto s = out.find("session");
              if (s == out.end() || s->second.type() != dtype::u64 ||
                  s->second.element_count() != 1) {
                reply->deliver(make_error(errc::malformed_frame,
                                          "the node answered an open without a session"));
                return;
              }
              auto local = new_session_id();
              (*self->state.sessions)[local] = {(*s->second.values<uint64_t>())[0], client};
              out = session_answer(local);
            }
            reply->deliver(std::move(out));
          },
          [self, reply](caf::error& err) {
            self->state.pending->erase(reply);
            reply->deliver(as_modelreg_error(std::move(err), errc::unavailable, "the node"));
          });
      return caf::delegated<tensor_map>{};
    },
  };
}

model_handle make_handle(proxy_ptr self, wire::Handle::Reader h) {
  std::string key = h.getKey();
  auto fwd = self->system().spawn(forwarder, caf::actor_cast<registry_actor>(self), key);
  auto block = std::make_shared<detail::entry_block>(
    key, h.getGeneration(), fwd, caf::actor_cast<caf::weak_actor_ptr>(self), h.getDescription(),
    h.getMemoryBytes(), std::make_shared<detail::model_stats>(), 0, h.getLease());
  block->handles.store(1); // the lease below
  self->state.handles[h.getLease()] = block;
  self->state.direct->add_lease(key, h.getLease());
  return model_handle{std::make_shared<detail::lease>(block)};
}

caf::behavior proxy(proxy_ptr self, std::string uri, node_address where, connect_options options,
                    std::shared_ptr<transport::endpoint> endpoint, bool own_endpoint,
                    std::shared_ptr<detail::direct_link> direct) {
  auto& st = self->state;
  st.direct = std::move(direct);
  st.uri = std::move(uri);
  st.where = std::move(where);
  st.options = std::move(options);
  st.endpoint = std::move(endpoint);
  st.own_endpoint = own_endpoint;
  st.link_generation = 1; // the link connect() opens
  // However the proxy ends, its connection closes (the gateway then releases
  // its leases) and an endpoint of its own stops.
  // Over TCP, CAF registered the proxy so the node could address it; a node
  // that died never says it is done with it, so the proxy removes itself.
  self->attach_functor([ep = st.endpoint, own = st.own_endpoint, box = st.conn_box,
                        direct = st.direct, uri = st.uri, sys = &self->system(), id = self->id()] {
    direct->detach(make_error(errc::unavailable, "the connection to " + uri + " was closed"),
                   "the connection was closed");
    if (*box)
      (*box)->close();
    if (own)
      ep->stop();
    sys->registry().erase(id);
  });
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    if (st.server && dm.source == st.server.address())
      return disconnected(self, "the worker's node went away");
    auto& ls = st.listeners;
    ls.erase(std::remove_if(ls.begin(), ls.end(),
                            [&](const auto& l) { return l.address() == dm.source; }),
             ls.end());
  });
  return {
    [self](adopt_atom, link_result& r) -> caf::result<bool> {
      if (auto err = adopt_link(self, r))
        return err;
      return true;
    },
    [self](reconnect_atom) {
      auto& st = self->state;
      st.reconnect_scheduled = false;
      if (st.connected)
        return;
      self->spawn<caf::detached>(connector, caf::actor_cast<caf::actor>(self), st.where, st.uri,
                                 st.endpoint, ++st.link_generation, st.direct,
                                 caf::timespan{st.options.connect_timeout});
    },
    [self](link_atom, link_result& r) {
      auto& st = self->state;
      if (auto err = adopt_link(self, r)) {
        if (r.generation == st.link_generation && !st.connected) {
          log::get("modelreg.remote")->debug("{}: reconnect failed: {}", st.uri, describe(err));
          schedule_reconnect(self);
        }
        return;
      }
      ++st.reconnects;
      log::get("modelreg.remote")->info("{}: reconnected", st.uri);
    },
    [self](inbound_atom, uint64_t generation, const frame_ptr& frame) {
      if (generation == self->state.link_generation && self->state.connected)
        on_frame(self, frame);
    },
    [self](closed_atom, uint64_t generation, const std::string& why) {
      if (generation == self->state.link_generation)
        disconnected(self, why);
    },
    [self](frame_atom, const std::vector<char>& bytes) {
      auto& st = self->state;
      auto frame = transport::from_bytes(bytes, st.tcp_counters);
      if (!frame) {
        log::get("modelreg.remote")->warn("{}: {}", st.uri, describe(frame.error()));
        return;
      }
      on_frame(self, *frame);
    },
    [self](get_or_load_atom, const std::string& key,
           const model_spec& spec) -> caf::result<model_handle> {
      auto rp = self->make_response_promise<model_handle>();
      call(
        self,
        [&](outgoing_frame&, wire::Request::Builder r) {
          auto g = r.initGetOrLoad();
          g.setKey(key);
          transport::put_spec(g.initSpec(), spec);
          return caf::error{};
        },
        pending{[self, rp](const frame_ptr&, wire::Response::Reader resp) mutable -> void {
                  if (!resp.isHandle()) {
                    rp.deliver(make_error(errc::malformed_frame, "expected a handle"));
                    return;
                  }
                  rp.deliver(make_handle(self, resp.getHandle()));
                },
                [rp](const caf::error& err) mutable { rp.deliver(err); }});
      return rp;
    },
    [](get_or_load_atom, const std::string&, const loader_fn&) -> caf::result<model_handle> {
      return make_error(errc::unsupported,
                        "a remote registry cannot run an in-process loader: name a catalog "
                        "entry or pass a model spec");
    },
    [self](infer_atom, const std::string& key, const tensor_map& inputs) -> caf::result<tensor_map> {
      auto fill = [&](outgoing_frame& f, wire::Request::Builder r) {
        return transport::put_infer(f, r, key, self->state.direct->lease_for(key), inputs);
      };
      auto* asked = self->current_mailbox_element();
      if (asked != nullptr && asked->sender && asked->mid.is_request() && asked->stages.empty()) {
        // The thread that has the answer sends the response itself, as the
        // proxy would (same sender, same message id): the proxy is not on
        // the way back, one thread hand-off fewer per request.
        send_call(self, fill,
                  [to = asked->sender, id = asked->mid.response_id(),
                   me = caf::actor_cast<caf::strong_actor_ptr>(self->ctrl())](
                    caf::expected<frame_ptr> answer) {
                    auto out = transport::outputs_of(std::move(answer));
                    to->enqueue(me, id,
                                out ? caf::make_message(std::move(*out))
                                    : caf::make_message(std::move(out.error())),
                                nullptr);
                  });
        return caf::delegated<tensor_map>{};
      }
      // Forwarded to the proxy (or sent without a request): the answer goes
      // through the proxy, which delivers the promise on its own thread.
      auto rp = self->make_response_promise<tensor_map>();
      call(self, fill,
           pending{[rp](const frame_ptr& frame, wire::Response::Reader) mutable {
                     deliver_outputs(rp, transport::outputs_of(frame));
                   },
                   [rp](const caf::error& err) mutable { rp.deliver(err); }});
      return rp;
    },
    [self](remote_session_atom, const std::string& key, uint8_t op, uint64_t session,
           const tensor_map& inputs, uint32_t wait_ms) -> caf::result<tensor_map> {
      auto rp = self->make_response_promise<tensor_map>();
      auto kind = static_cast<session_op>(op);
      call(
        self,
        [&](outgoing_frame& f, wire::Request::Builder r) -> caf::error {
          switch (kind) {
            case session_op::open: {
              auto o = r.initOpenSession();
              o.setKey(key);
              o.setLease(self->state.direct->lease_for(key));
              o.setWaitMs(wait_ms);
              return {};
            }
            case session_op::push: {
              auto p = r.initPush();
              p.setSession(session);
              return f.put_tensors(p.initInputs(static_cast<uint32_t>(inputs.size())), inputs);
            }
            case session_op::finish:
              r.setFinishSession(session);
              return {};
            case session_op::cancel:
              r.setCancelSession(session);
              return {};
          }
          return make_error(errc::invalid_argument, "not a session request");
        },
        pending{[rp, kind](const frame_ptr& frame, wire::Response::Reader resp) mutable -> void {
                  if (resp.isError()) {
                    rp.deliver(transport::error_of(resp.getError()));
                  } else if (kind == session_op::open) {
                    if (resp.isSession())
                      rp.deliver(session_answer(resp.getSession()));
                    else
                      rp.deliver(make_error(errc::malformed_frame, "expected a session"));
                  } else if (kind == session_op::cancel) {
                    rp.deliver(tensor_map{});
                  } else {
                    deliver_outputs(rp, transport::outputs_of(frame));
                  }
                },
                [rp](const caf::error& err) mutable { rp.deliver(err); }});
      return rp;
    },
    [](release_atom, const model_handle& h) { return h.release(); },
    [self](handles_zero_atom, const std::string&, uint64_t lease) {
      auto& st = self->state;
      if (st.handles.erase(lease) == 0 || !st.connected)
        return; // from an earlier link: the gateway released it with that link
      st.direct->remove_lease(lease);
      call(
        self,
        [lease](outgoing_frame&, wire::Request::Builder r) {
          r.setRelease(lease);
          return caf::error{};
        },
        pending{[](const frame_ptr&, wire::Response::Reader) {}, [](const caf::error&) {}});
    },
    [self](unload_atom, const std::string& key) -> caf::result<eviction_report> {
      auto rp = self->make_response_promise<eviction_report>();
      call(
        self,
        [&](outgoing_frame&, wire::Request::Builder r) {
          r.setUnload(key);
          return caf::error{};
        },
        pending{[rp](const frame_ptr&, wire::Response::Reader resp) mutable -> void {
                  eviction_report rep;
                  if (resp.isEvicted()) {
                    rep.count = resp.getEvicted().getCount();
                    rep.freed_bytes = resp.getEvicted().getFreedBytes();
                  }
                  rp.deliver(rep);
                },
                [rp](const caf::error& err) mutable { rp.deliver(err); }});
      return rp;
    },
    [](pin_atom, const std::string&, bool) -> caf::result<bool> {
      return make_error(errc::unsupported, "pin is not available on a remote registry");
    },
    [self](list_atom) -> caf::result<registry_snapshot> {
      auto rp = self->make_response_promise<registry_snapshot>();
      ask_status(self, [rp](std::string json) mutable {
        registry_snapshot snap;
        if (from_json(json, snap))
          rp.deliver(std::move(snap));
        else
          rp.deliver(make_error(errc::malformed_frame, "the status is not a snapshot"));
      }, [rp](const caf::error& err) mutable { rp.deliver(err); });
      return rp;
    },
    [self](raw_status_atom) -> caf::result<std::string> {
      auto rp = self->make_response_promise<std::string>();
      ask_status(self, [rp](std::string json) mutable { rp.deliver(std::move(json)); },
                 [rp](const caf::error& err) mutable { rp.deliver(err); });
      return rp;
    },
    [](evict_expired_atom) -> caf::result<eviction_report> {
      return make_error(errc::unsupported, "evict-expired is not available on a remote registry");
    },
    [self](subscribe_atom, const status_listener& l) {
      auto& st = self->state;
      st.listeners.push_back(l);
      self->monitor(l);
      if (st.listeners.size() == 1 && st.connected)
        call(self, [](outgoing_frame&, wire::Request::Builder r) { r.setSubscribe(); return caf::error{}; },
             pending{[](const frame_ptr&, wire::Response::Reader) {}, [](const caf::error&) {}});
    },
    [self](unsubscribe_atom, const status_listener& l) {
      auto& ls = self->state.listeners;
      ls.erase(std::remove(ls.begin(), ls.end(), l), ls.end());
      if (ls.empty() && self->state.connected)
        call(self, [](outgoing_frame&, wire::Request::Builder r) { r.setUnsubscribe(); return caf::error{}; },
             pending{[](const frame_ptr&, wire::Response::Reader) {}, [](const caf::error&) {}});
    },
    [](answered_atom, const answered_ptr& a) {
      auto& call = *a->call;
      if (!a->result)
        return call.on_error(a->result.error());
      auto resp = (*a->result)->root().getResponse();
      if (resp.isError())
        return call.on_error(transport::error_of(resp.getError()));
      call.on_response(*a->result, resp);
    },
    [self](shutdown_atom) {
      auto& st = self->state;
      st.options.reconnect = false;
      disconnected(self, "closed by the caller", true);
      // After the failures of its calls, queued just now by this thread.
      caf::anon_send(caf::actor_cast<caf::actor>(self), quit_atom::value);
    },
    [self](quit_atom) { self->quit(); },
    [self](allocate_atom, uint8_t type, std::vector<int64_t>& shape) -> caf::result<tensor> {
      auto& st = self->state;
      caf::expected<tensor> t{caf::error{}};
      if (st.where.unix_socket && st.connected && st.conn->shared_memory())
        t = st.conn->allocate_tensor(static_cast<dtype>(type), std::move(shape));
      else
        t = tensor::allocate(static_cast<dtype>(type), std::move(shape));
      if (!t)
        return std::move(t.error());
      return std::move(*t);
    },
    [self](stats_atom) -> remote_stats {
      auto& st = self->state;
      remote_stats out;
      out.connected = st.connected;
      out.shared_memory = st.where.unix_socket && st.conn && st.conn->shared_memory();
      out.reconnects = st.reconnects;
      if (st.where.unix_socket) {
        out.zero_copy_tensors = st.endpoint->counters().zero_copy_tensors.load();
        out.copied_bytes = st.endpoint->counters().copied_bytes.load();
      } else {
        out.copied_bytes = st.tcp_counters.copied_bytes.load();
      }
      out.requests_in_flight = st.direct->calls.in_flight();
      return out;
    },
    [self](direct_atom) -> std::shared_ptr<detail::direct_link> {
      auto& st = self->state;
      return st.where.unix_socket ? st.direct : nullptr;
    },
  };
}

} // namespace

caf::expected<registry_actor> connect(caf::actor_system& sys, const std::string& uri,
                                      connect_options options) {
  auto where = parse_connect_uri(uri);
  if (!where)
    return where.error();
  auto endpoint = options.endpoint;
  bool own_endpoint = false;
  if (where->unix_socket && !endpoint) {
    auto started = transport::endpoint::try_start();
    if (!started)
      return started.error();
    endpoint = std::move(*started);
    own_endpoint = true;
  }
  auto direct = std::make_shared<detail::direct_link>();
  direct->uri = uri;
  caf::timespan timeout{options.connect_timeout};
  auto p = sys.spawn(proxy, uri, *where, std::move(options), endpoint, own_endpoint, direct);
  // The first connect runs here: the caller waits for it anyway.
  auto r = open_link(sys, *where, uri, endpoint, caf::actor_cast<caf::weak_actor_ptr>(p), 1,
                     direct, timeout);
  caf::scoped_actor self{sys};
  caf::error failure;
  self->request(p, caf::infinite, adopt_atom::value, std::move(r))
    .receive([](bool) {}, [&](caf::error& err) { failure = std::move(err); });
  if (failure) {
    caf::anon_send_exit(p, caf::exit_reason::user_shutdown);
    if (is(failure, errc::invalid_argument) || is(failure, errc::unavailable))
      return failure;
    return make_error(errc::unavailable, "cannot connect to " + uri + ": " + describe(failure));
  }
  return caf::actor_cast<registry_actor>(p);
}

caf::expected<tensor> allocate_input(caf::actor_system& sys, const registry_actor& remote,
                                     dtype type, std::vector<int64_t> shape) {
  caf::scoped_actor self{sys};
  caf::expected<tensor> out{caf::error{}};
  self->request(caf::actor_cast<caf::actor>(remote), timeouts::request,
                allocate_atom::value, static_cast<uint8_t>(type), std::move(shape))
    .receive([&](tensor& t) { out = std::move(t); },
             [&](caf::error& err) {
               out = make_error(errc::unsupported,
                                "allocate_input needs a registry from connect(): " +
                                  describe(err));
             });
  return out;
}

caf::expected<remote_stats> stats_of(caf::actor_system& sys, const registry_actor& remote) {
  return ask<remote_stats>(sys, caf::actor_cast<caf::actor>(remote), timeouts::request,
                           "the node", stats_atom::value);
}

caf::expected<std::string> remote_status_json(caf::actor_system& sys,
                                              const registry_actor& remote,
                                              caf::timespan timeout) {
  return ask<std::string>(sys, caf::actor_cast<caf::actor>(remote), timeout, "the node",
                          raw_status_atom::value);
}

} // namespace modelreg

#include "modelreg/actors/blocking_client.hpp"

#include <algorithm>

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>

#include "modelreg/actors/detail/direct_link.hpp"

#include "modelreg/actors/ask.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/transport/codec.hpp"

namespace modelreg {

namespace detail {

caf::expected<transport::frame_ptr> direct_link::call(
  const std::function<caf::error(transport::outgoing_frame&, wire::Request::Builder)>& fill,
  caf::timespan timeout) {
  transport::connection_ptr c;
  {
    std::lock_guard guard{mutex};
    if (!conn)
      return make_error(errc::unavailable, "worker unavailable at " + uri + ": " + down_reason);
    c = conn;
  }
  auto id = calls.next_id();
  auto waiting = calls.expect(id); // before sending: the answer may beat the send's return
  auto frame = c->new_frame();
  auto request = frame.root().initRequest();
  request.setId(id);
  if (auto err = fill(frame, request)) {
    calls.forget(id);
    return err;
  }
  if (auto err = c->send(frame)) {
    calls.forget(id);
    if (is(err, errc::peer_disconnected))
      return make_error(errc::unavailable, "worker unavailable at " + uri + ": " + describe(err));
    return err;
  }
  // No polling of the ring here: measured on two cores, a caller that
  // spins for its answer (yielding or not) takes the CPU the node and this
  // process's loop thread need, and the round trip gets slower and costs
  // more context switches (docs/benchmarks.md).
  return calls.wait(id, waiting, timeout, uri);
}

caf::expected<tensor_map> direct_link::infer(const std::string& key, const tensor_map& inputs,
                                            caf::timespan timeout) {
  auto lease = lease_for(key);
  return transport::outputs_of(call(
    [&](transport::outgoing_frame& f, wire::Request::Builder r) {
      return transport::put_infer(f, r, key, lease, inputs);
    },
    timeout));
}

} // namespace detail

blocking_client::blocking_client(caf::actor_system& sys, registry_actor remote)
  : sys_(&sys), remote_(std::move(remote)) {
  caf::scoped_actor self{sys};
  self->request(caf::actor_cast<caf::actor>(remote_), timeouts::request, detail::direct_atom::value)
    .receive([&](std::shared_ptr<detail::direct_link>& link) { link_ = std::move(link); },
             [](caf::error&) {}); // not a proxy from connect(): ordinary requests
}

namespace {

caf::error need_unix_link() {
  return make_error(errc::unsupported,
                    "streaming sessions go over a Unix link (unix:PATH) for now, not TCP");
}

} // namespace

caf::expected<blocking_session> blocking_client::open_session(const std::string& key,
                                                              std::chrono::milliseconds wait,
                                                              caf::timespan timeout) const {
  if (!link_)
    return need_unix_link();
  auto lease = link_->lease_for(key);
  auto answer = link_->call(
    [&](transport::outgoing_frame&, wire::Request::Builder r) {
      auto o = r.initOpenSession();
      o.setKey(key);
      o.setLease(lease);
      o.setWaitMs(static_cast<uint32_t>(std::min<int64_t>(wait.count(), 600000)));
      return caf::error{};
    },
    timeout + wait);
  if (!answer)
    return std::move(answer.error());
  auto resp = (*answer)->root().getResponse();
  if (resp.isError())
    return transport::error_of(resp.getError());
  if (!resp.isSession())
    return make_error(errc::malformed_frame, "the node answered an open without a session");
  return blocking_session{link_, resp.getSession()};
}

blocking_session::blocking_session(blocking_session&& other) noexcept
  : link_(std::move(other.link_)), id_(std::exchange(other.id_, 0)) {}

blocking_session& blocking_session::operator=(blocking_session&& other) noexcept {
  if (this != &other) {
    cancel();
    link_ = std::move(other.link_);
    id_ = std::exchange(other.id_, 0);
  }
  return *this;
}

blocking_session::~blocking_session() {
  cancel();
}

caf::expected<tensor_map> blocking_session::push(const tensor_map& chunk, caf::timespan timeout) {
  if (id_ == 0)
    return make_error(errc::invalid_argument, "the session is closed");
  return transport::outputs_of(link_->call(
    [&](transport::outgoing_frame& f, wire::Request::Builder r) {
      auto p = r.initPush();
      p.setSession(id_);
      return f.put_tensors(p.initInputs(static_cast<uint32_t>(chunk.size())), chunk);
    },
    timeout));
}

caf::expected<tensor_map> blocking_session::finish(caf::timespan timeout) {
  if (id_ == 0)
    return make_error(errc::invalid_argument, "the session is closed");
  auto id = std::exchange(id_, 0);
  return transport::outputs_of(link_->call(
    [id](transport::outgoing_frame&, wire::Request::Builder r) {
      r.setFinishSession(id);
      return caf::error{};
    },
    timeout));
}

void blocking_session::cancel() {
  if (id_ == 0 || !link_)
    return;
  auto id = std::exchange(id_, 0);
  // The answer is not awaited: the node frees the instance either way (and
  // does so when this connection closes, too).
  (void) link_->call(
    [id](transport::outgoing_frame&, wire::Request::Builder r) {
      r.setCancelSession(id);
      return caf::error{};
    },
    timeouts::request);
}

caf::expected<tensor_map> blocking_client::infer(const std::string& key, const tensor_map& inputs,
                                                 caf::timespan timeout) const {
  if (link_)
    return link_->infer(key, inputs, timeout);
  return ask<tensor_map>(*sys_, remote_, timeout, "the node", infer_atom::value, key, inputs);
}

} // namespace modelreg

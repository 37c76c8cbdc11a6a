#include "modelreg/actors/blocking_client.hpp"

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>

#include "modelreg/actors/detail/direct_link.hpp"

#include "modelreg/actors/ask.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/transport/codec.hpp"

namespace modelreg {

namespace detail {

caf::expected<tensor_map> direct_link::infer(const std::string& key, const tensor_map& inputs,
                                            caf::timespan timeout) {
  transport::connection_ptr c;
  uint64_t lease = 0;
  {
    std::lock_guard guard{mutex};
    if (!conn)
      return make_error(errc::unavailable, "worker unavailable at " + uri + ": " + down_reason);
    c = conn;
    if (auto i = leases.find(key); i != leases.end())
      lease = i->second;
  }
  auto id = calls.next_id();
  auto waiting = calls.expect(id); // before sending: the answer may beat the send's return
  auto frame = c->new_frame();
  auto request = frame.root().initRequest();
  request.setId(id);
  if (auto err = transport::put_infer(frame, request, key, lease, inputs)) {
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
  return transport::outputs_of(calls.wait(id, waiting, timeout, uri));
}

} // namespace detail

blocking_client::blocking_client(caf::actor_system& sys, registry_actor remote)
  : sys_(&sys), remote_(std::move(remote)) {
  caf::scoped_actor self{sys};
  self->request(caf::actor_cast<caf::actor>(remote_), timeouts::request, detail::direct_atom::value)
    .receive([&](std::shared_ptr<detail::direct_link>& link) { link_ = std::move(link); },
             [](caf::error&) {}); // not a proxy from connect(): ordinary requests
}

caf::expected<tensor_map> blocking_client::infer(const std::string& key, const tensor_map& inputs,
                                                 caf::timespan timeout) const {
  if (link_)
    return link_->infer(key, inputs, timeout);
  return ask<tensor_map>(*sys_, remote_, timeout, "the node", infer_atom::value, key, inputs);
}

} // namespace modelreg

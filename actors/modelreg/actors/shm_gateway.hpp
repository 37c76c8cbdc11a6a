// The shared-memory gateway: serves a registry actor to other processes on
// this host over the shared-memory transport.
//
// Each inbound frame becomes a local CAF message holding a
// `shared_ptr<const inbound_frame>`; the gateway turns it into the registry's
// ordinary typed requests, with input tensors that view the sender's memory in
// place, and sends the answers back through the transport. Handles given to a
// remote caller are leases owned by its connection: released by a `release`
// request or when the connection closes (the peer exited or died).
//
// Lifetime: the gateway stops on an exit message or `shutdown_atom`; it stops
// listening then, and its endpoint closes every connection when the caller
// stops it.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <caf/typed_actor.hpp>

#include "modelreg/actors/registry_actor.hpp"
#include "modelreg/transport/endpoint.hpp"

namespace modelreg {

using inbound_atom = caf::atom_constant<caf::atom("inbound")>;
using closed_atom = caf::atom_constant<caf::atom("closed")>;

using gateway_actor = caf::typed_actor<
  caf::reacts_to<inbound_atom, transport::connection_ptr, transport::frame_ptr>,
  caf::reacts_to<closed_atom, transport::connection_ptr>,
  caf::reacts_to<shutdown_atom>>;

struct gateway_options {
  /// Registry requests that take longer fail with `unavailable`.
  std::chrono::milliseconds request_timeout{std::chrono::minutes{5}};
};

/// Spawns a gateway for `registry` and makes `ep` listen on `path` for it.
caf::expected<gateway_actor> spawn_shm_gateway(caf::actor_system& sys, registry_actor registry,
                                               std::shared_ptr<transport::endpoint> ep,
                                               const std::string& path,
                                               gateway_options options = {});

} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::transport::connection_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::transport::frame_ptr)

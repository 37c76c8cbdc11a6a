// The gateway: serves a registry actor to other processes, on this host over
// the shared-memory transport and on other hosts through CAF's middleman.
//
// Both kinds of peer speak the same Cap'n Proto frames (wire.capnp). A frame
// from the shared-memory transport arrives as a local CAF message holding a
// `shared_ptr<const inbound_frame>` whose tensors view the sender's memory in
// place; a frame from another host arrives as bytes in a `frame_atom`
// message (tensors inline). The gateway turns each request into the
// registry's ordinary typed requests and sends the answer back the way the
// request came.
//
// Handles given to a peer are leases owned by its connection: released by a
// `release` request or when the connection closes (the peer exited, died, or
// its host went away). While a peer holds a lease on a key, its inferences go
// straight to the model actor, with outputs allocated in memory the peer maps.
//
// Lifetime: `shutdown_atom` starts a graceful stop: every peer is told
// (`goodbye`), new requests get `shutting_down`, requests in flight are
// answered, then the gateway quits (after `drain_timeout` at the latest). Stop
// the endpoint afterwards to close the connections.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <caf/typed_actor.hpp>

#include "modelreg/actors/registry_actor.hpp"
#include "modelreg/transport/endpoint.hpp"

namespace modelreg {

using inbound_atom = caf::atom_constant<caf::atom("inbound")>;
using closed_atom = caf::atom_constant<caf::atom("closed")>;
using frame_atom = caf::atom_constant<caf::atom("frame")>;

/// What a peer on another host and a gateway exchange through CAF's
/// middleman, in both directions: whole frames, tensors inline.
using wire_actor = caf::typed_actor<caf::reacts_to<frame_atom, std::vector<char>>>;

using gateway_actor = caf::typed_actor<
  caf::reacts_to<inbound_atom, transport::connection_ptr, transport::frame_ptr>,
  caf::reacts_to<closed_atom, transport::connection_ptr>,
  caf::reacts_to<frame_atom, std::vector<char>>,
  caf::reacts_to<status_atom, status_event>,
  caf::reacts_to<snapshot_atom, registry_snapshot>,
  caf::reacts_to<shutdown_atom>>;

struct gateway_options {
  /// Registry requests that take longer fail with `unavailable`; 0: no
  /// limit (a model that dies still answers every caller with an error).
  std::chrono::milliseconds request_timeout{0};
  /// A graceful stop waits this long for requests in flight.
  std::chrono::milliseconds drain_timeout{std::chrono::seconds{5}};
  /// Catalog names to list in status answers.
  std::vector<std::string> catalog;
  /// The shared-memory endpoint whose counters status answers include
  /// (zero-copy tensors, copied bytes, memory lent to peers); optional.
  std::weak_ptr<transport::endpoint> endpoint;
};

/// Spawns a gateway for `registry` (not yet listening anywhere).
gateway_actor spawn_gateway(caf::actor_system& sys, registry_actor registry,
                            gateway_options options = {});

/// Makes `ep` listen on the Unix socket `path` and hand its frames to `gw`.
caf::error listen_shm(const gateway_actor& gw, const std::shared_ptr<transport::endpoint>& ep,
                      const std::string& path);

/// The gateway's interface for peers on other hosts: publish this handle
/// with `caf::io::publish` or `caf::openssl::publish`.
wire_actor wire_interface(const gateway_actor& gw);

/// spawn_gateway + listen_shm.
caf::expected<gateway_actor> spawn_shm_gateway(caf::actor_system& sys, registry_actor registry,
                                               std::shared_ptr<transport::endpoint> ep,
                                               const std::string& path,
                                               gateway_options options = {});

} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::transport::connection_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::transport::frame_ptr)

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
// its host went away). An Infer that names a lease its connection holds
// skips the gateway actor: the thread that decoded the frame (the
// connection's loop thread) checks the lease in the gateway's lease table
// and sends an `infer_request` straight to the model actor, whose thread
// sends the answer, with outputs allocated in memory the peer maps. Leases
// the connection does not hold are refused (`handle_released`).
//
// Lifetime: `shutdown_atom` starts a graceful stop: every peer is told
// (`goodbye`), new requests get `shutting_down`, requests in flight are
// answered, then the gateway quits (after `drain_timeout` at the latest). Stop
// the endpoint afterwards to close the connections.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <unistd.h>

#include <caf/typed_actor.hpp>

#include "modelreg/actors/registry_actor.hpp"
#include "modelreg/transport/endpoint.hpp"

namespace modelreg {

using inbound_atom = caf::atom_constant<caf::atom("inbound")>;
using remote_frame_atom = caf::atom_constant<caf::atom("rframe")>;
using closed_atom = caf::atom_constant<caf::atom("closed")>;
using frame_atom = caf::atom_constant<caf::atom("frame")>;

/// What a peer on another host and a gateway exchange through CAF's
/// middleman, in both directions: whole frames, tensors inline.
using wire_actor = caf::typed_actor<caf::reacts_to<frame_atom, std::vector<char>>>;

/// What a peer may ask for (docs/serve.md, "Access and roles").
enum class peer_role : uint8_t {
  /// Inference, leases, status, subscriptions, and loads of catalog names.
  infer = 1,
  /// Also loads of arbitrary model specs and unloads.
  admin = 2,
};

/// "infer" or "admin".
std::string to_string(peer_role role);

using gateway_actor = caf::typed_actor<
  caf::reacts_to<inbound_atom, transport::connection_ptr, transport::frame_ptr>,
  caf::reacts_to<closed_atom, transport::connection_ptr>,
  caf::reacts_to<remote_frame_atom, caf::actor, uint8_t, std::vector<char>>, // role
  caf::reacts_to<status_atom, status_event>,
  caf::reacts_to<snapshot_atom, registry_snapshot>,
  caf::reacts_to<shutdown_atom>>;

struct gateway_options {
  /// Registry requests (loads, inferences routed by key, status) that take
  /// longer fail with `timeout`; 0: no limit (a model that dies still
  /// answers every caller with an error). Inferences on a lease go straight
  /// to the model and have no gateway timer: their callers' deadlines apply.
  std::chrono::milliseconds request_timeout{0};
  /// A graceful stop waits this long for requests in flight.
  std::chrono::milliseconds drain_timeout{std::chrono::seconds{5}};
  /// Catalog names to list in status answers.
  std::vector<std::string> catalog;
  /// The catalog's entries with their backends' declarations (JSON, see
  /// `catalog::describe_json`), in status answers as "catalog_details".
  std::string catalog_details;
  /// The shared-memory endpoint whose counters status answers include
  /// (zero-copy tensors, copied bytes, memory lent to peers); optional.
  std::weak_ptr<transport::endpoint> endpoint;
  /// Unix peers of `owner_uid` (the node's own uid) and of `admin_uids` are
  /// admins; every other peer the endpoint lets in has the `infer` role.
  uid_t owner_uid = ::getuid();
  std::vector<uid_t> admin_uids;
  /// Requests one peer may have in flight; more are answered `overloaded`.
  size_t max_in_flight_per_peer = 1024;
  /// Parameters a model spec in a request may carry.
  size_t max_spec_params = 64;
  /// Streaming sessions one connection may hold open at once; more are
  /// refused with `quota_exceeded`.
  size_t max_sessions_per_peer = 64;
  /// The node's cluster as JSON, in status answers as "cluster" (called on
  /// the gateway's thread; must not block); null or empty: no cluster.
  std::function<std::string()> cluster_status;
};

/// Spawns a gateway for `registry` (not yet listening anywhere).
gateway_actor spawn_gateway(caf::actor_system& sys, registry_actor registry,
                            gateway_options options = {});

/// Makes `ep` listen on the Unix socket `path` and hand its frames to `gw`.
caf::error listen_shm(const gateway_actor& gw, const std::shared_ptr<transport::endpoint>& ep,
                      const std::string& path);

/// listen_shm on a listening socket someone else made (socket activation):
/// `listener` must be a Unix SOCK_SEQPACKET socket; the endpoint owns it.
caf::error listen_shm_socket(const gateway_actor& gw,
                             const std::shared_ptr<transport::endpoint>& ep, int listener);

/// The gateway's door for peers on other hosts: publish this handle with
/// `caf::io::publish` or `caf::openssl::publish`. Every peer that comes in
/// through it gets `role`. It forwards `frame_atom` messages and nothing
/// else: no other message, exit and kill included, acts on the node, whoever
/// sends it. Close it with `close_wire_interface` (it never exits by
/// itself, so the actor system would wait for it).
/// With `cluster` (docs/cluster.md): cluster messages from admin peers go
/// to that actor, sender and request id kept; others are refused.
wire_actor wire_interface(caf::actor_system& sys, const gateway_actor& gw, peer_role role,
                          const caf::actor& cluster = {});

/// Stops forwarding and terminates the door (it unpublishes itself).
void close_wire_interface(const wire_actor& door);

/// spawn_gateway + listen_shm.
caf::expected<gateway_actor> spawn_shm_gateway(caf::actor_system& sys, registry_actor registry,
                                               std::shared_ptr<transport::endpoint> ep,
                                               const std::string& path,
                                               gateway_options options = {});

} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::transport::connection_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::transport::frame_ptr)

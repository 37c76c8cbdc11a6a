// connect(): a registry served by another process (`modelreg serve`), behind
// the same typed `registry_actor` interface as a local one.
//
//   auto reg = modelreg::connect(sys, "unix:/run/user/1000/modelreg/modelreg.sock");
//   auto reg = modelreg::connect(sys, "tcp://gpu-box:7447");
//
// Behind the handle runs a proxy actor that owns the connection. "unix:PATH"
// uses the shared-memory transport: inputs allocated with `allocate_input`
// cross with no copy, other inputs are copied into shared memory once, and
// outputs are views of memory the worker wrote (read-only, no copy).
// "tcp://HOST:PORT" uses CAF's middleman, with TLS when the actor system
// loaded `caf::openssl::manager` (mutual TLS once its certificate options are
// set); tensors travel inline.
//
// What works remotely: get-or-load by catalog name (a spec with no backend)
// or by model spec, infer, release, unload, list, subscribe/unsubscribe,
// shutdown. In-process loaders, pin and evict-expired answer `unsupported`.
// Handles are leases owned by the connection: released when their last copy
// goes, or all at once when the connection closes.
//
// Failures: when the worker dies or the connection drops, every request in
// flight and every new one fails at once with `unavailable` ("worker
// unavailable"), handles become invalid, and the proxy reconnects with
// exponential backoff (if `reconnect`); requests succeed again as soon as it
// is back. A `goodbye` from a stopping node is treated the same way once its
// answers are in.
//
// Lifetime: the proxy lives until `shutdown_atom` or an exit message. It never
// blocks: reconnect attempts run in a short-lived detached connector actor.
//
// Also here: `blocking_client` (blocking_client.hpp) for threads that are not
// actors', and the URI and TLS helpers (connect_uri.hpp).
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <caf/actor_system_config.hpp>
#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/expected.hpp>

#include "modelreg/actors/blocking_client.hpp"
#include "modelreg/actors/connect_uri.hpp"
#include "modelreg/actors/registry_actor.hpp"
#include "modelreg/messages/timeouts.hpp"
#include "modelreg/transport/endpoint.hpp"

namespace modelreg {

struct connect_options {
  /// Reconnect after the connection drops.
  bool reconnect = true;
  /// Backoff between reconnect attempts: doubles from `initial` to `max`.
  std::chrono::milliseconds backoff_initial{50};
  std::chrono::milliseconds backoff_max{std::chrono::seconds{2}};
  /// The shared-memory endpoint to connect through; null: one of its own.
  std::shared_ptr<transport::endpoint> endpoint;
  /// How long a tcp:// connect may take, CAF's handshake included (CAF's
  /// own would wait for ever on a port where something else listens).
  std::chrono::milliseconds connect_timeout{timeouts::connect};
};

/// Connects to a served registry ("unix:PATH" or "tcp://HOST:PORT"). Fails
/// with `invalid_argument` (bad URI) or `unavailable` (nobody answers).
caf::expected<registry_actor> connect(caf::actor_system& sys, const std::string& uri,
                                      connect_options options = {});

/// A tensor in the shared memory `remote` sends from (blocking; not from
/// inside an actor): input written into it crosses with no copy. For a
/// non-shared-memory connection (TCP), a heap tensor.
caf::expected<tensor> allocate_input(caf::actor_system& sys, const registry_actor& remote,
                                     dtype type, std::vector<int64_t> shape);

/// Counters of the connection behind `remote` (blocking).
struct remote_stats {
  bool connected = false;
  bool shared_memory = false;
  uint64_t reconnects = 0;
  uint64_t zero_copy_tensors = 0; ///< tensors sent or received by reference
  uint64_t copied_bytes = 0;      ///< tensor bytes copied on the way
  uint64_t requests_in_flight = 0;
};

caf::expected<remote_stats> stats_of(caf::actor_system& sys, const registry_actor& remote);

/// The node's status as the gateway sends it (blocking): the snapshot's JSON
/// plus "connections" and "catalog".
caf::expected<std::string> remote_status_json(caf::actor_system& sys,
                                              const registry_actor& remote,
                                              caf::timespan timeout = timeouts::request);

} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::tensor)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::remote_stats)

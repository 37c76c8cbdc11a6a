// blocking_client: inference from a thread that is not an actor's (a
// pipeline node's main loop, Python) against a registry from `connect()`.
#pragma once

#include <memory>
#include <string>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/timespan.hpp>

#include "modelreg/actors/registry_actor.hpp"

namespace modelreg {

namespace detail {
struct direct_link;
} // namespace detail

/// Inference for a synchronous caller (a thread that is not an actor's, e.g.
/// a pipeline node's main loop or Python). On a Unix link the caller writes
/// its request frame itself and is woken by the connection's thread when the
/// answer arrives: two thread hand-offs fewer per round trip than a request
/// to the proxy actor. Over TCP, or for a registry not from connect(), it
/// makes an ordinary request. Thread-safe; copies share the link.
class blocking_client {
public:
  /// Asks `remote`'s proxy for its link (one round trip to the actor).
  blocking_client(caf::actor_system& sys, registry_actor remote);

  /// Runs `key` on `inputs`; fails like a request to the registry would
  /// (`unavailable` at once when the link is down, every waiter too when it
  /// drops), or with `timeout` after `timeout` (the answer, if it comes
  /// later, is dropped and its memory returned). Holding a handle on `key`
  /// (from this registry) makes the node hand the request straight to the
  /// model.
  caf::expected<tensor_map> infer(const std::string& key, const tensor_map& inputs,
                                  caf::timespan timeout) const;

  /// Whether calls take the direct path (a Unix link from connect()).
  bool direct() const { return link_ != nullptr; }

private:
  caf::actor_system* sys_;
  registry_actor remote_;
  std::shared_ptr<detail::direct_link> link_;
};

} // namespace modelreg

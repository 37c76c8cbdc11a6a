// A node's published door at a tcp:// URI, for a peer of the same cluster
// (docs/cluster.md). Defined with connect() in remote_registry.cpp.
#pragma once

#include <string>

#include <caf/actor.hpp>
#include <caf/actor_system.hpp>
#include <caf/expected.hpp>
#include <caf/timespan.hpp>

namespace modelreg {

/// The door of the node at `uri` ("tcp://HOST:PORT"), through TLS when the
/// actor system loaded OpenSSL, within `timeout` (blocking: not from an
/// actor's own thread). `unavailable` saying why otherwise.
caf::expected<caf::actor> reach_node(caf::actor_system& sys, const std::string& uri,
                                     caf::timespan timeout);

} // namespace modelreg

// A plain-TCP door that a peer cannot make the node allocate through.
//
// CAF 0.17's BASP reads a 32-byte header and then allocates (and zeroes) as
// many bytes as the header announces, up to 4 GiB, before any check: on plain
// TCP anyone who can reach the port can do that, on every connection, and a
// connection that never completes CAF's handshake stays open for ever. CAF
// has no setting for either. `tcp_guard` publishes an actor on plain TCP
// exactly as `caf::io::middleman::publish` does, but its connections refuse
// (close) a message announced over `max_message` bytes, or one that would
// take all connections' announced messages together over `max_buffered`,
// and close a connection that has not completed CAF's handshake within
// `handshake_timeout`.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <thread>

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

namespace modelreg {

struct tcp_guard_options {
  /// The largest message (one BASP payload) a peer may send.
  uint64_t max_message = uint64_t{64} << 20;
  /// Announced messages of all connections together.
  uint64_t max_buffered = uint64_t{512} << 20;
  /// A connection that has not completed CAF's handshake by then is closed.
  std::chrono::milliseconds handshake_timeout{2000};
};

class tcp_guard {
public:
  explicit tcp_guard(tcp_guard_options options = {});
  ~tcp_guard(); // stops the deadline sweep; connections stay guarded
  tcp_guard(const tcp_guard&) = delete;
  tcp_guard& operator=(const tcp_guard&) = delete;

  /// Publishes `whom` (with its message types) on `host:port` (port 0:
  /// pick one); returns the port. The system must have loaded the
  /// middleman and not the openssl manager.
  caf::expected<uint16_t> publish(caf::actor_system& sys, const caf::strong_actor_ptr& whom,
                                  const std::set<std::string>& signatures, uint16_t port,
                                  const std::string& host);

  struct state;

private:
  std::shared_ptr<state> state_;
  std::thread sweeper_;
};

} // namespace modelreg

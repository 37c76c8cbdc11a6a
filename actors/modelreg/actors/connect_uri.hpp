// Where a node is and how to reach it safely: connect URIs ("unix:PATH",
// "tcp://HOST:PORT"), HOST:PORT for a listening side, loopback checks, and
// the checks of TLS files that CAF would otherwise abort on. `connect()`
// and `modelreg serve` share them.
#pragma once

#include <cstdint>
#include <string>

#include <caf/actor_system_config.hpp>
#include <caf/expected.hpp>

namespace modelreg {

/// Where a node listens unless told otherwise: $MODELREG_SOCKET, else
/// $XDG_RUNTIME_DIR/modelreg/modelreg.sock, else /tmp/modelreg-UID/modelreg.sock.
std::string default_socket_path();

/// A node's address as a connect URI names it.
struct node_address {
  bool unix_socket = true;
  std::string path; ///< unix
  std::string host; ///< tcp, without IPv6 brackets
  uint16_t port = 0;
};

/// Parses "unix:PATH" (or "unix://PATH") and "tcp://HOST:PORT" (PORT 1 to
/// 65535, HOST may be a bracketed IPv6 address); `invalid_argument` naming
/// the URI otherwise.
caf::expected<node_address> parse_connect_uri(const std::string& uri);

/// HOST:PORT (as `--tcp` takes it): PORT 0 to 65535 (0: any free port);
/// `invalid_argument` saying what is wrong otherwise.
caf::expected<node_address> parse_host_port(const std::string& text);

/// True for "localhost", 127.0.0.0/8 and ::1.
bool is_loopback(const std::string& host);

/// PEM files for mutual TLS over tcp://.
struct tls_files {
  std::string cert;
  std::string key;
  std::string ca;
  bool any() const { return !cert.empty() || !key.empty() || !ca.empty(); }
};

/// Loads `tls` the way CAF's OpenSSL module will, so that a bad path or a key
/// that does not match the certificate fails now (CAF would abort the process
/// at the first connection). Empty if usable, else why not.
std::string check_tls(const tls_files& tls);

/// Loads CAF's OpenSSL module for mutual TLS with `tls`. Call this instead of
/// `cfg.load<caf::openssl::manager>()`: it also keeps one peer's failed
/// handshake from closing every other TLS connection of the process
/// (detail/openssl_errors.cpp).
void load_tls(caf::actor_system_config& cfg, const tls_files& tls);

/// Prepares an actor system's configuration for `connect(sys, uri)`: loads
/// the middleman for "tcp://", and OpenSSL with `tls` if any file is given.
/// Call before the actor system is created.
void configure_for_connect(caf::actor_system_config& cfg, const std::string& uri,
                           const tls_files& tls = {});

} // namespace modelreg

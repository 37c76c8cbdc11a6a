// The HTTP door: the Open Inference Protocol's REST API (KServe v2), with
// the binary tensor data and model repository extensions, plus /metrics
// for Prometheus, served by GNU libmicrohttpd, plain or HTTPS with mutual TLS
// (docs/serve.md, "HTTP, gRPC and metrics").
//
// Threads: libmicrohttpd's own event threads (epoll), never blocked: a
// request that needs the registry or a model suspends its connection and is
// resumed by the answer's callback, which encodes the reply on the thread
// that produced it (a CAF worker or the model's thread). Idle connections
// cost a descriptor, not a thread.
//
// Limits: a body over `max_body` is answered 413 before it is read; a
// request that has not arrived whole within `request_timeout` of the
// connection opening (or of its previous answer) is closed; connections idle
// for `idle_timeout` are closed; at most `max_connections` (and
// `max_connections_per_ip` from one address) are open at once, more are
// closed at accept.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include <caf/expected.hpp>

#include "modelreg/actors/oip.hpp"

namespace modelreg::doors {

struct http_options {
  std::string host = "127.0.0.1";
  uint16_t port = 0; ///< 0: the kernel picks one (see `port()`)
  /// A listening socket to serve instead of opening one (socket
  /// activation); -1: none.
  int listen_fd = -1;
  /// Only /metrics and the health endpoints (`serve --metrics`).
  bool metrics_only = false;
  size_t max_body = size_t{64} << 20;
  unsigned max_connections = 1024;
  unsigned max_connections_per_ip = 256;
  std::chrono::seconds idle_timeout{15};
  std::chrono::milliseconds request_timeout{std::chrono::seconds{30}};
  /// HTTPS with mutual TLS when all three are given (PEM files): clients
  /// need a certificate from `tls_ca`; without one they are answered 403.
  std::string tls_cert, tls_key, tls_ca;
  /// What every client of this door may do (no per-client identity on
  /// plain HTTP): infer, or admin (unload).
  peer_role role = peer_role::infer;
  /// Event threads (libmicrohttpd's thread pool).
  unsigned threads = 2;
};

class http_door {
public:
  /// Listens and serves; `unavailable` with the reason if it cannot.
  static caf::expected<std::unique_ptr<http_door>> start(std::shared_ptr<oip::service> service,
                                                         http_options options);
  ~http_door();
  http_door(const http_door&) = delete;
  http_door& operator=(const http_door&) = delete;

  /// The port it listens on.
  uint16_t port() const noexcept;

  /// Answers requests waiting for a model `shutting_down` (503), closes
  /// every connection and stops. Idempotent.
  void stop();

  struct core;

private:
  http_door() = default;
  std::shared_ptr<core> core_;
};

/// A listening TCP socket on HOST:PORT (IPv4 or IPv6 literal or a name);
/// `unavailable` with the reason if it cannot be opened.
caf::expected<int> listen_tcp(const std::string& host, uint16_t port);

} // namespace modelreg::doors

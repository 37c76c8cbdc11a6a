// The gRPC door: the Open Inference Protocol's inference.GRPCInferenceService
// (open_inference_grpc.proto) on Debian's gRPC, with mutual TLS from the same
// certificate options as `serve --tcp` (docs/serve.md, "HTTP, gRPC and
// metrics").
//
// Threads: gRPC's callback API. A handler never waits: ModelInfer hands its
// request to the registry and returns; the answer's callback fills in the
// response and finishes the call from the thread that produced it. Inputs
// come as typed contents or raw_input_contents; outputs always go back as
// raw_output_contents (little-endian, row-major), as Triton's do.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include <caf/expected.hpp>

#include "modelreg/actors/oip.hpp"

namespace modelreg::doors {

struct grpc_options {
  std::string host = "127.0.0.1";
  uint16_t port = 0; ///< 0: the kernel picks one (see `port()`)
  /// Mutual TLS when all three are given (PEM files).
  std::string tls_cert, tls_key, tls_ca;
  /// The role of every client (the TLS role with TLS, else the plain one).
  peer_role role = peer_role::infer;
  /// The largest request message.
  size_t max_message = size_t{64} << 20;
  /// Calls one client (gRPC peer address) may have in flight; more are
  /// refused with RESOURCE_EXHAUSTED.
  size_t max_in_flight_per_peer = 64;
  /// Streams one connection may have open at once (HTTP/2 setting).
  unsigned max_streams_per_connection = 128;
};

class grpc_door {
public:
  static caf::expected<std::unique_ptr<grpc_door>> start(std::shared_ptr<oip::service> service,
                                                         grpc_options options);
  ~grpc_door();
  grpc_door(const grpc_door&) = delete;
  grpc_door& operator=(const grpc_door&) = delete;

  uint16_t port() const noexcept;
  /// Stops taking calls, waits for those in flight (cancelled after
  /// `grace`), stops. Idempotent.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds{2});

  struct impl;

private:
  grpc_door() = default;
  std::unique_ptr<impl> impl_;
};

} // namespace modelreg::doors

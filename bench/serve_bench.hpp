// The serving benchmark behind `modelreg bench serve`: one `modelreg serve`
// node and N client processes keeping requests in flight against one model.
#pragma once

#include <cstdint>
#include <string>

namespace modelreg::bench {

struct serve_bench_options {
  /// This executable (it starts itself as the node and the clients).
  std::string self_path;
  size_t clients = 1;
  /// Requests per client.
  uint64_t requests = 50000;
  /// Requests each client keeps in flight.
  size_t in_flight = 16;
  /// Catalog model to call (a small-tensor model).
  std::string model = "echo";
  /// Elements (f32) per request tensor.
  size_t elements = 16;
  /// One extra peer that sends 3000 requests and then never drains its ring
  /// (frozen with SIGSTOP) for the whole run; the node runs without a peer
  /// timeout so the stalled peer stays connected.
  bool stalled_peer = false;
};

/// Runs the benchmark; one JSON object: clients, requests, errors,
/// req_per_s, latency_us_p50, latency_us_p99, loads, wrong_answers,
/// stalled_peer.
std::string run_serve_bench(const serve_bench_options& opts);

} // namespace modelreg::bench

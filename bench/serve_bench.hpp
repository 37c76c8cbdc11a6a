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
  /// Catalog model to call: `echo` or `gain` of the default catalog (their
  /// right answers are known). Empty: `gain` at one request in flight, else
  /// `echo`.
  std::string model;
  /// Elements (f32) per request tensor. 0: 1024 (4 KiB) at one request in
  /// flight, else 16.
  size_t elements = 0;
  /// Measure the transport-only round trip of the same size too (the `shm`
  /// row of `bench transport`), at one request in flight.
  bool with_transport = true;
  /// One extra peer that sends 3000 requests and then never drains its ring
  /// (frozen with SIGSTOP) for the whole run; the node runs without a peer
  /// timeout so the stalled peer stays connected.
  bool stalled_peer = false;
};

/// Runs the benchmark; one JSON object: clients, requests, errors,
/// req_per_s, latency_us_p50, latency_us_p99, rtt_us_p50 (the same p50: a
/// request's round trip), ctx_switches_per_request (node and clients, from
/// /proc), bytes, loads, wrong_answers, stalled_peer; at one request in
/// flight also transport_rtt_us_p50 and full_stack_over_transport.
std::string run_serve_bench(const serve_bench_options& opts);

} // namespace modelreg::bench

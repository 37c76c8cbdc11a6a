// `modelreg bench serve --protocol shm,grpc,http`: the same model and tensor
// sizes through each of the node's doors, in one run, and the shared-memory
// clients again while HTTP and gRPC clients load the node too.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace modelreg::bench {

struct protocol_bench_options {
  std::string self_path;
  std::vector<std::string> protocols{"shm", "grpc", "http"};
  /// f32 elements per request: 1024 (4 KiB) and 262144 (1 MiB).
  std::vector<size_t> sizes{1024, 262144};
  size_t clients = 8;
  /// Requests per client at 4 KiB; larger tensors get fewer (the same
  /// bytes per client, at least 200 requests).
  uint64_t requests = 20000;
  size_t in_flight = 4;
  std::string model = "echo";
  /// Also run the shared-memory clients in `rounds` rounds of three: alone,
  /// while HTTP and gRPC clients (half as many of each, `in_flight`
  /// connections each) are connected and silent, and while those make 4 KiB
  /// requests at `others_hz` per connection ("with and without them").
  bool mixed = true;
  double others_hz = 20;
  size_t rounds = 3;
};

/// One JSON object: {"runs": [{protocol, bytes, clients, requests, errors,
/// wrong_answers, req_per_s, latency_us_p50, latency_us_p99, others ("none",
/// "connected" or "busy"), round}], and per size the ratios of req/s: grpc
/// and http over shm, and shm's medians with the others connected and busy
/// over its median alone}.
std::string run_protocol_bench(const protocol_bench_options& opts);

/// A client process (`modelreg __bench-protocol-client`): `in_flight`
/// connections to the door at `address`, each making its share of
/// `requests` calls one after another (`pace_hz` > 0: at most that many a
/// second each); prints "ready", waits for stdin to
/// close, runs, prints JSON like `__bench-serve-client` and writes its
/// latencies (u32 microseconds) to `latency_file`.
int run_protocol_bench_client(const std::string& protocol, const std::string& address,
                              const std::string& model, uint64_t requests, size_t in_flight,
                              size_t elements, const std::string& latency_file,
                              const std::string& input_name, float scale, double pace_hz = 0);

} // namespace modelreg::bench

// The transport benchmark behind `modelreg bench transport`.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace modelreg::bench {

struct transport_bench_options {
  /// This executable (it starts itself as the other process).
  std::string self_path;
  std::vector<size_t> sizes{4096, 64 << 10, 1 << 20, 16 << 20, 64 << 20, 256 << 20};
  /// Round trips for small tensors (fewer for large ones).
  size_t iterations = 2000;
  /// The inline fallback and CAF's middleman copy: cap their sizes.
  size_t inline_max_bytes = 256 << 20;
  size_t caf_max_bytes = 256 << 20;
  bool with_caf = true;
  /// The gRPC rows (when modelreg was built with gRPC).
  bool with_grpc = true;
};

/// Runs every measurement and returns {"results": [...]} (see docs/benchmarks.md).
std::string run_transport_bench(const transport_bench_options& opts);

/// The `shm` row alone for one size: the transport-only round-trip p50 in
/// microseconds (an echo process, no registry), in a scratch folder under
/// `dir`. Throws std::runtime_error on failure.
double shm_rtt_us_p50(const std::string& self_path, size_t bytes, const std::string& dir);

/// The other side of the `caf_tcp` rows: publishes an echo actor on a free
/// loopback port, prints the port, serves until stdin closes.
int run_caf_echo_server();

} // namespace modelreg::bench

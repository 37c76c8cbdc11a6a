// The benchmark behind `modelreg bench python`: what the Python client adds
// to a round trip. One node; a C++ client (this process) and a Python client
// (a /usr/bin/python3 child) take turns against the same worker with the
// same shared-memory input.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace modelreg::bench {

struct python_bench_options {
  /// This executable (it starts itself as the node).
  std::string self_path;
  /// The interpreter of the Python client.
  std::string python = "/usr/bin/python3";
  /// Prepended to PYTHONPATH for the child (the package built in the build
  /// tree); empty: `import modelreg` as installed.
  std::string python_path;
  /// Tensor sizes in bytes (f32 elements = bytes / 4).
  std::vector<uint64_t> sizes = {1ull << 20, 64ull << 20};
  /// Round trips per client and size: 2 GiB worth, within these bounds.
  /// They are made in short alternating rounds (C++, Python, C++, ...), so
  /// both clients see the same machine: on a shared 2-core machine the
  /// round-trip time drifts by 2x over seconds.
  uint64_t budget_bytes = 2ull << 30;
  uint64_t min_round_trips = 40;
  uint64_t max_round_trips = 600;
  /// Round trips per round.
  uint64_t round_trips_per_round = 10;
  /// Catalog model: `echo` returns its input, so the round trip is the
  /// transport and nothing else.
  std::string model = "echo";
};

/// Runs it; a JSON array with one object per size: bytes, cpp_rtt_us_p50,
/// python_rtt_us_p50, overhead, plus p99s and round counts; or an object
/// with "error".
std::string run_python_bench(const python_bench_options& opts);

} // namespace modelreg::bench

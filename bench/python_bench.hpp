// The benchmark behind `modelreg bench python`: what the Python client adds
// to a round trip. One node; one Python client process per session, which
// alternates two kinds of round trip to the same worker over the same
// connection: one made by C++ in that process (the client library's
// blocking call, as a C++ program makes it) and one made from Python, read
// as NumPy either with client.infer(..., as_numpy=True) or with
// numpy.from_dlpack on the Tensor client.infer returns. Pairing them in one
// process matters: on two cores a process's round trip moves by ±30 % with
// where the kernel happens to place its threads, which is more than the
// difference being measured (docs/benchmarks.md).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace modelreg::bench {

struct python_bench_options {
  /// This executable (the node is started from it).
  std::string self_path;
  /// The interpreter of the Python client.
  std::string python = "/usr/bin/python3";
  /// Prepended to PYTHONPATH for the child (the package built in the build
  /// tree); empty: `import modelreg` as installed.
  std::string python_path;
  /// Tensor sizes in bytes (f32 elements = bytes / 4).
  /// 4 KiB is what real-time pipelines send (20 ms of 16 kHz audio is 640
  /// bytes): the per-call cost shows there.
  std::vector<uint64_t> sizes = {4096, 1ull << 20, 64ull << 20};
  /// Sessions: each starts a fresh client process, so that where the kernel
  /// places its threads averages out. Figures are medians over sessions.
  int sessions = 9;
  /// Round trips of each kind per size and session: 512 MiB worth, within
  /// these bounds.
  uint64_t budget_bytes = 512ull << 20;
  uint64_t min_round_trips = 20;
  uint64_t max_round_trips = 400;
  /// Idle time before each round trip, as in a pipeline that sends one
  /// request per frame: every thread that spins before it sleeps (the
  /// node's and the client's) has gone to sleep, and the caches have cooled.
  /// Back-to-back calls from a hot loop (0) measure something else.
  std::chrono::microseconds gap{1000};
  /// Catalog model: `echo` returns its input, so the round trip is the
  /// transport and nothing else.
  std::string model = "echo";
};

/// Runs it; a JSON array with one object per size: bytes, cpp_rtt_us_p50,
/// python_rtt_us_p50 (as_numpy), overhead ((Python - C++) / C++, per
/// session, median over sessions), the per-session overheads, python_own_us
/// (the Python round trip's time outside waiting for the node, median over
/// sessions) and its share of the Python round trip; the same for the
/// from_dlpack way, prefixed dlpack_; round trips; or an object with "error".
std::string run_python_bench(const python_bench_options& opts);

} // namespace modelreg::bench

// The benchmark behind `modelreg bench python`: what the Python client adds
// to a round trip. One node; a C++ client process and a Python client
// process (/usr/bin/python3) take turns against the same worker with the
// same kind of shared-memory input.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace modelreg::bench {

struct python_bench_options {
  /// This executable (the node and the C++ client are started from it).
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
  /// Sessions: each starts a fresh pair of client processes, so that where
  /// the kernel happens to place their threads (on 2 cores this alone moves
  /// a round trip by tens of microseconds) averages out. Figures are the
  /// medians over sessions.
  int sessions = 9;
  /// Round trips per client, size and session: 512 MiB worth, within these
  /// bounds. The clients alternate (C++, Python, C++, ...), so both see the
  /// same moment of the machine; each round trip starts from an idle client,
  /// as in a pipeline that sends one request per frame (back-to-back calls
  /// from a hot loop would favour whichever client has the shorter gap
  /// between calls, because idle threads fall asleep). `--burst N` takes
  /// N round trips per turn instead, back to back.
  uint64_t budget_bytes = 512ull << 20;
  uint64_t min_round_trips = 20;
  uint64_t max_round_trips = 400;
  uint64_t round_trips_per_round = 1;
  /// Catalog model: `echo` returns its input, so the round trip is the
  /// transport and nothing else.
  std::string model = "echo";
};

/// Runs it; a JSON array with one object per size: bytes, cpp_rtt_us_p50,
/// python_rtt_us_p50, overhead (medians over sessions), the per-session
/// overheads, python_own_us (the Python client's mean time per call outside
/// waiting for the node, median over sessions) and its share of the Python
/// round trip, round trips; or an object with "error".
std::string run_python_bench(const python_bench_options& opts);

/// The C++ client process: connects to `uri`, loads `model`, prints "ready",
/// then answers each "BYTES N" line on stdin with the N round-trip times
/// (microseconds, a JSON array) of a synchronous caller sending a
/// shared-memory f32 tensor of BYTES bytes. The Python client speaks the
/// same protocol.
int run_rtt_client(const std::string& uri, const std::string& model);

} // namespace modelreg::bench

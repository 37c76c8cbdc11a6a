// A client process of `modelreg bench serve` and of the multi-process tests
// (`modelreg __bench-serve-client`): keeps requests in flight against a node.
#pragma once

#include <cstdint>
#include <string>

namespace modelreg::tools {

/// One client process: connects to `uri`, gets `model`, prints "ready", waits
/// for a line on stdin, runs, prints its JSON (requests, errors, wrong
/// answers, start and end, its context switches during the run) and writes
/// its latencies (u32 microseconds) to `latency_file`. The input is
/// `input_name`; a right answer is the input times `scale`. With one request
/// in flight it calls through `blocking_client` (the caller's own thread),
/// else through the proxy actor.
int run_serve_bench_client(const std::string& uri, const std::string& model, uint64_t requests,
                           size_t in_flight, size_t elements, const std::string& latency_file,
                           const std::string& input_name = "x", float scale = 1.0f);

} // namespace modelreg::tools

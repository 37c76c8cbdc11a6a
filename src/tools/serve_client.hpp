// A client process of `modelreg bench serve` and of the multi-process tests
// (`modelreg __bench-serve-client`): keeps requests in flight against a node.
#pragma once

#include <cstdint>
#include <string>

namespace modelreg::tools {

/// One client process: connects to `uri`, gets `model`, prints "ready", waits
/// for a line on stdin, runs, prints its JSON and writes its latencies (u32
/// microseconds) to `latency_file`.
int run_serve_bench_client(const std::string& uri, const std::string& model, uint64_t requests,
                           size_t in_flight, size_t elements, const std::string& latency_file);

} // namespace modelreg::tools

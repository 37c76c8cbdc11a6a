// gRPC echo over a Unix socket for the transport benchmark (optional: built
// when Debian's gRPC and protobuf packages are present).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace modelreg::bench {

/// Serves the echo on `unix:PATH`, prints "ready", serves until stdin closes.
int run_grpc_echo_server(const std::string& path);

/// Round-trip times (µs) of `iterations` echoes of `bytes` bytes.
std::vector<double> grpc_round_trips(const std::string& path, size_t bytes, size_t iterations);

} // namespace modelreg::bench

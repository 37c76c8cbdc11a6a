// The other process in transport tests and benchmarks: an echo server and a
// client that holds what it receives. Reached through hidden `modelreg`
// subcommands (`modelreg __echo-server`, `modelreg __hold`), so tests and
// benchmarks run them as real, separate processes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "modelreg/transport/endpoint.hpp"

namespace modelreg::tools {

/// FNV-1a over 64-bit words (then the tail bytes): fast enough for 256 MiB.
uint64_t checksum(const std::byte* data, size_t n);

/// Answers one echo request (see run_echo_server) on `conn`.
void answer_echo(transport::endpoint& ep, const std::shared_ptr<transport::connection>& conn,
                 const std::shared_ptr<const transport::inbound_frame>& frame);

/// Serves echo requests on `path` until stdin closes. Prints "ready" once
/// listening. For each request it answers, per input tensor, a tensor of the
/// same dtype and shape in its own memory; if an input is named "__verify" it
/// also checksums every input in place and adds "__checksum" (u64 per input,
/// in name order), "__in_mapping" (u8: 1 if every input lay in a read-only
/// mapping of the sender's memory) and "__copied" (u64: bytes it copied).
int run_echo_server(const std::string& path, bool shared_memory, uint64_t quota_bytes);

/// Connects to `path`, sends `count` echo requests with one tensor of
/// `bytes` bytes each, keeps every response (so it holds the server's
/// loans), prints "holding N", then streams further requests until killed
/// or stdin closes.
int run_holding_client(const std::string& path, size_t count, size_t bytes);

/// A client that floods: connects to `path`, sends `count` echo requests
/// with one `bytes`-byte tensor each without waiting for any answer, prints
/// "sent N", then holds every answer it gets (never returning a loan) until
/// stdin closes. Tests freeze (SIGSTOP) or kill it at that point: a peer that
/// stops draining its ring, or dies with requests in flight.
int run_flood_client(const std::string& path, size_t count, size_t bytes);

} // namespace modelreg::tools

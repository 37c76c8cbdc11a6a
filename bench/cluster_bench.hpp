// `modelreg bench cluster`: many nodes as one registry (issue #15), with
// real member processes on loopback TCP and real client processes.
#pragma once

#include <string>

namespace modelreg::bench {

struct cluster_bench_options {
  std::string self_path; ///< this executable, to start members and clients
  int nodes = 3;
  int clients = 6;       ///< client processes asking for every model at once
  int models = 6;
  int rtt_requests = 2000;
  int load_delay_ms = 200; ///< how long each model takes to load
};

/// Runs it; the result as JSON: loads_per_model (model -> loads in the
/// cluster), client_errors, cold_first_answer_ms, cold_last_answer_ms,
/// forwarded_rtt_us_p50, local_rtt_us_p50, forwarded_over_local,
/// failover_ms (kill -9 of a holder to the first good answer after it).
std::string run_cluster_bench(const cluster_bench_options& options);

} // namespace modelreg::bench

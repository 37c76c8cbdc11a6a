// The registry benchmark behind `modelreg bench registry`.
#pragma once

#include <cstddef>
#include <string>

namespace modelreg::bench {

struct registry_bench_options {
  size_t scheduler_threads = 2;
  size_t hit_iterations = 200000;
  size_t actor_iterations = 50000;
  size_t infer_requests = 200000;
  size_t window = 256;
  size_t rounds = 5;
  size_t dedup_callers = 1000;
  size_t dedup_load_ms = 200;
};

/// Runs every measurement and returns one JSON object (see docs/benchmarks.md).
std::string run_registry_bench(const registry_bench_options& opts);

} // namespace modelreg::bench

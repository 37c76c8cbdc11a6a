// modelreg: the command-line tool.
//
//   modelreg [--log-level LEVEL] <command> [options]
//
// Exit codes: 0 success, 1 the command failed, 2 usage error.
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "modelreg/log.hpp"

#ifdef MODELREG_WITH_BENCH
#include "bench/registry_bench.hpp"
#include "bench/transport_bench.hpp"
#include "bench/transport_peer.hpp"
#endif
#ifdef MODELREG_WITH_GRPC
#include "bench/grpc_bench.hpp"
#endif

namespace {

constexpr const char* version = "0.1.0";

constexpr const char* usage = R"(modelreg: load each ML model once and share it

usage: modelreg [--log-level LEVEL] <command> [options]

commands:
  bench registry [--json] [--quick]
                 measure the in-process registry: facade hits, actor round
                 trips, inference throughput, single-flight loading
  bench transport [--json] [--quick] [--no-caf] [--no-grpc]
                 round trips of 4 KiB..256 MiB tensors to another process:
                 shared memory, inline fallback, CAF over TCP, gRPC over a
                 Unix socket, and the eventfd ping-pong floor
  version        print the version
  help           print this text

options:
  --log-level LEVEL   trace, debug, info, warn (default), error, critical, off;
                      overrides the MODELREG_LOG environment variable
)";

int usage_error(const std::string& what) {
  std::cerr << "modelreg: " << what << "\n\n" << usage;
  return 2;
}

bool has_flag(std::vector<std::string>& args, const std::string& flag) {
  for (auto i = args.begin(); i != args.end(); ++i)
    if (*i == flag) {
      args.erase(i);
      return true;
    }
  return false;
}

#ifdef MODELREG_WITH_BENCH
std::string self_path() {
  char buf[4096];
  auto n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "modelreg";
}

int bench_transport(std::vector<std::string> args) {
  modelreg::bench::transport_bench_options opts;
  opts.self_path = self_path();
  bool json = has_flag(args, "--json");
  if (has_flag(args, "--quick")) {
    opts.iterations = 50;
    opts.sizes = {4096, 1 << 20};
  }
  if (has_flag(args, "--no-caf"))
    opts.with_caf = false;
  if (has_flag(args, "--no-grpc"))
    opts.with_grpc = false;
  if (!args.empty())
    return usage_error("unknown option for bench transport: " + args.front());
  auto result = modelreg::bench::run_transport_bench(opts);
  if (json) {
    std::cout << result << std::endl;
    return 0;
  }
  auto j = nlohmann::json::parse(result);
  std::printf("%-8s %12s %12s %12s\n", "transport", "bytes", "rtt p50 us", "rtt p99 us");
  for (const auto& r : j["results"])
    std::printf("%-8s %12zu %12.1f %12.1f\n", r["transport"].get<std::string>().c_str(),
                r["bytes"].get<size_t>(), r["rtt_us_p50"].get<double>(),
                r["rtt_us_p99"].get<double>());
  std::printf("shm receiver: %s\n", j["shm_receive_mode"].get<std::string>().c_str());
  return 0;
}

int bench_registry(std::vector<std::string> args) {
  modelreg::bench::registry_bench_options opts;
  bool json = has_flag(args, "--json");
  if (has_flag(args, "--quick")) {
    opts.hit_iterations = 2000;
    opts.actor_iterations = 1000;
    opts.infer_requests = 2000;
    opts.rounds = 1;
    opts.dedup_callers = 50;
    opts.dedup_load_ms = 20;
  }
  if (!args.empty())
    return usage_error("unknown option for bench registry: " + args.front());
  auto result = modelreg::bench::run_registry_bench(opts);
  if (json) {
    std::cout << result << std::endl;
    return 0;
  }
  auto j = nlohmann::json::parse(result);
  std::printf("registry benchmark (%d scheduler threads)\n", j["scheduler_threads"].get<int>());
  std::printf("  facade hit          p50 %8lld ns   (target <= 1000)\n",
              j["hit_ns_p50"].get<long long>());
  std::printf("  actor hit           p50 %8lld ns\n", j["actor_hit_ns_p50"].get<long long>());
  std::printf("  bare CAF ping       p50 %8lld ns   (actor hit / ping = %.2f, target <= 1.5)\n",
              j["caf_ping_ns_p50"].get<long long>(), j["actor_hit_over_ping"].get<double>());
  std::printf("  infer direct        %10lld req/s (target >= 200000)\n",
              j["infer_direct_per_s"].get<long long>());
  std::printf("  infer routed        %10lld req/s (routed / direct = %.2f, target >= 0.5)\n",
              j["infer_routed_per_s"].get<long long>(), j["infer_routed_over_direct"].get<double>());
  std::printf("  single flight       %lld callers, %d loads, load %.1f ms, wall %.1f ms\n",
              j["dedup_callers"].get<long long>(), j["dedup_loads"].get<int>(),
              j["dedup_load_ms"].get<double>(), j["dedup_wall_ms"].get<double>());
  return 0;
}
#endif

} // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  std::optional<std::string> level;
  for (auto i = args.begin(); i != args.end();) {
    if (*i == "--log-level" && i + 1 != args.end()) {
      level = *(i + 1);
      i = args.erase(i, i + 2);
    } else if (i->rfind("--log-level=", 0) == 0) {
      level = i->substr(12);
      i = args.erase(i);
    } else {
      ++i;
    }
  }
  if (!modelreg::log::init(level))
    return usage_error("unknown log level");
  if (args.empty())
    return usage_error("no command given");
  auto command = args.front();
  args.erase(args.begin());
  try {
    if (command == "help" || command == "--help" || command == "-h") {
      std::cout << usage;
      return 0;
    }
    if (command == "version" || command == "--version") {
      std::cout << "modelreg " << version << "\n";
      return 0;
    }
#ifdef MODELREG_WITH_BENCH
    // Hidden: the other process of transport tests and benchmarks.
    if (command == "__echo-server" && !args.empty()) {
      bool inline_only = has_flag(args, "--inline");
      uint64_t quota = 0;
      if (args.size() >= 3 && args[1] == "--quota-bytes")
        quota = std::stoull(args[2]);
      return modelreg::bench::run_echo_server(args[0], !inline_only, quota);
    }
#ifdef MODELREG_WITH_GRPC
    if (command == "__grpc-echo-server" && !args.empty())
      return modelreg::bench::run_grpc_echo_server(args[0]);
#endif
    if (command == "__caf-echo-server")
      return modelreg::bench::run_caf_echo_server();
    if (command == "__hold" && args.size() == 3)
      return modelreg::bench::run_holding_client(args[0], std::stoul(args[1]), std::stoul(args[2]));
#endif
    if (command == "bench") {
      if (args.empty())
        return usage_error("bench needs a subject, e.g. 'bench registry'");
      auto subject = args.front();
      args.erase(args.begin());
#ifdef MODELREG_WITH_BENCH
      if (subject == "registry")
        return bench_registry(std::move(args));
      if (subject == "transport")
        return bench_transport(std::move(args));
#endif
      return usage_error("unknown benchmark: " + subject);
    }
    return usage_error("unknown command: " + command);
  } catch (const std::exception& e) {
    std::cerr << "modelreg: " << e.what() << "\n";
    return 1;
  }
}

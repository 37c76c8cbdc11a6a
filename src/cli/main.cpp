// modelreg: the command-line tool.
//
//   modelreg [--log-level LEVEL] <command> [options]
//
// Exit codes: 0 success, 1 the command failed, 2 usage error.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/default_catalog.hpp"
#include "modelreg/backend/catalog.hpp"
#include "modelreg/log.hpp"

#ifdef MODELREG_WITH_BENCH
#include "bench/asr_demo.hpp"
#include "bench/python_bench.hpp"
#include "bench/registry_bench.hpp"
#include "bench/serve_bench.hpp"
#include "bench/transport_bench.hpp"
#include "bench/transport_peer.hpp"
#endif
#ifdef MODELREG_WITH_GRPC
#include "bench/grpc_bench.hpp"
#endif

namespace {

using namespace modelreg::cli;

constexpr const char* version = "0.1.0";

constexpr const char* usage = R"(modelreg: load each ML model once and share it

usage: modelreg [--log-level LEVEL] <command> [options]

commands (against a node: see 'modelreg COMMAND --help' for options):
  serve          host a registry with a model catalog for other processes
                 (Unix socket with shared memory; TCP with mutual TLS)
  status [--watch] [--json]
                 models, state, handles, memory, requests/s, latency,
                 hit rate and connections of a running node
  ls [--json]    the node's catalog and what is loaded
  load NAME      load a catalog model on the node (shows progress)
  unload NAME    unload an idle model now
  infer NAME --input NAME=FILE.npy ... [--output DIR]
                 run a model on NumPy arrays; outputs written as .npy

the main job:
  demo           4 pipeline-node processes share one speech recogniser held
                 by a node: transcripts, loads, bytes copied, latency, memory

benchmarks:
  bench memory [--clients N] [--model NAME] [--json]
                 summed PSS of N processes loading a model themselves against
                 N clients of one node holding it
  bench serve [--clients N] [--json] [--quick] [--stalled-peer]
                 N client processes against one `modelreg serve` node:
                 requests/s, latency p50/p99, errors; --stalled-peer adds a
                 peer that never drains its ring for the whole run
  bench python [--json] [--quick] [--sessions N] [--python PATH] [--model NAME]
               [--sizes B,..]
                 round trips of 1 MiB and 64 MiB tensors from a C++ and a
                 Python client to one worker: what Python adds
  bench registry [--json] [--quick]
                 measure the in-process registry: facade hits, actor round
                 trips, inference throughput, single-flight loading
  bench transport [--json] [--quick] [--no-caf] [--no-grpc]
                 round trips of 4 KiB..256 MiB tensors to another process:
                 shared memory, inline fallback, CAF over TCP, gRPC over a
                 Unix socket, and the eventfd ping-pong floor
  version        print the version
  help           print this text

exit codes: 0 success, 1 the command failed, 2 usage error, 3 no node reachable

options:
  --log-level LEVEL   trace, debug, info, warn (default), error, critical, off;
                      overrides the MODELREG_LOG environment variable
)";

/// A usage error at the top level: the full usage text follows.
int top_usage_error(const std::string& what) {
  std::cerr << "modelreg: " << what << "\n\n" << usage;
  return exit_usage;
}

#ifdef MODELREG_WITH_BENCH
int bench_transport(std::vector<std::string> args) {
  modelreg::bench::transport_bench_options opts;
  opts.self_path = self_path();
  bool json = take_flag(args, "--json");
  if (take_flag(args, "--quick")) {
    opts.iterations = 50;
    opts.sizes = {4096, 1 << 20};
  }
  if (take_flag(args, "--no-caf"))
    opts.with_caf = false;
  if (take_flag(args, "--no-grpc"))
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

int bench_serve(std::vector<std::string> args) {
  modelreg::bench::serve_bench_options opts;
  opts.self_path = self_path();
  bool json = take_flag(args, "--json");
  if (take_flag(args, "--quick"))
    opts.requests = 2000;
  opts.stalled_peer = take_flag(args, "--stalled-peer");
  try {
    if (auto v = take_option(args, "--clients"))
      opts.clients = std::stoul(*v);
    if (auto v = take_option(args, "--requests"))
      opts.requests = std::stoull(*v);
    if (auto v = take_option(args, "--in-flight"))
      opts.in_flight = std::stoul(*v);
  } catch (const std::exception&) {
    return usage_error("bench serve: a numeric option has a bad value");
  }
  if (auto v = take_option(args, "--model"))
    opts.model = *v;
  if (!args.empty())
    return usage_error("unknown option for bench serve: " + args.front());
  auto result = modelreg::bench::run_serve_bench(opts);
  auto j = nlohmann::json::parse(result);
  if (json) {
    std::cout << result << std::endl;
  } else if (j.contains("error")) {
    std::cerr << "bench serve: " << j["error"].get<std::string>() << "\n";
  } else {
    std::printf("serve benchmark: %zu clients x %zu in flight, model '%s'\n", opts.clients,
                opts.in_flight, opts.model.c_str());
    std::printf("  %llu requests, %llu errors, %llu wrong, %llu load(s)\n",
                j["requests"].get<unsigned long long>(), j["errors"].get<unsigned long long>(),
                j["wrong_answers"].get<unsigned long long>(), j["loads"].get<unsigned long long>());
    std::printf("  %.0f req/s   latency p50 %.0f us   p99 %.0f us\n", j["req_per_s"].get<double>(),
                j["latency_us_p50"].get<double>(), j["latency_us_p99"].get<double>());
  }
  return j.contains("error") || j["errors"].get<uint64_t>() > 0 ? exit_failed : exit_ok;
}

int bench_python(std::vector<std::string> args) {
  modelreg::bench::python_bench_options opts;
  opts.self_path = self_path();
#ifdef MODELREG_PYTHON_BUILD_DIR
  // The package as `make` built it; an installed one is found without it.
  if (std::filesystem::exists(MODELREG_PYTHON_BUILD_DIR "/modelreg/__init__.py"))
    opts.python_path = MODELREG_PYTHON_BUILD_DIR;
#endif
  bool json = take_flag(args, "--json");
  if (take_flag(args, "--quick")) {
    opts.sessions = 1;
    opts.min_round_trips = 4;
    opts.max_round_trips = 20;
  }
  try {
    if (auto v = take_option(args, "--sessions"))
      opts.sessions = std::max(1, std::stoi(*v));
  } catch (const std::exception&) {
    return usage_error("bench python: bad --sessions");
  }
  if (auto v = take_option(args, "--python"))
    opts.python = *v;
  if (auto v = take_option(args, "--pythonpath"))
    opts.python_path = *v;
  if (auto v = take_option(args, "--model"))
    opts.model = *v;
  if (auto v = take_option(args, "--sizes")) {
    opts.sizes.clear();
    try {
      for (size_t at = 0; at <= v->size();) {
        auto comma = std::min(v->find(',', at), v->size());
        opts.sizes.push_back(std::stoull(v->substr(at, comma - at)));
        at = comma + 1;
      }
    } catch (const std::exception&) {
      return usage_error("bench python: --sizes takes byte counts, e.g. 1048576,67108864");
    }
    for (auto b : opts.sizes)
      if (b < sizeof(float))
        return usage_error("bench python: each size is at least 4 bytes");
  }
  if (!args.empty())
    return usage_error("unknown option for bench python: " + args.front());
  auto result = modelreg::bench::run_python_bench(opts);
  auto j = nlohmann::json::parse(result);
  if (json) {
    std::cout << result << std::endl;
  } else if (j.contains("error")) {
    std::cerr << "bench python: " << j["error"].get<std::string>() << "\n";
  } else {
    std::printf("python benchmark: C++ and Python client processes of one worker, model '%s',\n"
                "%d sessions (medians over sessions)\n",
                opts.model.c_str(), opts.sessions);
    std::printf("%12s %14s %14s %10s\n", "bytes", "C++ p50 us", "Python p50 us", "overhead");
    for (const auto& r : j)
      std::printf("%12llu %14.0f %14.0f %10.3f\n", r["bytes"].get<unsigned long long>(),
                  r["cpp_rtt_us_p50"].get<double>(), r["python_rtt_us_p50"].get<double>(),
                  r["overhead"].get<double>());
  }
  return j.contains("error") ? exit_failed : exit_ok;
}

/// A catalog name resolved in the built-in catalog.
modelreg::model_spec builtin_spec(const std::string& name) {
  auto cat = modelreg::catalog::parse(default_catalog_json);
  if (cat)
    if (const auto* spec = cat->find(name))
      return *spec;
  return modelreg::model_spec{name, {}}; // not a catalog name: a backend name
}

int bench_memory(std::vector<std::string> args) {
  bool json = take_flag(args, "--json");
  size_t clients = 4;
  try {
    if (auto v = take_option(args, "--clients"))
      clients = std::stoul(*v);
  } catch (const std::exception&) {
    return usage_error("bench memory: bad --clients");
  }
  auto model = take_option(args, "--model").value_or("asr-en-us");
  if (!args.empty())
    return usage_error("unknown option for bench memory: " + args.front());
  auto result = modelreg::bench::run_memory_bench(self_path(), clients, model);
  auto j = nlohmann::json::parse(result);
  if (json) {
    std::cout << result << std::endl;
  } else if (j.contains("error")) {
    std::cerr << "bench memory: " << j["error"].get<std::string>() << "\n";
  } else {
    std::printf("memory benchmark: %zu clients, model '%s' (PSS, measured)\n", clients, model.c_str());
    std::printf("  each loads its own copy  %8.1f MiB\n", j["separate_pss_bytes"].get<double>() / 1048576.0);
    std::printf("  shared through one node  %8.1f MiB\n", j["shared_pss_bytes"].get<double>() / 1048576.0);
    std::printf("  reduction                %8.2f\n", j["reduction"].get<double>());
  }
  return j.contains("error") ? exit_failed : exit_ok;
}

int bench_registry(std::vector<std::string> args) {
  modelreg::bench::registry_bench_options opts;
  bool json = take_flag(args, "--json");
  if (take_flag(args, "--quick")) {
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
    return top_usage_error("unknown log level");
  if (args.empty())
    return top_usage_error("no command given");
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
      bool inline_only = take_flag(args, "--inline");
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
    if (command == "__bench-rtt-client" && args.size() == 2)
      return modelreg::bench::run_rtt_client(args[0], args[1]);
    if (command == "__bench-serve-client" && args.size() == 6)
      return modelreg::bench::run_serve_bench_client(args[0], args[1], std::stoull(args[2]),
                                                     std::stoul(args[3]), std::stoul(args[4]),
                                                     args[5]);
    if (command == "__asr-node-client" && args.size() >= 3)
      return modelreg::bench::run_asr_node_client(
        args[0], args[1], std::vector<std::string>(args.begin() + 2, args.end()));
    if (command == "__asr-alone" && args.size() == 2)
      return modelreg::bench::run_asr_alone(builtin_spec(args[0]), args[1]);
    if (command == "demo") {
      modelreg::bench::demo_options opts;
      opts.self_path = self_path();
      // --expect FILE=TEXT replaces a pinned transcript (to see the check fail).
      for (const auto& e : take_all(args, "--expect")) {
        auto eq = e.find('=');
        for (auto& r : opts.recordings)
          if (eq != std::string::npos && r.file.find(e.substr(0, eq)) != std::string::npos)
            r.expected = e.substr(eq + 1);
      }
      if (!args.empty())
        return usage_error("unknown option for demo: " + args.front());
      return modelreg::bench::run_demo(opts);
    }
    if (command == "__hold" && args.size() == 3)
      return modelreg::bench::run_holding_client(args[0], std::stoul(args[1]), std::stoul(args[2]));
    if (command == "__flood-client" && args.size() == 3)
      return modelreg::bench::run_flood_client(args[0], std::stoul(args[1]), std::stoul(args[2]));
#endif
    if (command == "serve")
      return serve(std::move(args));
    if (command == "status")
      return status(std::move(args));
    if (command == "ls")
      return ls(std::move(args));
    if (command == "load")
      return load(std::move(args));
    if (command == "unload")
      return unload(std::move(args));
    if (command == "infer")
      return infer(std::move(args));
    if (command == "bench") {
      if (args.empty())
        return top_usage_error("bench needs a subject, e.g. 'bench registry'");
      auto subject = args.front();
      args.erase(args.begin());
#ifdef MODELREG_WITH_BENCH
      if (subject == "registry")
        return bench_registry(std::move(args));
      if (subject == "transport")
        return bench_transport(std::move(args));
      if (subject == "serve")
        return bench_serve(std::move(args));
      if (subject == "memory")
        return bench_memory(std::move(args));
      if (subject == "python")
        return bench_python(std::move(args));
#endif
      return top_usage_error("unknown benchmark: " + subject);
    }
    return top_usage_error("unknown command: " + command);
  } catch (const std::exception& e) {
    std::cerr << "modelreg: " << e.what() << "\n";
    return exit_failed;
  }
}

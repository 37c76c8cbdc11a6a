// modelreg: the command-line tool.
//
//   modelreg [--log-level LEVEL] <command> [options]
//
// Exit codes: 0 success, 1 the command failed, 2 usage error, 3 no node
// reachable. Options are parsed by CLI11, strictly: every value is checked
// and a bad one is named in the error.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli/args.hpp"
#include "modelreg/nearest.hpp"
#include "cli/commands.hpp"
#include "cli/default_catalog.hpp"
#include "modelreg/backend/catalog.hpp"
#include "modelreg/log.hpp"

#include "tools/asr_demo.hpp"
#include "tools/serve_client.hpp"
#include "tools/transport_peer.hpp"
#ifdef MODELREG_WITH_BENCH
#include "bench/python_bench.hpp"
#include "bench/registry_bench.hpp"
#include "bench/serve_bench.hpp"
#include "bench/transport_bench.hpp"
#endif
#ifdef MODELREG_WITH_GRPC
#include "bench/grpc_bench.hpp"
#endif

namespace {

using namespace modelreg::cli;

constexpr const char* version = MODELREG_VERSION; // project() in CMakeLists.txt

constexpr const char* footer = R"(
exit codes: 0 success, 1 the command failed, 2 usage error, 3 no node reachable
'modelreg COMMAND --help' shows a command's options.
)";

#ifdef MODELREG_WITH_BENCH
std::vector<command> add_benchmarks(CLI::App& app) {
  std::vector<command> out;
  auto* bench = app.add_subcommand("bench", "benchmarks (see docs/benchmarks.md)");
  bench->require_subcommand(1);

  {
    auto opts = std::make_shared<modelreg::bench::transport_bench_options>();
    auto json = std::make_shared<bool>(false);
    auto* sub = bench->add_subcommand(
      "transport", "round trips of 4 KiB..256 MiB tensors to another process: shared memory, "
                   "inline fallback, CAF over TCP, gRPC over a Unix socket, the wake-up floor");
    sub->add_flag("--json", *json, "as JSON");
    sub->add_flag_callback("--quick", [opts] {
      opts->iterations = 50;
      opts->sizes = {4096, 1 << 20};
    }, "fewer sizes and round trips");
    sub->add_flag_callback("--no-caf", [opts] { opts->with_caf = false; }, "skip CAF over TCP");
    sub->add_flag_callback("--no-grpc", [opts] { opts->with_grpc = false; }, "skip gRPC");
    out.push_back({sub, [opts, json] {
      opts->self_path = self_path();
      auto result = modelreg::bench::run_transport_bench(*opts);
      if (*json) {
        std::cout << result << std::endl;
        return exit_ok;
      }
      auto j = nlohmann::json::parse(result);
      std::printf("%-8s %12s %12s %12s\n", "transport", "bytes", "rtt p50 us", "rtt p99 us");
      for (const auto& r : j["results"])
        std::printf("%-8s %12zu %12.1f %12.1f\n", r["transport"].get<std::string>().c_str(),
                    r["bytes"].get<size_t>(), r["rtt_us_p50"].get<double>(),
                    r["rtt_us_p99"].get<double>());
      std::printf("shm receiver: %s\n", j["shm_receive_mode"].get<std::string>().c_str());
      return exit_ok;
    }});
  }
  {
    auto opts = std::make_shared<modelreg::bench::serve_bench_options>();
    auto json = std::make_shared<bool>(false);
    auto* sub = bench->add_subcommand(
      "serve", "N client processes against one `modelreg serve` node: requests/s, latency "
               "p50/p99, errors");
    sub->add_flag("--json", *json, "as JSON");
    sub->add_flag_callback("--quick", [opts] { opts->requests = 2000; }, "2000 requests per client");
    sub->add_flag("--stalled-peer", opts->stalled_peer,
                  "add a peer that never drains its ring for the whole run");
    add_count(sub, "--clients", opts->clients, "client processes (default 8)", 1, 256);
    add_count(sub, "--requests", opts->requests, "requests per client", 1);
    add_count(sub, "--in-flight", opts->in_flight, "requests each client keeps in flight", 1, 1024);
    sub->add_option("--model", opts->model,
                    "echo or gain (default: gain at one request in flight, else echo)")
      ->check(CLI::IsMember({"echo", "gain"}));
    add_count(sub, "--elements", opts->elements,
              "f32 elements per request (default: 1024, i.e. 4 KiB, at one request in flight, "
              "else 16)",
              1);
    out.push_back({sub, [opts, json] {
      opts->self_path = self_path();
      auto result = modelreg::bench::run_serve_bench(*opts);
      auto j = nlohmann::json::parse(result);
      if (*json) {
        std::cout << result << std::endl;
      } else if (j.contains("error")) {
        std::cerr << "bench serve: " << j["error"].get<std::string>() << "\n";
      } else {
        std::printf("serve benchmark: %zu clients x %zu in flight, model '%s', %zu bytes\n",
                    opts->clients, opts->in_flight, j["model"].get<std::string>().c_str(),
                    j["bytes"].get<size_t>());
        std::printf("  %llu requests, %llu errors, %llu wrong, %llu load(s)\n",
                    j["requests"].get<unsigned long long>(), j["errors"].get<unsigned long long>(),
                    j["wrong_answers"].get<unsigned long long>(),
                    j["loads"].get<unsigned long long>());
        std::printf("  %.0f req/s   latency p50 %.0f us   p99 %.0f us   %.1f context switches "
                    "per request\n",
                    j["req_per_s"].get<double>(), j["latency_us_p50"].get<double>(),
                    j["latency_us_p99"].get<double>(), j["ctx_switches_per_request"].get<double>());
        if (j.contains("transport_rtt_us_p50"))
          std::printf("  transport alone, same size: p50 %.0f us (full stack %.2f x)\n",
                      j["transport_rtt_us_p50"].get<double>(),
                      j["full_stack_over_transport"].get<double>());
      }
      return j.contains("error") || j["errors"].get<uint64_t>() > 0 ? exit_failed : exit_ok;
    }});
  }
  {
    auto opts = std::make_shared<modelreg::bench::python_bench_options>();
    auto json = std::make_shared<bool>(false);
    auto sizes = std::make_shared<std::vector<std::string>>();
    auto* sub = bench->add_subcommand(
      "python", "round trips of 4 KiB, 1 MiB and 64 MiB tensors from a C++ and a Python client "
                "to one worker: what Python adds");
    sub->add_flag("--json", *json, "as JSON");
    sub->add_flag_callback("--quick", [opts] {
      opts->sessions = 1;
      opts->min_round_trips = 4;
      opts->max_round_trips = 20;
    }, "one short session");
    auto sessions = std::make_shared<size_t>(0);
    add_count(sub, "--sessions", *sessions, "sessions (median over them)", 1, 100);
    sub->add_option("--python", opts->python, "the Python interpreter")->type_name("PATH");
    sub->add_option("--pythonpath", opts->python_path, "where the modelreg package is")
      ->type_name("PATH");
    sub->add_option("--model", opts->model, "catalog model (default echo)");
    sub->add_option("--sizes", *sizes, "tensor sizes (default 4K,1M,64M)")
      ->delimiter(',')
      ->type_name("SIZE,...");
    out.push_back({sub, [opts, json, sizes, sessions] {
      opts->self_path = self_path();
#ifdef MODELREG_PYTHON_BUILD_DIR
      // The package as `make` built it; an installed one is found without it.
      if (opts->python_path.empty() &&
          std::filesystem::exists(MODELREG_PYTHON_BUILD_DIR "/modelreg/__init__.py"))
        opts->python_path = MODELREG_PYTHON_BUILD_DIR;
#endif
      if (*sessions > 0)
        opts->sessions = static_cast<int>(*sessions);
      if (!sizes->empty()) {
        opts->sizes.clear();
        for (const auto& text : *sizes) {
          auto b = parse_size(text);
          if (!b || *b < sizeof(float))
            return usage_error("bench python: --sizes takes sizes of at least 4 bytes such as "
                               "1M,64M, not '" + text + "'");
          opts->sizes.push_back(*b);
        }
      }
      auto result = modelreg::bench::run_python_bench(*opts);
      auto j = nlohmann::json::parse(result);
      if (*json) {
        std::cout << result << std::endl;
      } else if (j.contains("error")) {
        std::cerr << "bench python: " << j["error"].get<std::string>() << "\n";
      } else {
        std::printf("python benchmark: C++ and Python client processes of one worker, model "
                    "'%s',\n%d sessions (medians over sessions)\n",
                    opts->model.c_str(), opts->sessions);
        std::printf("%12s %14s %14s %10s\n", "bytes", "C++ p50 us", "Python p50 us", "overhead");
        for (const auto& r : j)
          std::printf("%12llu %14.0f %14.0f %10.3f\n", r["bytes"].get<unsigned long long>(),
                      r["cpp_rtt_us_p50"].get<double>(), r["python_rtt_us_p50"].get<double>(),
                      r["overhead"].get<double>());
      }
      return j.contains("error") ? exit_failed : exit_ok;
    }});
  }
  {
    auto clients = std::make_shared<size_t>(4);
    auto model = std::make_shared<std::string>("asr-en-us");
    auto json = std::make_shared<bool>(false);
    auto* sub = bench->add_subcommand(
      "memory", "summed PSS of N processes loading a model themselves against N clients of one "
                "node holding it");
    sub->add_flag("--json", *json, "as JSON");
    add_count(sub, "--clients", *clients, "processes (default 4)", 1, 64);
    sub->add_option("--model", *model, "catalog model (default asr-en-us)");
    out.push_back({sub, [clients, model, json] {
      auto result = modelreg::tools::run_memory_bench(self_path(), *clients, *model);
      auto j = nlohmann::json::parse(result);
      if (*json) {
        std::cout << result << std::endl;
      } else if (j.contains("error")) {
        std::cerr << "bench memory: " << j["error"].get<std::string>() << "\n";
      } else {
        std::printf("memory benchmark: %zu clients, model '%s' (PSS, measured)\n", *clients,
                    model->c_str());
        std::printf("  each loads its own copy  %8.1f MiB\n",
                    j["separate_pss_bytes"].get<double>() / 1048576.0);
        std::printf("  shared through one node  %8.1f MiB\n",
                    j["shared_pss_bytes"].get<double>() / 1048576.0);
        std::printf("  reduction                %8.2f\n", j["reduction"].get<double>());
      }
      return j.contains("error") ? exit_failed : exit_ok;
    }});
  }
  {
    auto opts = std::make_shared<modelreg::bench::registry_bench_options>();
    auto json = std::make_shared<bool>(false);
    auto* sub = bench->add_subcommand(
      "registry", "the in-process registry: facade hits, actor round trips, inference "
                  "throughput, single-flight loading");
    sub->add_flag("--json", *json, "as JSON");
    sub->add_flag_callback("--quick", [opts] {
      opts->hit_iterations = 2000;
      opts->actor_iterations = 1000;
      opts->infer_requests = 2000;
      opts->rounds = 1;
      opts->dedup_callers = 50;
      opts->dedup_load_ms = 20;
    }, "fewer iterations");
    out.push_back({sub, [opts, json] {
      auto result = modelreg::bench::run_registry_bench(*opts);
      if (*json) {
        std::cout << result << std::endl;
        return exit_ok;
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
                  j["infer_routed_per_s"].get<long long>(),
                  j["infer_routed_over_direct"].get<double>());
      std::printf("  single flight       %lld callers, %d loads, load %.1f ms, wall %.1f ms\n",
                  j["dedup_callers"].get<long long>(), j["dedup_loads"].get<int>(),
                  j["dedup_load_ms"].get<double>(), j["dedup_wall_ms"].get<double>());
      return exit_ok;
    }});
  }
  return out;
}
#endif

/// The main job.
command add_demo(CLI::App& app) {
  auto opts = std::make_shared<modelreg::tools::demo_options>();
  auto expect = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand(
    "demo", "the main job: 4 pipeline-node processes share one speech recogniser held by a "
            "node: transcripts, loads, bytes copied, latency, memory");
  sub->add_option("--expect", *expect,
                  "replace a pinned transcript, to see the check fail (repeatable)")
    ->type_name("FILE=TEXT");
  return {sub, [opts, expect] {
    opts->self_path = self_path();
    for (const auto& e : *expect) {
      auto eq = e.find('=');
      if (eq == std::string::npos || eq == 0)
        return usage_error("demo: --expect takes FILE=TEXT, not '" + e + "'");
      for (auto& r : opts->recordings)
        if (r.file.find(e.substr(0, eq)) != std::string::npos)
          r.expected = e.substr(eq + 1);
    }
    return modelreg::tools::run_demo(*opts);
  }};
}

/// A catalog name resolved in the built-in catalog.
modelreg::model_spec builtin_spec(const std::string& name) {
  auto cat = modelreg::catalog::parse(default_catalog_json);
  if (cat)
    if (const auto* spec = cat->find(name))
      return *spec;
  return modelreg::model_spec{name, {}}; // not a catalog name: a backend name
}

/// Hidden commands: the other processes of tests, benchmarks and the demo.
/// Not for people; their arguments are positional and checked by count.
std::optional<int> run_hidden(const std::string& command, std::vector<std::string> args) {
  auto n = [](const std::string& s) { return std::stoull(s); };
  if (command == "__echo-server" && !args.empty()) {
    bool inline_only = std::find(args.begin(), args.end(), "--inline") != args.end();
    uint64_t quota = 0;
    if (args.size() >= 3 && args[1] == "--quota-bytes")
      quota = n(args[2]);
    return modelreg::tools::run_echo_server(args[0], !inline_only, quota);
  }
#ifdef MODELREG_WITH_BENCH
#ifdef MODELREG_WITH_GRPC
  if (command == "__grpc-echo-server" && !args.empty())
    return modelreg::bench::run_grpc_echo_server(args[0]);
#endif
  if (command == "__caf-echo-server")
    return modelreg::bench::run_caf_echo_server();
  if (command == "__bench-rtt-client" && args.size() == 2)
    return modelreg::bench::run_rtt_client(args[0], args[1]);
#endif
  if (command == "__bench-serve-client" && args.size() == 6)
    return modelreg::tools::run_serve_bench_client(args[0], args[1], n(args[2]), n(args[3]),
                                                   n(args[4]), args[5]);
  if (command == "__bench-serve-client" && args.size() == 8)
    return modelreg::tools::run_serve_bench_client(args[0], args[1], n(args[2]), n(args[3]),
                                                   n(args[4]), args[5], args[6],
                                                   std::stof(args[7]));
  if (command == "__asr-node-client" && args.size() >= 3)
    return modelreg::tools::run_asr_node_client(
      args[0], args[1], std::vector<std::string>(args.begin() + 2, args.end()));
  if (command == "__asr-alone" && args.size() == 2)
    return modelreg::tools::run_asr_alone(builtin_spec(args[0]), args[1]);
  if (command == "__hold" && args.size() == 3)
    return modelreg::tools::run_holding_client(args[0], n(args[1]), n(args[2]));
  if (command == "__flood-client" && args.size() == 3)
    return modelreg::tools::run_flood_client(args[0], n(args[1]), n(args[2]));
  return std::nullopt;
}

} // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args.front().rfind("__", 0) == 0) {
    modelreg::log::init(std::nullopt);
    try {
      if (auto rc = run_hidden(args.front(), std::vector<std::string>(args.begin() + 1, args.end())))
        return *rc;
    } catch (const std::exception& e) {
      std::cerr << "modelreg " << args.front() << ": " << e.what() << "\n";
      return exit_usage;
    }
    return usage_error("unknown internal command " + args.front());
  }
  CLI::App app{"modelreg: load each ML model once and share it"};
  app.name("modelreg");
  app.footer(footer);
  app.require_subcommand(1);
  app.fallthrough(); // --log-level after the command, too
  std::optional<std::string> level;
  app.add_option("--log-level", level,
                 "trace, debug, info, warn (default), error, critical, off; overrides the "
                 "MODELREG_LOG environment variable")
    ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.set_version_flag("--version", std::string{"modelreg "} + version);
  std::vector<command> commands;
  for (auto& c : add_serve(app))
    commands.push_back(std::move(c));
  for (auto& c : add_client_commands(app))
    commands.push_back(std::move(c));
  commands.push_back(add_demo(app));
#ifdef MODELREG_WITH_BENCH
  for (auto& c : add_benchmarks(app))
    commands.push_back(std::move(c));
#endif
  auto* version_cmd = app.add_subcommand("version", "print the version");
  commands.push_back({version_cmd, [] {
    std::cout << "modelreg " << version << "\n";
    return exit_ok;
  }});
  auto* help_cmd = app.add_subcommand("help", "print this text");
  commands.push_back({help_cmd, [&app] {
    std::cout << app.help();
    return exit_ok;
  }});

  // A mistyped command: name the nearest one.
  std::vector<std::string> names;
  for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; }))
    names.push_back(sub->get_name());
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--log-level") {
      ++i;
      continue;
    }
    if (args[i].rfind("-", 0) == 0)
      continue;
    if (std::find(names.begin(), names.end(), args[i]) == names.end()) {
      auto near = modelreg::nearest_name(args[i], names);
      return usage_error("unknown command '" + args[i] + "'" +
                         (near.empty() ? "" : "; did you mean '" + near + "'?"));
    }
    break;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    // The help of the command named, or of modelreg itself.
    const CLI::App* shown = &app;
    for (const auto& c : commands)
      if (c.app->parsed())
        shown = c.app;
    if (shown == &app)
      for (const auto* sub : app.get_subcommands())
        shown = sub;
    std::cout << shown->help();
    return exit_ok;
  } catch (const CLI::CallForVersion&) {
    std::cout << "modelreg " << version << "\n";
    return exit_ok;
  } catch (const CLI::ParseError& e) {
    std::string where;
    for (const auto* sub = &app; sub != nullptr;) {
      auto subs = sub->get_subcommands();
      if (subs.empty())
        break;
      sub = subs.front();
      where += " " + sub->get_name();
    }
    std::cerr << "modelreg" << where << ": " << e.what() << "\n(run 'modelreg" << where
              << " --help' for usage)\n";
    return exit_usage;
  }
  if (!modelreg::log::init(level))
    return usage_error("unknown log level");
  try {
    for (const auto& c : commands)
      if (c.app->parsed())
        return c.run();
    std::cout << app.help();
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "modelreg: " << e.what() << "\n";
    return exit_failed;
  }
}

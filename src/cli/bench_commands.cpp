// `modelreg bench ...`: every benchmark registers itself with its options and
// help, through the table at the end of this file. Built only with the
// benchmarks (MODELREG_BUILD_BENCH); see docs/benchmarks.md.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/cluster_bench.hpp"
#include "bench/placement_sim.hpp"
#include "bench/protocol_bench.hpp"
#include "bench/python_bench.hpp"
#include "bench/registry_bench.hpp"
#include "bench/serve_bench.hpp"
#include "bench/transport_bench.hpp"
#ifdef MODELREG_WITH_GRPC
#include "bench/grpc_bench.hpp"
#endif
#include "cli/commands.hpp"
#include "tools/asr_demo.hpp"
#include "tools/voice_loop.hpp"

namespace modelreg::cli {

namespace {

command bench_transport(CLI::App* bench) {
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
  return command{sub, [opts, json] {
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
  }};
}

/// `bench serve --protocol ...`: the doors side by side (issue #14).
int run_protocols(modelreg::bench::protocol_bench_options popts, bool json_out) {
  popts.self_path = self_path();
  auto result = modelreg::bench::run_protocol_bench(popts);
  auto j = nlohmann::json::parse(result);
  if (json_out) {
    std::cout << result << std::endl;
  } else if (j.contains("error")) {
    std::cerr << "bench serve: " << j["error"].get<std::string>() << "\n";
  } else {
    std::printf("protocols: %zu clients x %zu in flight, model '%s'\n", popts.clients,
                popts.in_flight, popts.model.c_str());
    std::printf("  %-5s %9s %-12s %12s %10s %10s %s\n", "door", "bytes", "others",
                "req/s", "p50 us", "p99 us", "errors");
    for (const auto& r : j["runs"]) {
      if (r.contains("error")) {
        std::printf("  %-5s %s\n", r["protocol"].get<std::string>().c_str(),
                    r["error"].get<std::string>().c_str());
        continue;
      }
      auto others = r["others"].get<std::string>();
      if (r.contains("round"))
        others += " (" + std::to_string(r["round"].get<size_t>()) + ")";
      std::printf("  %-5s %9zu %-12s %12.0f %10.0f %10.0f %llu\n",
                  r["protocol"].get<std::string>().c_str(), r["bytes"].get<size_t>(),
                  others.c_str(),
                  r["req_per_s"].get<double>(),
                  r["latency_us_p50"].get<double>(), r["latency_us_p99"].get<double>(),
                  r["errors"].get<unsigned long long>());
    }
    for (const auto& [bytes, ratio] : j["ratios"].items()) {
      if (ratio.size() <= 1)
        continue; // one door: nothing to compare
      std::printf("  %s bytes:", bytes.c_str());
      for (const auto& [k, v] : ratio.items())
        if (k != "bytes")
          std::printf(" %s %.3f", k.c_str(), v.get<double>());
      std::printf("\n");
    }
  }
  bool bad = j.contains("error");
  for (const auto& r : j.value("runs", nlohmann::json::array()))
    bad = bad || r.contains("error") || r.value("errors", 0) > 0 || r.value("wrong_answers", 0) > 0;
  return bad ? exit_failed : exit_ok;
}

command bench_serve(CLI::App* bench) {
  auto opts = std::make_shared<modelreg::bench::serve_bench_options>();
  auto json = std::make_shared<bool>(false);
  auto protocols = std::make_shared<std::vector<std::string>>();
  auto elements_given = std::make_shared<bool>(false);
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
            "else 16; with --protocol: 4 KiB and 1 MiB)",
            1)
    ->each([elements_given](const std::string&) { *elements_given = true; });
  sub->add_option("--protocol", *protocols,
                  "through these doors, side by side in one run: shm, grpc, http "
                  "(comma-separated); with shm and another, shm also runs with HTTP and gRPC "
                  "clients loading the node")
    ->delimiter(',')
    ->check(CLI::IsMember({"shm", "grpc", "http"}))
    ->type_name("LIST");
  auto others_rate = std::make_shared<double>(20);
  sub->add_option("--others-rate", *others_rate,
                  "with --protocol: requests a second each HTTP and gRPC connection makes while "
                  "shm is measured with them (default 20)")
    ->check(CLI::Range(0.1, 100000.0))
    ->type_name("HZ");
  auto rounds = std::make_shared<size_t>(3);
  add_count(sub, "--rounds", *rounds,
            "with --protocol: rounds of shm alone, with the others connected and with them busy "
            "(default 3; each figure is the median over the rounds)",
            1, 100);
  return command{sub, [opts, json, protocols, elements_given, sub, others_rate, rounds] {
    for (const auto* flag : {"--others-rate", "--rounds"})
      if (sub->count(flag) > 0 && protocols->empty())
        return usage_error(std::string{"bench serve: "} + flag + " is for --protocol");
    if (!protocols->empty()) {
      modelreg::bench::protocol_bench_options p;
      p.protocols = *protocols;
      if (sub->count("--clients") > 0)
        p.clients = opts->clients;
      if (sub->count("--requests") > 0)
        p.requests = opts->requests;
      if (sub->count("--in-flight") > 0)
        p.in_flight = opts->in_flight;
      if (!opts->model.empty())
        p.model = opts->model;
      if (*elements_given)
        p.sizes = {opts->elements};
      if (sub->count("--quick") > 0)
        p.requests = 500;
      p.others_hz = *others_rate;
      p.rounds = *rounds;
      p.mixed = protocols->size() > 1 &&
                std::find(protocols->begin(), protocols->end(), "shm") != protocols->end();
      if (sub->count("--stalled-peer") > 0)
        return usage_error("bench serve: --stalled-peer is for the benchmark without --protocol");
      return run_protocols(p, *json);
    }
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
  }};
}

command bench_python(CLI::App* bench) {
  auto opts = std::make_shared<modelreg::bench::python_bench_options>();
  auto json = std::make_shared<bool>(false);
  auto sizes = std::make_shared<std::vector<std::string>>();
  auto* sub = bench->add_subcommand(
    "python", "round trips of 4 KiB, 1 MiB and 64 MiB tensors to one worker, made by C++ and "
              "by Python in one client process, in turns: what Python adds");
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
  add_duration(sub, "--gap", opts->gap,
               "idle time before each round trip (default 1ms: every spinning thread has gone "
               "to sleep, as between a pipeline's frames; 0: back to back)",
               std::chrono::seconds{1});
  sub->add_option("--sizes", *sizes, "tensor sizes (default 4K,1M,64M)")
    ->delimiter(',')
    ->type_name("SIZE,...");
  return command{sub, [opts, json, sizes, sessions] {
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
      std::printf("python benchmark: round trips made by C++ and by Python in turns, in one "
                  "client process of one worker, model '%s',\n%lld us idle before each, %d "
                  "sessions (medians over sessions)\n",
                  opts->model.c_str(), static_cast<long long>(opts->gap.count()), opts->sessions);
      std::printf("%12s %11s %15s %9s %12s %16s %9s\n", "bytes", "C++ p50 us",
                  "as_numpy p50 us", "overhead", "its own us", "from_dlpack p50", "overhead");
      for (const auto& r : j)
        std::printf("%12llu %11.0f %15.0f %9.3f %12.1f %16.0f %9.3f\n",
                    r["bytes"].get<unsigned long long>(), r["cpp_rtt_us_p50"].get<double>(),
                    r["python_rtt_us_p50"].get<double>(), r["overhead"].get<double>(),
                    r["python_own_us"].get<double>(), r["dlpack_python_rtt_us_p50"].get<double>(),
                    r["dlpack_overhead"].get<double>());
    }
    return j.contains("error") ? exit_failed : exit_ok;
  }};
}

command bench_streams(CLI::App* bench) {
  auto streams = std::make_shared<size_t>(4);
  auto model = std::make_shared<std::string>("asr-en-us");
  auto json = std::make_shared<bool>(false);
  auto whole = std::make_shared<bool>(false);
  auto* sub = bench->add_subcommand(
    "streams", "N real-time streams of 20 ms chunks through sessions on a shared recogniser "
               "(one forked instance each): chunk and final latency, kept up, memory against N "
               "processes with their own; --whole: whole-utterance throughput at 1 and 2 instances");
  add_count(sub, "--streams", *streams, "concurrent streams, and clients for --whole (default 4)",
            1, 16);
  sub->add_option("--model", *model, "catalog name given to the pocketsphinx model (default "
                                     "asr-en-us)");
  sub->add_flag("--whole", *whole, "whole-utterance requests: utterances/s with 1 and 2 instances");
  sub->add_flag("--json", *json, "as JSON");
  return command{sub, [streams, model, json, whole] {
    if (*whole) {
      auto one = nlohmann::json::parse(
        modelreg::tools::run_whole_throughput(self_path(), *streams, 1, std::chrono::seconds{15}, *model));
      auto two = nlohmann::json::parse(
        modelreg::tools::run_whole_throughput(self_path(), *streams, 2, std::chrono::seconds{15}, *model));
      if (one.contains("error") || two.contains("error")) {
        std::cerr << "bench streams: " << (one.contains("error") ? one : two)["error"].get<std::string>() << "\n";
        return exit_failed;
      }
      double ratio = one["utterances_per_s"].get<double>() > 0
                       ? two["utterances_per_s"].get<double>() / one["utterances_per_s"].get<double>()
                       : 0.0;
      nlohmann::json j = {{"clients", *streams}, {"one_instance", one}, {"two_instances", two},
                          {"speedup", ratio}};
      if (*json)
        std::cout << j.dump() << std::endl;
      else
        std::printf("whole utterances, %zu clients: %.2f/s with 1 instance, %.2f/s with 2: x%.2f\n",
                    *streams, one["utterances_per_s"].get<double>(),
                    two["utterances_per_s"].get<double>(), ratio);
      return exit_ok;
    }
    auto result = modelreg::tools::run_streams_bench(self_path(), *streams, *model);
    auto j = nlohmann::json::parse(result);
    if (*json) {
      std::cout << result << std::endl;
    } else if (j.contains("error")) {
      std::cerr << "bench streams: " << j["error"].get<std::string>() << "\n";
    } else {
      std::printf("streams benchmark: %zu real-time streams on '%s' (%llu instances)\n", *streams,
                  model->c_str(), static_cast<unsigned long long>(j["instances"].get<uint64_t>()));
      std::printf("  chunk latency  p50 %6.1f ms   p99 %6.1f ms   (%llu chunks)\n",
                  j["chunk_latency_ms_p50"].get<double>(), j["chunk_latency_ms_p99"].get<double>(),
                  static_cast<unsigned long long>(j["chunks"].get<uint64_t>()));
      std::printf("  final latency  p50 %6.1f ms   p99 %6.1f ms\n",
                  j["final_latency_ms_p50"].get<double>(), j["final_latency_ms_p99"].get<double>());
      std::printf("  kept up: %s (latest chunk %.0f ms late); transcripts right: %s\n",
                  j["kept_up"].get<bool>() ? "yes" : "NO", j["max_lateness_ms"].get<double>(),
                  j["transcripts_right"].get<bool>() ? "yes" : "NO");
      std::printf("  one more instance: %.1f MiB; node (with zygote and instances) %.1f MiB, "
                  "clients %.1f MiB, separate %.1f MiB: reduction %.2f\n",
                  j["extra_instance_pss_mib"].get<double>(), j["node_pss_mib"].get<double>(),
                  j["clients_pss_mib"].get<double>(), j["separate_pss_mib"].get<double>(),
                  j["reduction"].get<double>());
    }
    return j.contains("error") ? exit_failed : exit_ok;
  }};
}

command bench_memory(CLI::App* bench) {
  auto clients = std::make_shared<size_t>(4);
  auto model = std::make_shared<std::string>("asr-en-us");
  auto json = std::make_shared<bool>(false);
  auto* sub = bench->add_subcommand(
    "memory", "summed PSS of N processes loading a model themselves against N clients of one "
              "node holding it");
  sub->add_flag("--json", *json, "as JSON");
  add_count(sub, "--clients", *clients, "processes (default 4)", 1, 64);
  sub->add_option("--model", *model, "catalog model (default asr-en-us)");
  return command{sub, [clients, model, json] {
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
  }};
}

command bench_registry(CLI::App* bench) {
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
  return command{sub, [opts, json] {
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
  }};
}

command bench_cluster(CLI::App* bench) {
  auto opts = std::make_shared<modelreg::bench::cluster_bench_options>();
  auto json = std::make_shared<bool>(false);
  auto* sub = bench->add_subcommand(
    "cluster", "many nodes as one registry: loads per model when every client asks every "
               "member at once, a cold model's first answer, forwarded against local round "
               "trips, failover after kill -9 of a holder (docs/cluster.md)");
  sub->add_flag("--json", *json, "as JSON");
  sub->add_option("--nodes", opts->nodes, "members on loopback TCP (default 3)")
    ->check(CLI::Range(2, 16));
  sub->add_option("--clients", opts->clients,
                  "client processes, spread over the members, each asking for every model at "
                  "once (default 6)")
    ->check(CLI::Range(1, 64));
  sub->add_option("--models", opts->models, "catalog models of 8 MiB (default 6)")
    ->check(CLI::Range(1, 64));
  sub->add_option("--requests", opts->rtt_requests,
                  "round trips per path and round, 4 rounds (default 2000)")
    ->check(CLI::Range(10, 1000000));
  sub->add_option("--load-delay", opts->load_delay_ms, "ms each load takes (default 200)")
    ->check(CLI::Range(0, 60000));
  return command{sub, [opts, json] {
    opts->self_path = self_path();
    auto result = modelreg::bench::run_cluster_bench(*opts);
    auto j = nlohmann::json::parse(result);
    if (*json) {
      std::cout << result << std::endl;
    } else if (j.contains("error")) {
      std::cerr << "bench cluster: " << j["error"].get<std::string>() << "\n";
    } else {
      std::printf("cluster benchmark: %d members, %d clients, %d models (loopback TCP)\n",
                  opts->nodes, opts->clients, opts->models);
      std::printf("  loads per model            %s (target: 1 each); client errors %d\n",
                  j["loads_per_model"].dump().c_str(), j["client_errors"].get<int>());
      std::printf("  cold model, asked at all   first answer %.1f ms, last %.1f ms (its load "
                  "takes %d ms)\n",
                  j["cold_first_answer_ms"].get<double>(), j["cold_last_answer_ms"].get<double>(),
                  opts->load_delay_ms);
      std::printf("  round trip p50             local %.1f us, forwarded %.1f us (x%.2f)\n",
                  j["local_rtt_us_p50"].get<double>(), j["forwarded_rtt_us_p50"].get<double>(),
                  j["forwarded_over_local"].get<double>());
      std::printf("  failover (kill -9)         %.1f ms to the first good answer, %d failed "
                  "requests on the way\n",
                  j["failover_ms"].get<double>(), j["failover_errors"].get<int>());
    }
    return j.contains("error") ? exit_failed : exit_ok;
  }};
}

command bench_placement(CLI::App* bench) {
  auto members = std::make_shared<std::vector<size_t>>(std::vector<size_t>{100, 1000});
  auto seed = std::make_shared<uint64_t>(1);
  auto json = std::make_shared<bool>(false);
  auto* sub = bench->add_subcommand(
    "placement", "a simulation of cluster placement and failover at 100 and 1000 members, with "
                 "the members' own placement code: loads per model, budget use, keys moved on "
                 "a membership change");
  sub->add_flag("--json", *json, "as JSON");
  sub->add_option("--members", *members, "member counts to simulate (default 100 1000)")
    ->check(CLI::Range(size_t{2}, size_t{100000}))
    ->expected(1, 8);
  sub->add_option("--seed", *seed, "random seed (default 1)");
  return command{sub, [members, seed, json] {
    auto result = modelreg::bench::run_placement_sim(*members, *seed);
    if (*json) {
      std::cout << result << std::endl;
      return exit_ok;
    }
    auto j = nlohmann::json::parse(result);
    std::printf("%8s %7s %6s %7s %9s %7s %8s %8s %8s %8s %9s\n", "members", "models", "loads",
                "budget", "unplaced", "asked", "own max", "join", "leave", "ideal", "failover");
    for (const auto& r : j["results"])
      std::printf("%8zu %7zu %6d %6.1f%% %9d %7.2f %8.2f %7.2f%% %7.2f%% %7.2f%% %4d/%-4d\n",
                  r["nodes"].get<size_t>(), r["models"].get<size_t>(),
                  r["loads_per_model_max"].get<int>(), 100 * r["budget_utilisation"].get<double>(),
                  r["unplaced_models"].get<int>(), r["holders_asked_per_model"].get<double>(),
                  r["keys_owned_max_over_mean"].get<double>(),
                  100 * r["keys_moved_on_join"].get<double>(),
                  100 * r["keys_moved_on_leave"].get<double>(),
                  100 * r["keys_moved_ideal"].get<double>(), r["failover_replaced"].get<int>(),
                  r["failover_models_lost"].get<int>());
    std::printf("loads: most loads of one model; budget: placed / all budgets; asked: holders "
                "asked per placement; own max: most keys one owner has over the mean; join, "
                "leave: keys whose owner moves; failover: the fullest member's models placed "
                "again\n");
    return exit_ok;
  }};
}

/// Every benchmark, in the order `modelreg bench --help` lists them.
constexpr command (*benchmarks[])(CLI::App*) = {bench_transport, bench_serve,  bench_python,
                                                  bench_memory,    bench_streams, bench_registry,
                                                  bench_cluster,   bench_placement};

} // namespace

std::vector<command> add_benchmarks(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "benchmarks (see docs/benchmarks.md)");
  bench->require_subcommand(1);
  std::vector<command> out;
  for (auto add : benchmarks)
    out.push_back(add(bench));
  return out;
}

std::optional<int> run_hidden_bench(const std::string& command,
                                    const std::vector<std::string>& args) {
#ifdef MODELREG_WITH_GRPC
  if (command == "__grpc-echo-server" && !args.empty())
    return modelreg::bench::run_grpc_echo_server(args[0]);
#endif
  if (command == "__caf-echo-server")
    return modelreg::bench::run_caf_echo_server();
  if (command == "__bench-protocol-client" && args.size() == 10)
    return modelreg::bench::run_protocol_bench_client(
      args[0], args[1], args[2], std::stoull(args[3]), std::stoull(args[4]), std::stoull(args[5]),
      args[6], args[7], std::stof(args[8]), std::stod(args[9]));
  return std::nullopt;
}

} // namespace modelreg::cli

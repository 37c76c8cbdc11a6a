#include "bench/protocol_bench.hpp"
#include "bench/stats.hpp"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <fstream>
#include <iostream>
#include <memory>
#include <regex>
#include <thread>

#include <stdlib.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "doors/oip_client.hpp"
#include "modelreg/actors/blocking_client.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/messages/system_config.hpp"
#include "tools/private_node.hpp"
#include "modelreg/messages/error.hpp"
#include "tools/child_process.hpp"
#include "tools/proc_stats.hpp"

namespace modelreg::bench {

using namespace modelreg::tools;
using json = nlohmann::json;

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

/// The clients of one measurement, started and ready.
struct client_group {
  std::vector<std::unique_ptr<child_process>> procs;
  std::vector<std::string> latency_files;
};

} // namespace

namespace {

/// One connection's calls: true for a right answer.
using call_fn = std::function<caf::expected<bool>()>;

} // namespace

int run_protocol_bench_client(const std::string& protocol, const std::string& address,
                              const std::string& model, uint64_t requests, size_t in_flight,
                              size_t elements, const std::string& latency_file,
                              const std::string& input_name, float scale, double pace_hz) {
  std::vector<float> input(elements);
  for (size_t i = 0; i < elements; ++i)
    input[i] = static_cast<float>(i % 1000) * 0.25f;
  std::vector<call_fn> calls;
  // shm: one node connection, `in_flight` threads each calling through a
  // blocking_client with its own input in shared memory (sent by reference).
  std::unique_ptr<system_config> cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::optional<registry_actor> reg;
  std::optional<model_handle> handle;
  if (protocol == "shm") {
    cfg = std::make_unique<system_config>();
    sys = std::make_unique<caf::actor_system>(*cfg);
    auto r = connect(*sys, "unix:" + address);
    if (!r) {
      std::cout << "error: " << describe(r.error()) << std::endl;
      return 1;
    }
    reg = *r;
    auto h = get_model(*sys, *reg, model);
    if (!h) {
      std::cout << "error: " << describe(h.error()) << std::endl;
      return 1;
    }
    handle = *h;
    auto client = std::make_shared<blocking_client>(*sys, *reg);
    for (size_t k = 0; k < in_flight; ++k) {
      auto t = allocate_input(*sys, *reg, dtype::f32, {static_cast<int64_t>(elements)});
      if (!t) {
        std::cout << "error: " << describe(t.error()) << std::endl;
        return 1;
      }
      std::memcpy(t->mutable_data(), input.data(), elements * sizeof(float));
      auto inputs = std::make_shared<tensor_map>(tensor_map{{input_name, *t}});
      calls.push_back([client, inputs, &model, &input_name, &input, scale,
                       elements]() -> caf::expected<bool> {
        auto r = client->infer(model, *inputs, std::chrono::seconds{60});
        if (!r)
          return r.error();
        auto i = r->find(input_name);
        if (i == r->end() || i->second.nbytes() != elements * sizeof(float))
          return false;
        const auto* out = reinterpret_cast<const float*>(i->second.data());
        for (size_t e = 0; e < elements; e += std::max<size_t>(1, elements / 64))
          if (out[e] != input[e] * scale)
            return false;
        return true;
      });
    }
  } else {
    for (size_t k = 0; k < in_flight; ++k) {
      auto c = doors::make_oip_client(protocol, address);
      if (!c) {
        std::cout << "error: " << describe(c.error()) << std::endl;
        return 1;
      }
      std::shared_ptr<doors::oip_client> conn = std::move(*c);
      calls.push_back([conn, &model, &input_name, &input, scale,
                       elements]() -> caf::expected<bool> {
        auto r = conn->infer_f32(model, input_name, input);
        if (!r)
          return r.error();
        if (r->size() != elements * sizeof(float))
          return false;
        const auto* out = reinterpret_cast<const float*>(r->data());
        for (size_t e = 0; e < elements; e += std::max<size_t>(1, elements / 64))
          if (out[e] != input[e] * scale)
            return false;
        return true;
      });
    }
  }
  // One warm-up call each (connections, the model's load).
  for (auto& call : calls)
    if (auto r = call(); !r) {
      std::cout << "error: " << describe(r.error()) << std::endl;
      return 1;
    }
  std::cout << "ready" << std::endl;
  std::string line;
  std::getline(std::cin, line);
  auto switches = context_switches();
  auto cpu = cpu_seconds();
  std::vector<std::vector<uint32_t>> lat(in_flight);
  std::vector<uint64_t> errors(in_flight), wrong(in_flight);
  std::vector<std::string> first_error(in_flight);
  auto start = now_ns();
  std::vector<std::thread> threads;
  for (size_t k = 0; k < in_flight; ++k) {
    threads.emplace_back([&, k] {
      auto share = requests / in_flight + (k < requests % in_flight ? 1 : 0);
      lat[k].reserve(share);
      auto period = pace_hz > 0 ? static_cast<int64_t>(1e9 / pace_hz) : 0;
      auto next = now_ns();
      for (uint64_t i = 0; i < share; ++i) {
        if (period > 0) {
          next += period;
          std::this_thread::sleep_until(std::chrono::steady_clock::time_point{
            std::chrono::nanoseconds{next}});
        }
        auto t0 = now_ns();
        auto r = calls[k]();
        lat[k].push_back(static_cast<uint32_t>((now_ns() - t0) / 1000));
        if (!r) {
          ++errors[k];
          if (first_error[k].empty())
            first_error[k] = describe(r.error());
        } else if (!*r) {
          ++wrong[k];
        }
      }
    });
  }
  for (auto& t : threads)
    t.join();
  auto end = now_ns();
  switches = context_switches() - switches;
  cpu = cpu_seconds() - cpu;
  std::ofstream out{latency_file, std::ios::binary};
  uint64_t n = 0, err = 0, bad = 0;
  std::string first;
  for (size_t k = 0; k < in_flight; ++k) {
    out.write(reinterpret_cast<const char*>(lat[k].data()),
              static_cast<std::streamsize>(lat[k].size() * sizeof(uint32_t)));
    n += lat[k].size();
    err += errors[k];
    bad += wrong[k];
    if (first.empty())
      first = first_error[k];
  }
  out.close(); // on disk before the parent reads the answer
  calls.clear();
  if (handle)
    handle->release();
  if (reg)
    caf::anon_send(*reg, shutdown_atom::value);
  std::cout << json{{"requests", n},        {"errors", err},       {"wrong", bad},
                    {"start_ns", start},    {"end_ns", end},       {"first_error", first},
                    {"ctx_switches", switches}, {"cpu_s", cpu}}
                 .dump()
            << std::endl;
  return 0;
}

std::string run_protocol_bench(const protocol_bench_options& opts) {
  std::string input_name = opts.model == "gain" ? "audio" : "x";
  float scale = opts.model == "gain" ? 0.5f : 1.0f;
  char tmpl[] = "/tmp/modelreg-bench-protocols-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr)
    return json{{"error", "mkdtemp failed"}}.dump();
  std::string dir = tmpl;
  auto fail = [&](const std::string& why) {
    std::filesystem::remove_all(dir);
    return json{{"error", why}}.dump();
  };
  auto socket = dir + "/node.sock";
  child_process node{{opts.self_path, "serve", "--socket", socket, "--http", "127.0.0.1:0",
                      "--grpc", "127.0.0.1:0", "--http-max-connections", "4096"}};
  auto ready = node.read_line(std::chrono::seconds{60});
  std::smatch m;
  std::string http_at, grpc_at;
  if (std::regex_search(ready, m, std::regex{"http://([^ ]+)"}))
    http_at = m[1];
  if (std::regex_search(ready, m, std::regex{"grpc://([^ ]+)"}))
    grpc_at = m[1];
  if (ready.rfind("ready", 0) != 0 || http_at.empty() || grpc_at.empty())
    return fail("the node did not start: " + ready);
  int serial = 0;
  auto start_clients = [&](const std::string& protocol, size_t count, size_t elements,
                           uint64_t requests, double pace_hz = 0) -> caf::expected<client_group> {
    client_group g;
    for (size_t i = 0; i < count; ++i) {
      auto lat = dir + "/lat" + std::to_string(serial++);
      std::vector<std::string> argv;
      // Every door's clients alike: `in_flight` threads per process, each
      // making one call after another on a connection (shm: through
      // blocking_client, inputs in shared memory).
      argv = {opts.self_path, "__bench-protocol-client", protocol,
                protocol == "http" ? http_at : protocol == "grpc" ? grpc_at : socket, opts.model,
                std::to_string(requests),
                std::to_string(opts.in_flight), std::to_string(elements), lat, input_name,
                std::to_string(scale), std::to_string(pace_hz)};
      g.procs.push_back(std::make_unique<child_process>(argv));
      g.latency_files.push_back(lat);
    }
    for (auto& c : g.procs) {
      auto line = c->read_line(std::chrono::seconds{120});
      if (line != "ready")
        return make_error(errc::unavailable, protocol + " client did not get ready: " + line);
    }
    return g;
  };
  auto collect = [&](client_group& g, const std::string& protocol, size_t elements) -> json {
    uint64_t requests = 0, errors = 0, wrong = 0;
    double cpu = 0;
    int64_t first_start = INT64_MAX, last_end = 0;
    std::string first_error;
    std::vector<uint32_t> latencies;
    for (size_t i = 0; i < g.procs.size(); ++i) {
      auto line = g.procs[i]->read_line(std::chrono::minutes{10});
      auto j = json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("requests"))
        return json{{"protocol", protocol}, {"error", "a client failed: " + line}};
      requests += j["requests"].get<uint64_t>();
      errors += j["errors"].get<uint64_t>();
      wrong += j["wrong"].get<uint64_t>();
      cpu += j.value("cpu_s", 0.0);
      if (first_error.empty())
        first_error = j["first_error"].get<std::string>();
      first_start = std::min(first_start, j["start_ns"].get<int64_t>());
      last_end = std::max(last_end, j["end_ns"].get<int64_t>());
      std::ifstream lat{g.latency_files[i], std::ios::binary};
      std::vector<char> bytes{std::istreambuf_iterator<char>{lat}, {}};
      auto n = bytes.size() / sizeof(uint32_t);
      auto at = latencies.size();
      latencies.resize(at + n);
      std::memcpy(latencies.data() + at, bytes.data(), n * sizeof(uint32_t));
    }
    double secs = static_cast<double>(last_end - first_start) / 1e9;
    json r{{"protocol", protocol},
           {"bytes", elements * sizeof(float)},
           {"clients", g.procs.size()},
           {"in_flight_per_client", opts.in_flight},
           {"requests", requests},
           {"errors", errors},
           {"wrong_answers", wrong},
           {"req_per_s", secs > 0 ? static_cast<double>(requests) / secs : 0.0},
           {"wall_s", secs},
           {"clients_cpu_s", cpu},
           {"latency_us_p50", percentile(latencies, 0.5)},
           {"latency_us_p99", percentile(latencies, 0.99)}};
    if (!first_error.empty())
      r["first_error"] = first_error;
    return r;
  };
  auto requests_for = [&](size_t elements) {
    auto scaled = opts.requests * 1024 / std::max<size_t>(elements, 1024);
    return std::max<uint64_t>(scaled, 200);
  };
  constexpr size_t other_elements = 1024; // the others send 4 KiB
  auto runs = json::array();
  json ratios = json::object();
  for (auto elements : opts.sizes) {
    std::map<std::string, double> rate;
    for (const auto& protocol : opts.protocols) {
      auto g = start_clients(protocol, opts.clients, elements, requests_for(elements));
      if (!g)
        return fail(describe(g.error()));
      for (auto& c : g->procs)
        c->close_stdin();
      auto r = collect(*g, protocol, elements);
      r["others"] = "none";
      if (r.contains("req_per_s"))
        rate[protocol] = r["req_per_s"].get<double>();
      runs.push_back(std::move(r));
    }
    json ratio{{"bytes", elements * sizeof(float)}};
    // The shared-memory clients again, in rounds of three runs: alone, with
    // HTTP and gRPC clients connected but silent, and with those clients
    // making requests all the while (they start first and end after). The
    // machine drifts between runs by up to a fifth, so each condition's
    // figure is the median over the rounds, and rounds interleave them.
    if (opts.mixed && rate.count("shm")) {
      auto half = std::max<size_t>(opts.clients / 2, 1);
      std::map<std::string, std::vector<double>> by_condition;
      std::vector<double> others_share;
      for (size_t round = 0; round < opts.rounds; ++round) {
        for (std::string condition : {"none", "connected", "busy"}) {
          // The other doors' client processes, HTTP and gRPC alike.
          std::vector<std::unique_ptr<child_process>> others;
          if (condition != "none") {
            // Silent ones get ready (connected, one warm-up call each) and
            // never get the word to start.
            double hz = condition == "busy" ? opts.others_hz : 0;
            for (const char* door : {"http", "grpc"}) {
              auto group = start_clients(door, half, other_elements, 1u << 30, hz);
              if (!group)
                return fail("the other protocols' clients did not start");
              for (auto& c : group->procs)
                others.push_back(std::move(c));
            }
            if (condition == "busy")
              for (auto& c : others)
                c->close_stdin();
          }
          // At least 1500 requests a client: a run of a fraction of a
          // second (1 MiB) is all noise.
          auto g = start_clients("shm", opts.clients, elements,
                                 std::max<uint64_t>(requests_for(elements), 1500));
          if (!g)
            return fail(describe(g.error()));
          // CPU time over the shm run: the node's and the others' processes'.
          auto others_cpu = [&] {
            double sum = 0;
            for (auto& c : others)
              sum += cpu_seconds(c->pid());
            return sum;
          };
          auto node_cpu0 = cpu_seconds(node.pid()), others_cpu0 = others_cpu();
          for (auto& c : g->procs)
            c->close_stdin();
          auto r = collect(*g, "shm", elements);
          r["node_cpu_s"] = cpu_seconds(node.pid()) - node_cpu0;
          r["others_cpu_s"] = others_cpu() - others_cpu0;
          r["others"] = condition;
          r["round"] = round + 1;
          if (condition != "none")
            r["other_clients"] = {{"http", half},
                                  {"grpc", half},
                                  {"connections_each", opts.in_flight},
                                  {"requests_per_s_per_connection",
                                   condition == "busy" ? opts.others_hz : 0.0},
                                  {"bytes", other_elements * sizeof(float)}};
          for (auto& c : others)
            c->kill(SIGKILL);
          if (r.contains("req_per_s")) {
            by_condition[condition].push_back(r["req_per_s"].get<double>());
            // The share of the machine's CPU the other clients' processes
            // took while shm ran: what shm cannot have, however the node
            // schedules its own threads.
            auto cores = std::max(1u, std::thread::hardware_concurrency());
            if (condition == "busy" && r.value("wall_s", 0.0) > 0)
              others_share.push_back(r["others_cpu_s"].get<double>() /
                                     (r["wall_s"].get<double>() * cores));
          }
          runs.push_back(std::move(r));
        }
      }
      auto alone = percentile(by_condition["none"], 0.5);
      if (alone > 0) {
        ratio["shm_connected_over_alone"] = percentile(by_condition["connected"], 0.5) / alone;
        ratio["shm_busy_over_alone"] = percentile(by_condition["busy"], 0.5) / alone;
        ratio["others_cpu_share_busy"] = percentile(others_share, 0.5);
      }
    }
    if (rate.count("shm") && rate["shm"] > 0)
      for (const auto& [p, v] : rate)
        if (p != "shm")
          ratio[p + "_over_shm"] = v / rate["shm"];
    ratios[std::to_string(elements * sizeof(float))] = ratio;
  }
  node.kill(SIGTERM);
  node.wait_for_exit(std::chrono::seconds{15});
  std::filesystem::remove_all(dir);
  return json{{"model", opts.model}, {"runs", runs}, {"ratios", ratios}}.dump();
}

} // namespace modelreg::bench

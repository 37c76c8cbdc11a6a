#include "bench/serve_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <vector>

#include <stdlib.h>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/send.hpp>

#include "tools/child_process.hpp"
#include "tools/private_node.hpp"
#include "tools/proc_stats.hpp"
#include "bench/transport_bench.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"

namespace modelreg::bench {

using namespace modelreg::tools;

namespace {

double percentile(std::vector<uint32_t>& v, double q) {
  if (v.empty())
    return 0;
  auto k = static_cast<size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

} // namespace

std::string run_serve_bench(const serve_bench_options& given) {
  auto opts = given;
  if (opts.model.empty())
    opts.model = opts.in_flight == 1 ? "gain" : "echo";
  if (opts.elements == 0)
    opts.elements = opts.in_flight == 1 ? 1024 : 16;
  // The default catalog's entries whose answers the clients can check.
  std::string input_name;
  float scale = 1.0f;
  if (opts.model == "echo") {
    input_name = "x";
  } else if (opts.model == "gain") {
    input_name = "audio";
    scale = 0.5f;
  } else {
    return nlohmann::json{{"clients", opts.clients},
                          {"error", "bench serve calls 'echo' or 'gain' (the default catalog's "
                                    "models whose answers it can check), not '" +
                                      opts.model + "'"}}
      .dump();
  }
  char tmpl[] = "/tmp/modelreg-bench-serve-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr)
    return nlohmann::json{{"clients", opts.clients}, {"error", "mkdtemp failed"}}.dump();
  std::string dir = tmpl;
  auto socket = dir + "/node.sock";
  auto fail = [&](const std::string& why) {
    std::filesystem::remove_all(dir);
    return nlohmann::json{{"clients", opts.clients}, {"error", why}}.dump();
  };
  std::vector<std::string> node_argv{opts.self_path, "serve", "--socket", socket};
  if (opts.stalled_peer)
    node_argv.insert(node_argv.end(), {"--peer-timeout", "0"});
  child_process node{node_argv};
  if (node.read_line().rfind("ready", 0) != 0)
    return fail("the node did not start");
  std::unique_ptr<child_process> stalled;
  if (opts.stalled_peer) {
    stalled = std::make_unique<child_process>(
      std::vector<std::string>{opts.self_path, "__flood-client", socket, "3000", "64"});
    if (stalled->read_line(std::chrono::seconds{60}).rfind("sent", 0) != 0)
      return fail("the stalled peer did not start");
    stalled->kill(SIGSTOP);
  }
  std::vector<std::unique_ptr<child_process>> clients;
  for (size_t i = 0; i < opts.clients; ++i) {
    clients.push_back(std::make_unique<child_process>(std::vector<std::string>{
      opts.self_path, "__bench-serve-client", "unix:" + socket, opts.model,
      std::to_string(opts.requests), std::to_string(opts.in_flight), std::to_string(opts.elements),
      dir + "/lat" + std::to_string(i), input_name, std::to_string(scale)}));
  }
  for (auto& c : clients) {
    auto line = c->read_line(std::chrono::seconds{60});
    if (line != "ready")
      return fail("a client did not get ready: " + line);
  }
  auto node_switches = context_switches(node.pid());
  for (auto& c : clients)
    c->close_stdin(); // go (EOF ends their wait as well as a line would)
  uint64_t requests = 0, errors = 0, wrong = 0, client_switches = 0;
  int64_t first_start = INT64_MAX, last_end = 0;
  std::string first_error;
  std::vector<uint32_t> latencies;
  for (size_t i = 0; i < clients.size(); ++i) {
    auto line = clients[i]->read_line(std::chrono::minutes{5});
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("requests"))
      return fail("client " + std::to_string(i) + " failed: " + line);
    requests += j["requests"].get<uint64_t>();
    client_switches += j["ctx_switches"].get<uint64_t>();
    errors += j["errors"].get<uint64_t>();
    wrong += j["wrong"].get<uint64_t>();
    if (first_error.empty())
      first_error = j["first_error"].get<std::string>();
    first_start = std::min(first_start, j["start_ns"].get<int64_t>());
    last_end = std::max(last_end, j["end_ns"].get<int64_t>());
    std::ifstream lat{dir + "/lat" + std::to_string(i), std::ios::binary};
    std::vector<char> bytes{std::istreambuf_iterator<char>{lat}, {}};
    auto n = bytes.size() / sizeof(uint32_t);
    auto at = latencies.size();
    latencies.resize(at + n);
    std::memcpy(latencies.data() + at, bytes.data(), n * sizeof(uint32_t));
  }
  // The node's switches up to here: the last client's answer is in.
  node_switches = context_switches(node.pid()) - node_switches;
  // How many loads the node made (one, whatever the number of clients).
  uint64_t loads = 0;
  {
    system_config cfg;
    caf::actor_system sys{cfg};
    connect_options copts;
    copts.reconnect = false;
    if (auto reg = connect(sys, "unix:" + socket, copts)) {
      if (auto raw = remote_status_json(sys, *reg)) {
        auto j = nlohmann::json::parse(*raw, nullptr, false);
        if (!j.is_discarded())
          loads = j["totals"]["loads"].get<uint64_t>();
      }
      caf::anon_send(*reg, shutdown_atom::value);
    }
  }
  if (stalled) {
    stalled->kill(SIGKILL);
    stalled->kill(SIGCONT);
  }
  node.kill(SIGTERM);
  node.wait_for_exit(std::chrono::seconds{10});
  // The transport alone, same size, measured right after on the same
  // machine state: what the registry, the gateway and the model add.
  auto bytes = opts.elements * sizeof(float);
  double transport_p50 = 0;
  std::string transport_error;
  if (opts.in_flight == 1 && opts.with_transport) {
    try {
      transport_p50 = shm_rtt_us_p50(opts.self_path, bytes, dir + "/transport");
    } catch (const std::exception& e) {
      transport_error = e.what();
    }
  }
  std::filesystem::remove_all(dir);
  double secs = static_cast<double>(last_end - first_start) / 1e9;
  auto p50 = percentile(latencies, 0.50);
  nlohmann::json out = {{"clients", opts.clients},
                        {"requests", requests},
                        {"errors", errors},
                        {"req_per_s", secs > 0 ? static_cast<double>(requests) / secs : 0.0},
                        {"latency_us_p50", p50},
                        {"latency_us_p99", percentile(latencies, 0.99)},
                        {"rtt_us_p50", p50},
                        {"ctx_switches_per_request",
                         requests > 0 ? static_cast<double>(node_switches + client_switches) /
                                          static_cast<double>(requests)
                                      : 0.0},
                        {"in_flight_per_client", opts.in_flight},
                        {"model", opts.model},
                        {"bytes", bytes},
                        {"loads", loads},
                        {"wrong_answers", wrong},
                        {"stalled_peer", opts.stalled_peer}};
  if (transport_p50 > 0) {
    out["transport_rtt_us_p50"] = transport_p50;
    out["full_stack_over_transport"] = p50 / transport_p50;
  }
  if (!transport_error.empty())
    out["transport_error"] = transport_error;
  if (!first_error.empty())
    out["first_error"] = first_error;
  return out.dump();
}

} // namespace modelreg::bench

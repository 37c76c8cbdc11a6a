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

#include "bench/child_process.hpp"
#include "bench/private_node.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"

namespace modelreg::bench {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

using go_atom = caf::atom_constant<caf::atom("go")>;

struct driver_result {
  uint64_t done = 0;
  uint64_t errors = 0;
  uint64_t wrong = 0;
  std::vector<uint32_t> latencies_us;
  std::string first_error;
};

struct driver_state {
  registry_actor reg;
  std::string model;
  tensor input;
  uint64_t total = 0;
  uint64_t sent = 0;
  std::shared_ptr<driver_result> out;
};

void send_one(caf::stateful_actor<driver_state>* self) {
  auto& st = self->state;
  if (st.sent >= st.total)
    return;
  ++st.sent;
  auto started = now_ns();
  auto finish_one = [self] {
    if (++self->state.out->done == self->state.total)
      self->quit();
    else
      send_one(self);
  };
  self->request(st.reg, caf::infinite, infer_atom::value, st.model, tensor_map{{"x", st.input}})
    .then(
      [self, started, finish_one](const tensor_map& result) {
        auto& st = self->state;
        st.out->latencies_us.push_back(static_cast<uint32_t>((now_ns() - started) / 1000));
        auto i = result.find("x");
        if (i == result.end() || i->second.nbytes() != st.input.nbytes() ||
            std::memcmp(i->second.data(), st.input.data(), st.input.nbytes()) != 0)
          ++st.out->wrong;
        finish_one();
      },
      [self, finish_one](caf::error& err) {
        auto& out = *self->state.out;
        ++out.errors;
        if (out.first_error.empty())
          out.first_error = describe(err);
        finish_one();
      });
}

/// Keeps `in_flight` requests outstanding until `total` were answered.
caf::behavior driver(caf::stateful_actor<driver_state>* self, registry_actor reg,
                     std::string model, tensor input, uint64_t total, size_t in_flight,
                     std::shared_ptr<driver_result> out) {
  auto& st = self->state;
  st.reg = std::move(reg);
  st.model = std::move(model);
  st.input = std::move(input);
  st.total = total;
  st.out = std::move(out);
  return {
    [self, in_flight](go_atom) {
      for (size_t i = 0; i < in_flight; ++i)
        send_one(self);
    },
  };
}

double percentile(std::vector<uint32_t>& v, double q) {
  if (v.empty())
    return 0;
  auto k = static_cast<size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

} // namespace

int run_serve_bench_client(const std::string& uri, const std::string& model, uint64_t requests,
                           size_t in_flight, size_t elements, const std::string& latency_file) {
  system_config cfg;
  caf::actor_system sys{cfg};
  auto reg = connect(sys, uri);
  if (!reg) {
    std::printf("{\"error\":\"%s\"}\n", describe(reg.error()).c_str());
    return 1;
  }
  auto handle = get_model(sys, *reg, model);
  if (!handle) {
    std::printf("{\"error\":\"%s\"}\n", describe(handle.error()).c_str());
    return 1;
  }
  // The input lives in shared memory: each request sends a reference.
  auto input = allocate_input(sys, *reg, dtype::f32, {static_cast<int64_t>(elements)});
  if (!input) {
    std::printf("{\"error\":\"%s\"}\n", describe(input.error()).c_str());
    return 1;
  }
  auto values = input->mutable_values<float>();
  for (size_t i = 0; i < elements; ++i)
    (*values)[i] = static_cast<float>(i) * 0.5f;
  std::printf("ready\n");
  std::fflush(stdout);
  char line[16];
  (void) std::fgets(line, sizeof(line), stdin); // a line or EOF: go
  auto out = std::make_shared<driver_result>();
  out->latencies_us.reserve(requests);
  int64_t start = now_ns();
  {
    caf::scoped_actor self{sys};
    auto d = sys.spawn(driver, *reg, model, *input, requests, in_flight, out);
    self->monitor(d);
    caf::anon_send(d, go_atom::value);
    self->receive([](const caf::down_msg&) {});
  }
  int64_t end = now_ns();
  std::ofstream lat{latency_file, std::ios::binary};
  lat.write(reinterpret_cast<const char*>(out->latencies_us.data()),
            static_cast<std::streamsize>(out->latencies_us.size() * sizeof(uint32_t)));
  nlohmann::json j = {{"requests", out->done}, {"errors", out->errors}, {"wrong", out->wrong},
                      {"start_ns", start},     {"end_ns", end},         {"first_error", out->first_error}};
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
  handle->release();
  caf::anon_send(*reg, shutdown_atom::value);
  return 0;
}

std::string run_serve_bench(const serve_bench_options& opts) {
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
      dir + "/lat" + std::to_string(i)}));
  }
  for (auto& c : clients) {
    auto line = c->read_line(std::chrono::seconds{60});
    if (line != "ready")
      return fail("a client did not get ready: " + line);
  }
  for (auto& c : clients)
    c->close_stdin(); // go (EOF ends their wait as well as a line would)
  uint64_t requests = 0, errors = 0, wrong = 0;
  int64_t first_start = INT64_MAX, last_end = 0;
  std::string first_error;
  std::vector<uint32_t> latencies;
  for (size_t i = 0; i < clients.size(); ++i) {
    auto line = clients[i]->read_line(std::chrono::minutes{5});
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("requests"))
      return fail("client " + std::to_string(i) + " failed: " + line);
    requests += j["requests"].get<uint64_t>();
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
  std::filesystem::remove_all(dir);
  double secs = static_cast<double>(last_end - first_start) / 1e9;
  nlohmann::json out = {{"clients", opts.clients},
                        {"requests", requests},
                        {"errors", errors},
                        {"req_per_s", secs > 0 ? static_cast<double>(requests) / secs : 0.0},
                        {"latency_us_p50", percentile(latencies, 0.50)},
                        {"latency_us_p99", percentile(latencies, 0.99)},
                        {"in_flight_per_client", opts.in_flight},
                        {"model", opts.model},
                        {"loads", loads},
                        {"wrong_answers", wrong},
                        {"stalled_peer", opts.stalled_peer}};
  if (!first_error.empty())
    out["first_error"] = first_error;
  return out.dump();
}

} // namespace modelreg::bench

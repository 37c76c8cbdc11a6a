#include "bench/python_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>

#include <stdlib.h>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "tools/child_process.hpp"
#include "tools/private_node.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"

namespace modelreg::bench {

using namespace modelreg::tools;

namespace {

/// The Python client: the calls a user makes (client.empty once per size;
/// client.infer and numpy.from_dlpack per round trip).
constexpr const char* python_client = R"PY(
import json, sys, time
import numpy as np
import modelreg

uri, model = sys.argv[1], sys.argv[2]
client = modelreg.connect(uri)
client.load(model)
inputs = {}
print("ready", flush=True)
for line in sys.stdin:
    nbytes, n = (int(v) for v in line.split())
    if nbytes not in inputs:
        x = client.empty((nbytes // 4,), np.float32)
        x[:] = np.arange(nbytes // 4, dtype=np.float32) * 0.5
        inputs[nbytes] = x
    x = inputs[nbytes]
    lat = []
    waited = client.counters()["infer_wait_s"]
    for _ in range(n):
        t0 = time.perf_counter_ns()
        out = client.infer(model, {"x": x})
        y = np.from_dlpack(out["x"])
        lat.append((time.perf_counter_ns() - t0) // 1000)
        if y.shape != x.shape or y[-1] != x[-1]:
            print(json.dumps({"error": "wrong answer"}), flush=True)
            sys.exit(1)
        del out, y
    # The client's own time per call: the round trips less what infer()
    # waited for the node (the counters' clock is read outside the timing).
    waited = client.counters()["infer_wait_s"] - waited
    own_us = (sum(lat) - waited * 1e6) / max(n, 1)
    print(json.dumps({"lat": lat, "own_us": own_us}), flush=True)
client.close()
)PY";

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

double percentile(std::vector<double> v, double q) {
  if (v.empty())
    return 0;
  auto k = static_cast<size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

std::string error_json(const std::string& why) {
  return nlohmann::json{{"error", why}}.dump();
}

/// Asks a client process for `n` round trips of `bytes`; their times (and,
/// from the Python client, its own mean time per call, into `own`).
std::string run_round(child_process& client, uint64_t bytes, uint64_t n,
                      std::vector<double>& lat, std::vector<double>* own = nullptr) {
  client.write_line(std::to_string(bytes) + " " + std::to_string(n));
  auto line = client.read_line(std::chrono::minutes{5});
  auto j = nlohmann::json::parse(line, nullptr, false);
  if (j.is_object() && j.contains("lat") && j["lat"].is_array()) {
    if (own != nullptr && j.contains("own_us") && j["own_us"].is_number())
      own->push_back(j["own_us"].get<double>());
    j = j["lat"];
  }
  if (!j.is_array())
    return "failed: " + line;
  for (auto& v : j)
    lat.push_back(v.get<double>());
  return {};
}

} // namespace

int run_rtt_client(const std::string& uri, const std::string& model) {
  system_config cfg;
  caf::actor_system sys{cfg};
  connect_options copts;
  copts.reconnect = false;
  auto reg = connect(sys, uri, copts);
  if (!reg)
    return report_error(reg.error());
  // A synchronous caller, as a pipeline node written against connect()
  // would be.
  auto handle = get_model(sys, *reg, model);
  if (!handle)
    return report_error(handle.error());
  // Its fastest path: the request written by this thread, the answer
  // handed over by the connection's thread (blocking_client).
  blocking_client caller{sys, *reg};
  std::printf("ready\n");
  std::fflush(stdout);
  std::map<uint64_t, tensor> inputs;
  std::string line;
  while (std::getline(std::cin, line)) {
    uint64_t bytes = 0, n = 0;
    if (std::sscanf(line.c_str(), "%lu %lu", &bytes, &n) != 2 || bytes < sizeof(float))
      break;
    auto& input = inputs[bytes];
    if (!input.data()) {
      auto elements = static_cast<int64_t>(bytes / sizeof(float));
      auto t = allocate_input(sys, *reg, dtype::f32, {elements});
      if (!t)
        return report_error(t.error());
      auto values = t->mutable_values<float>();
      for (int64_t i = 0; i < elements; ++i)
        (*values)[static_cast<size_t>(i)] = static_cast<float>(i) * 0.5f;
      input = *t;
    }
    nlohmann::json lat = nlohmann::json::array();
    std::string wrong;
    for (uint64_t i = 0; i < n && wrong.empty(); ++i) {
      auto t0 = now_ns();
      auto out = caller.infer(model, tensor_map{{"x", input}}, std::chrono::minutes{1});
      if (!out) {
        wrong = describe(out.error());
        break;
      }
      lat.push_back((now_ns() - t0) / 1000);
      auto y = out->find("x");
      auto last = input.nbytes() - sizeof(float);
      if (y == out->end() || y->second.nbytes() != input.nbytes() ||
          std::memcmp(y->second.data() + last, input.data() + last, sizeof(float)) != 0)
        wrong = "wrong answer";
    }
    if (!wrong.empty())
      std::printf("%s\n", nlohmann::json{{"error", wrong}}.dump().c_str());
    else
      std::printf("%s\n", lat.dump().c_str());
    std::fflush(stdout);
  }
  handle->release();
  caf::anon_send(*reg, shutdown_atom::value);
  return 0;
}

std::string run_python_bench(const python_bench_options& opts) {
  private_node node{opts.self_path, "bench-python"};
  if (!node.ready)
    return error_json("the node did not start");
  auto uri = node.uri();
  if (!opts.python_path.empty()) {
    std::string path = opts.python_path;
    if (const char* old = std::getenv("PYTHONPATH"); old != nullptr && *old != '\0')
      path += std::string{":"} + old;
    ::setenv("PYTHONPATH", path.c_str(), 1);
  }

  struct per_size {
    std::vector<double> cpp_p50, python_p50, overhead, cpp_all, python_all, python_own;
  };
  std::map<uint64_t, per_size> results;
  for (int s = 0; s < opts.sessions; ++s) {
    child_process cpp{{opts.self_path, "__bench-rtt-client", uri, opts.model}};
    child_process py{{opts.python, "-c", python_client, uri, opts.model}};
    if (auto line = cpp.read_line(std::chrono::seconds{60}); line != "ready")
      return error_json("the C++ client did not start: " + line);
    if (auto line = py.read_line(std::chrono::seconds{60}); line != "ready")
      return error_json("the Python client did not start (" + opts.python + "): " + line);
    for (auto bytes : opts.sizes) {
      auto total = std::clamp<uint64_t>(opts.budget_bytes / bytes, opts.min_round_trips,
                                        opts.max_round_trips);
      auto per_round = std::min(opts.round_trips_per_round, total);
      std::vector<double> warm, a, b;
      if (auto e = run_round(cpp, bytes, 3, warm); !e.empty())
        return error_json("C++ client " + e);
      if (auto e = run_round(py, bytes, 3, warm); !e.empty())
        return error_json("Python client " + e);
      for (uint64_t done = 0; done < total; done += per_round) {
        if (auto e = run_round(cpp, bytes, per_round, a); !e.empty())
          return error_json("C++ client " + e);
        if (auto e = run_round(py, bytes, per_round, b, &results[bytes].python_own); !e.empty())
          return error_json("Python client " + e);
      }
      auto& r = results[bytes];
      auto pa = percentile(a, 0.5), pb = percentile(b, 0.5);
      r.cpp_p50.push_back(pa);
      r.python_p50.push_back(pb);
      r.overhead.push_back(pa > 0 ? (pb - pa) / pa : 0.0);
      r.cpp_all.insert(r.cpp_all.end(), a.begin(), a.end());
      r.python_all.insert(r.python_all.end(), b.begin(), b.end());
    }
    cpp.close_stdin();
    py.close_stdin();
    cpp.wait_for_exit(std::chrono::seconds{10});
    py.wait_for_exit(std::chrono::seconds{10});
  }
  nlohmann::json out = nlohmann::json::array();
  for (auto bytes : opts.sizes) {
    auto& r = results[bytes];
    auto python_p50 = percentile(r.python_p50, 0.5), python_own = percentile(r.python_own, 0.5);
    out.push_back({{"bytes", bytes},
                   {"cpp_rtt_us_p50", percentile(r.cpp_p50, 0.5)},
                   {"python_rtt_us_p50", python_p50},
                   {"overhead", percentile(r.overhead, 0.5)},
                   {"overhead_per_session", r.overhead},
                   // Of the Python round trip, the part spent in Python and
                   // the binding rather than waiting for the node.
                   {"python_own_us", python_own},
                   {"python_own_share", python_p50 > 0 ? python_own / python_p50 : 0.0},
                   {"cpp_rtt_us_p99", percentile(r.cpp_all, 0.99)},
                   {"python_rtt_us_p99", percentile(r.python_all, 0.99)},
                   {"round_trips_per_client", r.cpp_all.size()},
                   {"sessions", opts.sessions},
                   {"model", opts.model}});
  }
  return out.dump();
}

} // namespace modelreg::bench

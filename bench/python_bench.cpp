#include "bench/python_bench.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/stats.hpp"
#include "tools/child_process.hpp"
#include "tools/private_node.hpp"

namespace modelreg::bench {

using namespace modelreg::tools;

namespace {

/// The Python client. Per line "BYTES N GAP_US WAY" it makes N pairs of
/// round trips with one input of BYTES in shared memory (client.empty): one
/// by C++ in this process (Client._cpp_round_trips: the client library's
/// blocking call, timed in C++, after sleeping GAP_US in C++), then one by
/// Python as a user makes it, timed in Python after time.sleep: WAY "numpy"
/// is client.infer(..., as_numpy=True), "dlpack" is client.infer and
/// numpy.from_dlpack. Answers are checked outside the timing.
constexpr const char* python_client = R"PY(
import json, sys, time
import numpy as np
import modelreg

uri, model = sys.argv[1], sys.argv[2]
client = modelreg.connect(uri)
client.load(model)
inputs = {}
waited = client.counters()["infer_wait_s"]
print("ready", flush=True)

def fail(why):
    print(json.dumps({"error": why}), flush=True)
    sys.exit(1)

for line in sys.stdin:
    nbytes, n, gap_us, way = line.split()
    nbytes, n, gap_us = int(nbytes), int(n), int(gap_us)
    if nbytes not in inputs:
        x = client.empty((nbytes // 4,), np.float32)
        x[:] = np.arange(nbytes // 4, dtype=np.float32) * 0.5
        inputs[nbytes] = x
    x = inputs[nbytes]
    gap = gap_us / 1e6
    cpp, py, py_ns = [], [], 0
    for _ in range(n):
        lat, out = client._cpp_round_trips(model, {"x": x}, 1, gap_us)
        y = np.from_dlpack(out["x"])
        if y.shape != x.shape or y[-1] != x[-1]:
            fail("wrong answer to C++")
        cpp += lat
        del out, y
        if gap > 0:
            time.sleep(gap)
        if way == "numpy":
            t0 = time.perf_counter_ns()
            y = client.infer(model, {"x": x}, as_numpy=True)["x"]
            t = time.perf_counter_ns() - t0
        else:
            t0 = time.perf_counter_ns()
            y = np.from_dlpack(client.infer(model, {"x": x})["x"])
            t = time.perf_counter_ns() - t0
        if y.shape != x.shape or y[-1] != x[-1]:
            fail("wrong answer to Python")
        py.append(t // 1000)
        py_ns += t
        del y
    # Python's own time per call: its round trips less what infer() waited
    # for the node (the counter is read here, between lines, never inside
    # a turn).
    now = client.counters()["infer_wait_s"]
    own_us = (py_ns / 1000 - (now - waited) * 1e6) / max(n, 1)
    waited = now
    print(json.dumps({"cpp": cpp, "py": py, "own_us": own_us}), flush=True)
client.close()
)PY";

std::string error_json(const std::string& why) {
  return nlohmann::json{{"error", why}}.dump();
}

struct turns {
  std::vector<double> cpp, python;
  double own_us = 0;
};

/// Asks the client process for `n` pairs of round trips of `bytes`, the
/// Python ones made `way` ("numpy" or "dlpack").
std::string run_turns(child_process& client, uint64_t bytes, uint64_t n,
                      std::chrono::microseconds gap, const char* way, turns& out) {
  client.write_line(std::to_string(bytes) + " " + std::to_string(n) + " " +
                    std::to_string(gap.count()) + " " + way);
  auto line = client.read_line(std::chrono::minutes{5});
  auto j = nlohmann::json::parse(line, nullptr, false);
  if (!j.is_object() || !j.contains("cpp") || !j["cpp"].is_array() || !j.contains("py") ||
      !j["py"].is_array() || !j.contains("own_us") || !j["own_us"].is_number())
    return "failed: " + (line.empty() ? std::string{"no answer"} : line);
  for (auto& v : j["cpp"])
    out.cpp.push_back(v.get<double>());
  for (auto& v : j["py"])
    out.python.push_back(v.get<double>());
  out.own_us = j["own_us"].get<double>();
  return {};
}

} // namespace

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

  // Per size and way of reading the answer (numpy, dlpack).
  struct per_way {
    std::vector<double> cpp_p50, python_p50, overhead, cpp_all, python_all, python_own;
  };
  std::map<std::pair<uint64_t, std::string>, per_way> results;
  const char* ways[] = {"numpy", "dlpack"};
  for (int s = 0; s < opts.sessions; ++s) {
    child_process py{{opts.python, "-c", python_client, uri, opts.model}};
    if (auto line = py.read_line(std::chrono::seconds{60}); line != "ready")
      return error_json("the Python client did not start (" + opts.python + "): " +
                        (line.empty() ? std::string{"no answer"} : line));
    for (auto bytes : opts.sizes) {
      auto n = std::clamp<uint64_t>(opts.budget_bytes / bytes, opts.min_round_trips,
                                    opts.max_round_trips);
      for (const char* way : ways) {
        turns warm, t;
        if (auto e = run_turns(py, bytes, 3, opts.gap, way, warm); !e.empty())
          return error_json("Python client " + e);
        if (auto e = run_turns(py, bytes, n, opts.gap, way, t); !e.empty())
          return error_json("Python client " + e);
        auto& r = results[{bytes, way}];
        auto pa = percentile(t.cpp, 0.5), pb = percentile(t.python, 0.5);
        r.cpp_p50.push_back(pa);
        r.python_p50.push_back(pb);
        r.overhead.push_back(pa > 0 ? (pb - pa) / pa : 0.0);
        r.python_own.push_back(t.own_us);
        r.cpp_all.insert(r.cpp_all.end(), t.cpp.begin(), t.cpp.end());
        r.python_all.insert(r.python_all.end(), t.python.begin(), t.python.end());
      }
    }
    py.close_stdin();
    py.wait_for_exit(std::chrono::seconds{10});
  }
  nlohmann::json out = nlohmann::json::array();
  for (auto bytes : opts.sizes) {
    auto& r = results[{bytes, "numpy"}];
    auto& d = results[{bytes, "dlpack"}];
    auto per_session = r.overhead, dlpack_per_session = d.overhead; // in session order
    auto python_p50 = percentile(r.python_p50, 0.5), python_own = percentile(r.python_own, 0.5);
    out.push_back({{"bytes", bytes},
                   {"cpp_rtt_us_p50", percentile(r.cpp_p50, 0.5)},
                   // client.infer(..., as_numpy=True)
                   {"python_rtt_us_p50", python_p50},
                   {"overhead", percentile(r.overhead, 0.5)},
                   {"overhead_per_session", per_session},
                   // Of the Python round trip, the part spent in Python and
                   // the binding rather than waiting for the node.
                   {"python_own_us", python_own},
                   {"python_own_share", python_p50 > 0 ? python_own / python_p50 : 0.0},
                   {"cpp_rtt_us_p99", percentile(r.cpp_all, 0.99)},
                   {"python_rtt_us_p99", percentile(r.python_all, 0.99)},
                   // numpy.from_dlpack(client.infer(...)[name]), against its own
                   // C++ turns
                   {"dlpack_cpp_rtt_us_p50", percentile(d.cpp_p50, 0.5)},
                   {"dlpack_python_rtt_us_p50", percentile(d.python_p50, 0.5)},
                   {"dlpack_overhead", percentile(d.overhead, 0.5)},
                   {"dlpack_overhead_per_session", dlpack_per_session},
                   {"dlpack_python_own_us", percentile(d.python_own, 0.5)},
                   {"round_trips_of_each", r.cpp_all.size()},
                   {"gap_us", opts.gap.count()},
                   {"sessions", opts.sessions},
                   {"model", opts.model}});
  }
  return out.dump();
}

} // namespace modelreg::bench

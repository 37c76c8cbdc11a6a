#include "bench/python_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>

#include <stdlib.h>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "bench/child_process.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"

namespace modelreg::bench {

namespace {

/// The Python client: the same calls a user makes (client.empty once,
/// client.infer and numpy.from_dlpack per round trip). Reads "BYTES N"
/// lines; answers each with the N round-trip times in microseconds.
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
    for _ in range(n):
        t0 = time.perf_counter_ns()
        out = client.infer(model, {"x": x})
        y = np.from_dlpack(out["x"])
        lat.append((time.perf_counter_ns() - t0) // 1000)
        if y.shape != x.shape or y[-1] != x[-1]:
            print(json.dumps({"error": "wrong answer"}), flush=True)
            sys.exit(1)
        del out, y
    print(json.dumps(lat), flush=True)
client.close()
)PY";

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

double percentile(std::vector<uint32_t> v, double q) {
  if (v.empty())
    return 0;
  auto k = static_cast<size_t>(q * static_cast<double>(v.size() - 1));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(k), v.end());
  return v[k];
}

std::string error_json(const std::string& why) {
  return nlohmann::json{{"error", why}}.dump();
}

} // namespace

std::string run_python_bench(const python_bench_options& opts) {
  char tmpl[] = "/tmp/modelreg-bench-python-XXXXXX";
  std::string dir = ::mkdtemp(tmpl);
  auto uri = "unix:" + dir + "/node.sock";
  struct cleanup {
    std::string dir;
    ~cleanup() { std::filesystem::remove_all(dir); }
  } cleanup{dir};
  child_process node{{opts.self_path, "serve", "--socket", dir + "/node.sock"}};
  if (node.read_line().rfind("ready", 0) != 0)
    return error_json("the node did not start");

  if (!opts.python_path.empty()) {
    std::string path = opts.python_path;
    if (const char* old = std::getenv("PYTHONPATH"); old != nullptr && *old != '\0')
      path += std::string{":"} + old;
    ::setenv("PYTHONPATH", path.c_str(), 1);
  }
  child_process py{{opts.python, "-c", python_client, uri, opts.model}};
  if (auto line = py.read_line(std::chrono::seconds{60}); line != "ready")
    return error_json("the Python client did not start (" + opts.python + "): " + line);

  system_config cfg;
  caf::actor_system sys{cfg};
  connect_options copts;
  copts.reconnect = false;
  auto reg = connect(sys, uri, copts);
  if (!reg)
    return error_json("connect: " + describe(reg.error()));
  caf::scoped_actor self{sys};
  model_handle handle;
  caf::error failure;
  self->request(*reg, std::chrono::minutes{2}, get_or_load_atom::value, opts.model, model_spec{})
    .receive([&](model_handle& h) { handle = std::move(h); },
             [&](caf::error& err) { failure = std::move(err); });
  if (failure)
    return error_json("load: " + describe(failure));

  nlohmann::json results = nlohmann::json::array();
  for (auto bytes : opts.sizes) {
    auto elements = static_cast<int64_t>(bytes / sizeof(float));
    auto input = allocate_input(sys, *reg, dtype::f32, {elements});
    if (!input)
      return error_json("allocate_input: " + describe(input.error()));
    auto values = input->mutable_values<float>();
    for (int64_t i = 0; i < elements; ++i)
      (*values)[static_cast<size_t>(i)] = static_cast<float>(i) * 0.5f;
    auto total = std::clamp<uint64_t>(opts.budget_bytes / bytes, opts.min_round_trips,
                                      opts.max_round_trips);
    auto per_round = std::min(opts.round_trips_per_round, total);
    auto rounds = (total + per_round - 1) / per_round;
    // The C++ client: a synchronous caller, as a pipeline node written
    // against connect() would be.
    auto cpp_round = [&](uint64_t n, std::vector<uint32_t>& lat) -> std::string {
      for (uint64_t i = 0; i < n; ++i) {
        std::string wrong;
        auto t0 = now_ns();
        self->request(*reg, std::chrono::minutes{1}, infer_atom::value, opts.model,
                      tensor_map{{"x", *input}})
          .receive(
            [&](tensor_map& out) {
              lat.push_back(static_cast<uint32_t>((now_ns() - t0) / 1000));
              auto y = out.find("x");
              if (y == out.end() || y->second.nbytes() != input->nbytes() ||
                  std::memcmp(y->second.data() + input->nbytes() - sizeof(float),
                              input->data() + input->nbytes() - sizeof(float), sizeof(float)) != 0)
                wrong = "wrong answer";
            },
            [&](caf::error& err) { wrong = describe(err); });
        if (!wrong.empty())
          return wrong;
      }
      return {};
    };
    auto python_round = [&](uint64_t n, std::vector<uint32_t>& lat) -> std::string {
      py.write_line(std::to_string(bytes) + " " + std::to_string(n));
      auto line = py.read_line(std::chrono::minutes{5});
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_array())
        return "the Python client failed: " + line;
      for (auto& v : j)
        lat.push_back(v.get<uint32_t>());
      return {};
    };
    std::vector<uint32_t> warm, cpp, python;
    if (auto e = cpp_round(3, warm); !e.empty())
      return error_json("C++ client: " + e);
    if (auto e = python_round(3, warm); !e.empty())
      return error_json("Python client: " + e);
    // Alternate, so both see the same machine.
    for (uint64_t r = 0; r < rounds; ++r) {
      if (auto e = cpp_round(per_round, cpp); !e.empty())
        return error_json("C++ client: " + e);
      if (auto e = python_round(per_round, python); !e.empty())
        return error_json("Python client: " + e);
    }
    auto a = percentile(cpp, 0.5);
    auto b = percentile(python, 0.5);
    results.push_back({{"bytes", bytes},
                       {"cpp_rtt_us_p50", a},
                       {"python_rtt_us_p50", b},
                       {"overhead", a > 0 ? (b - a) / a : 0.0},
                       {"cpp_rtt_us_p99", percentile(cpp, 0.99)},
                       {"python_rtt_us_p99", percentile(python, 0.99)},
                       {"overhead_us", b - a},
                       {"round_trips", cpp.size()},
                       {"model", opts.model}});
  }
  py.close_stdin();
  py.wait_for_exit(std::chrono::seconds{10});
  handle.release();
  caf::anon_send(*reg, shutdown_atom::value);
  node.kill(SIGTERM);
  node.wait_for_exit(std::chrono::seconds{10});
  return results.dump();
}

} // namespace modelreg::bench

// Two pipeline nodes need the same model. The first asks and the model loads
// (half a second, a hundred megabytes); the second asks while, or after, it
// loads and gets the very same instance without loading again.
//
// Build: part of the modelreg build (examples/); run: make demo.
#include <chrono>
#include <cstdio>
#include <thread>

#include <caf/actor_system.hpp>

#include "modelreg/messages/system_config.hpp"
#include "modelreg/registry.hpp"

using namespace std::chrono;

int main() {
  modelreg::system_config cfg; // 2 scheduler threads, modelreg's types registered
  caf::actor_system sys{cfg};
  modelreg::registry reg{sys};

  // A real model from a built-in backend: 100 MB of weights, a 500 ms load.
  modelreg::model_spec spec{"gain",
                            {{"gain", "0.5"}, {"reserve_bytes", "100000000"}, {"load_delay_ms", "500"}}};

  auto node = [&](const char* name, modelreg::model_handle& out) {
    auto t0 = steady_clock::now();
    auto h = reg.get_or_load("denoise", spec);
    auto ms = duration<double, std::milli>(steady_clock::now() - t0).count();
    if (!h) {
      std::printf("%s: %s\n", name, modelreg::describe(h.error()).c_str());
      return;
    }
    std::printf("%-7s got '%s' (%s) after %7.2f ms\n", name, h->key().c_str(),
                h->description().c_str(), ms);
    out = *h;
  };

  modelreg::model_handle first, second;
  std::thread node_a{[&] { node("node-a", first); }};
  std::this_thread::sleep_for(100ms); // node-b arrives while the model loads
  std::thread node_b{[&] { node("node-b", second); }};
  node_a.join();
  node_b.join();
  modelreg::model_handle third;
  node("node-c", third); // and one more, once it is loaded: a hit

  if (!first || !second || !third)
    return 1;
  std::printf("same instance for all three nodes: %s\n",
              first.same_model(second) && first.same_model(third) ? "yes" : "NO");

  // Each node runs the model.
  auto audio = modelreg::tensor::from_values<float>({0.2f, -0.4f, 0.8f});
  auto out = first.infer({{"audio", *audio}});
  if (!out)
    return 1;
  auto v = out->at("audio").values<float>();
  std::printf("denoise([0.2, -0.4, 0.8]) = [%.1f, %.1f, %.1f]\n", (*v)[0], (*v)[1], (*v)[2]);

  auto snap = reg.metrics();
  if (!snap)
    return 1;
  const auto& t = snap->totals;
  std::printf("registry: loads=%llu misses=%llu coalesced=%llu hits=%llu hit_rate=%.2f "
              "bytes_in_use=%llu\n",
              (unsigned long long) t.loads, (unsigned long long) t.misses,
              (unsigned long long) t.coalesced, (unsigned long long) t.hits, t.hit_rate(),
              (unsigned long long) t.bytes_in_use);
  for (const auto& m : snap->models)
    std::printf("  %-8s %-6s handles=%llu memory=%llu load=%llu ms requests=%llu\n",
                m.key.c_str(), to_string(m.state).c_str(), (unsigned long long) m.handles,
                (unsigned long long) m.memory_bytes, (unsigned long long) m.load_time_us / 1000,
                (unsigned long long) m.requests);
  bool ok = t.loads == 1 && first.same_model(second) && first.same_model(third);
  return ok ? 0 : 1;
}

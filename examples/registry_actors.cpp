// The registry from inside actors: a pipeline node asks for a model by spec,
// runs it straight on the model actor and routed by key, while a watcher
// subscribed to the supervisor prints every status message.
#include <chrono>
#include <cstdio>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"
#include "modelreg/actors/registry_actor.hpp"

using namespace std::chrono_literals;
using namespace modelreg;

// Monitoring: every transition, then periodic snapshots.
status_listener::behavior_type watcher(status_listener::pointer) {
  return {
    [](status_atom, const status_event& ev) {
      std::printf("[status] #%llu %s -> %s %s\n", (unsigned long long) ev.seq, ev.key.c_str(),
                  to_string(ev.state).c_str(), ev.detail.c_str());
    },
    [](snapshot_atom, const registry_snapshot& s) {
      std::printf("[snapshot] %zu model(s), %llu bytes in use\n", s.models.size(),
                  (unsigned long long) s.totals.bytes_in_use);
    },
  };
}

// A pipeline node: get the model, run it directly, then routed by key.
void pipeline_node(caf::event_based_actor* self, registry_actor reg) {
  auto audio = tensor::from_values<float>({0.5f, -1.0f});
  tensor_map inputs{{"audio", *audio}};
  self->request(reg, 10s, get_or_load_atom::value, std::string{"denoise"},
                model_spec{"gain", {{"gain", "0.5"}}})
    .then(
      [=](const model_handle& h) {
        self->request(h.actor(), 1s, infer_request{inputs})
          .then([=](const tensor_map& out) {
            auto v = out.at("audio").values<float>();
            std::printf("direct: [%.2f, %.2f]\n", (*v)[0], (*v)[1]);
            self->request(reg, 1s, infer_atom::value, std::string{"denoise"}, inputs)
              .then([=](const tensor_map& routed) {
                auto w = routed.at("audio").values<float>();
                std::printf("routed: [%.2f, %.2f]\n", (*w)[0], (*w)[1]);
              });
          });
      },
      [=](caf::error& err) { std::printf("load failed: %s\n", describe(err).c_str()); });
}

int main() {
  system_config cfg;
  caf::actor_system sys{cfg};
  registry_config rcfg;
  rcfg.idle_ttl = 50ms;           // evict models idle this long
  rcfg.snapshot_interval = 200ms; // how often subscribers get snapshots
  auto reg = spawn_registry(sys, rcfg);
  auto w = sys.spawn(watcher);
  caf::anon_send(reg, subscribe_atom::value, w);
  sys.spawn(pipeline_node, reg);

  // Wait until the node is done and its handle gone, so the model expires.
  caf::scoped_actor self{sys};
  bool evicted = false;
  for (int i = 0; i < 100 && !evicted; ++i) {
    self->request(reg, 1s, list_atom::value).receive(
      [&](const registry_snapshot& s) { evicted = s.totals.evictions_ttl == 1; },
      [&](const caf::error&) {});
    std::this_thread::sleep_for(20ms);
  }
  caf::anon_send_exit(reg, caf::exit_reason::user_shutdown);
  caf::anon_send_exit(w, caf::exit_reason::user_shutdown);
  std::printf("model evicted after its TTL: %s\n", evicted ? "yes" : "NO");
  return evicted ? 0 : 1;
}

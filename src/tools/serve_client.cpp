#include "tools/serve_client.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <vector>

#include <stdlib.h>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/send.hpp>

#include "tools/private_node.hpp"
#include "tools/proc_stats.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"

namespace modelreg::tools {

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
  std::string input_name;
  tensor input;
  std::vector<float> expected;
  uint64_t total = 0;
  uint64_t sent = 0;
  std::shared_ptr<driver_result> out;
};

bool right_answer(const tensor_map& result, const std::string& name,
                  const std::vector<float>& expected) {
  auto i = result.find(name);
  return i != result.end() && i->second.nbytes() == expected.size() * sizeof(float) &&
         std::memcmp(i->second.data(), expected.data(), i->second.nbytes()) == 0;
}

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
  self->request(st.reg, caf::infinite, infer_atom::value, st.model,
                tensor_map{{st.input_name, st.input}})
    .then(
      [self, started, finish_one](const tensor_map& result) {
        auto& st = self->state;
        st.out->latencies_us.push_back(static_cast<uint32_t>((now_ns() - started) / 1000));
        if (!right_answer(result, st.input_name, st.expected))
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
                     std::string model, std::string input_name, tensor input,
                     std::vector<float> expected, uint64_t total, size_t in_flight,
                     std::shared_ptr<driver_result> out) {
  auto& st = self->state;
  st.reg = std::move(reg);
  st.model = std::move(model);
  st.input_name = std::move(input_name);
  st.input = std::move(input);
  st.expected = std::move(expected);
  st.total = total;
  st.out = std::move(out);
  return {
    [self, in_flight](go_atom) {
      for (size_t i = 0; i < in_flight; ++i)
        send_one(self);
    },
  };
}

} // namespace

int run_serve_bench_client(const std::string& uri, const std::string& model, uint64_t requests,
                           size_t in_flight, size_t elements, const std::string& latency_file,
                           const std::string& input_name, float scale) {
  system_config cfg;
  caf::actor_system sys{cfg};
  auto reg = connect(sys, uri);
  if (!reg)
    return report_error(reg.error());
  auto handle = get_model(sys, *reg, model);
  if (!handle)
    return report_error(handle.error());
  // The input lives in shared memory: each request sends a reference.
  auto input = allocate_input(sys, *reg, dtype::f32, {static_cast<int64_t>(elements)});
  if (!input)
    return report_error(input.error());
  auto values = input->mutable_values<float>();
  std::vector<float> expected(elements);
  for (size_t i = 0; i < elements; ++i) {
    (*values)[i] = static_cast<float>(i) * 0.5f;
    expected[i] = (*values)[i] * scale;
  }
  // One request in flight: the caller's own thread, the path a pipeline
  // node's blocking call takes (its link is set up before the run).
  std::optional<blocking_client> caller;
  if (in_flight == 1)
    caller.emplace(sys, *reg);
  std::printf("ready\n");
  std::fflush(stdout);
  char line[16];
  (void) std::fgets(line, sizeof(line), stdin); // a line or EOF: go
  auto out = std::make_shared<driver_result>();
  out->latencies_us.reserve(requests);
  auto switches_before = context_switches();
  int64_t start = now_ns();
  if (caller) {
    tensor_map inputs{{input_name, *input}};
    for (uint64_t i = 0; i < requests; ++i) {
      auto started = now_ns();
      auto r = caller->infer(model, inputs, timeouts::request);
      if (!r) {
        ++out->errors;
        if (out->first_error.empty())
          out->first_error = describe(r.error());
      } else {
        out->latencies_us.push_back(static_cast<uint32_t>((now_ns() - started) / 1000));
        if (!right_answer(*r, input_name, expected))
          ++out->wrong;
      }
      ++out->done;
    }
  } else {
    caf::scoped_actor self{sys};
    auto d = sys.spawn(driver, *reg, model, input_name, *input, std::move(expected), requests,
                       in_flight, out);
    self->monitor(d);
    caf::anon_send(d, go_atom::value);
    self->receive([](const caf::down_msg&) {});
  }
  int64_t end = now_ns();
  auto switches = context_switches() - switches_before;
  std::ofstream lat{latency_file, std::ios::binary};
  lat.write(reinterpret_cast<const char*>(out->latencies_us.data()),
            static_cast<std::streamsize>(out->latencies_us.size() * sizeof(uint32_t)));
  lat.close(); // on disk before the parent reads the answer
  nlohmann::json j = {{"requests", out->done},  {"errors", out->errors},
                      {"wrong", out->wrong},     {"start_ns", start},
                      {"end_ns", end},           {"first_error", out->first_error},
                      {"ctx_switches", switches}};
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
  handle->release();
  caf::anon_send(*reg, shutdown_atom::value);
  return 0;
}

} // namespace modelreg::tools

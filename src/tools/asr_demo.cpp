#include "tools/asr_demo.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "tools/child_process.hpp"
#include "tools/private_node.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"

namespace modelreg::tools {

namespace {

constexpr const char* testdata = "/usr/share/pocketsphinx/test/data";

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

} // namespace

std::string text_of(const tensor_map& out) {
  auto i = out.find("text");
  if (i == out.end())
    return {};
  return {reinterpret_cast<const char*>(i->second.data()), i->second.nbytes()};
}

double mib(uint64_t b) {
  return static_cast<double>(b) / (1024.0 * 1024.0);
}

std::vector<recording> default_recordings() {
  return {{std::string{testdata} + "/goforward.raw", "go forward ten meters"},
          {std::string{testdata} + "/numbers.raw",
           "thirty three four or six ninety two"},
          {std::string{testdata} + "/something.raw", "go somewhere and do something"}};
}

nlohmann::json node_status(const std::string& uri) {
  system_config cfg;
  caf::actor_system sys{cfg};
  connect_options o;
  o.reconnect = false;
  auto reg = connect(sys, uri, o);
  if (!reg)
    return {};
  auto raw = remote_status_json(sys, *reg);
  caf::anon_send(*reg, shutdown_atom::value);
  return raw ? nlohmann::json::parse(*raw, nullptr, false) : nlohmann::json{};
}

/// N processes that each load the model themselves, all alive at once.
uint64_t separate_pss(const std::string& self_path, size_t n, const std::string& model,
                      const std::string& file) {
  std::vector<std::unique_ptr<child_process>> alone;
  for (size_t i = 0; i < n; ++i)
    alone.push_back(std::make_unique<child_process>(
      std::vector<std::string>{self_path, "__asr-alone", model, file}));
  uint64_t sum = 0;
  for (auto& a : alone) {
    auto line = a->read_line(std::chrono::seconds{60});
    if (nlohmann::json::parse(line, nullptr, false).is_discarded())
      return 0;
  }
  for (auto& a : alone)
    sum += pss_bytes(a->pid());
  return sum;
}

std::pair<size_t, size_t> word_errors(const std::string& reference, const std::string& hypothesis) {
  auto split = [](const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in{s};
    for (std::string w; in >> w;)
      out.push_back(w);
    return out;
  };
  auto r = split(reference), h = split(hypothesis);
  std::vector<std::vector<size_t>> d(r.size() + 1, std::vector<size_t>(h.size() + 1));
  for (size_t i = 0; i <= r.size(); ++i)
    d[i][0] = i;
  for (size_t j = 0; j <= h.size(); ++j)
    d[0][j] = j;
  for (size_t i = 1; i <= r.size(); ++i)
    for (size_t j = 1; j <= h.size(); ++j)
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (r[i - 1] != h[j - 1])});
  return {d[r.size()][h.size()], r.size()};
}

uint64_t pss_bytes(int pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/smaps_rollup"};
  std::string key;
  uint64_t kb = 0;
  while (in >> key) {
    if (key == "Pss:") {
      in >> kb;
      return kb * 1024;
    }
    in.ignore(1 << 12, '\n');
  }
  return 0;
}

int run_asr_node_client(const std::string& uri, const std::string& model,
                        const std::vector<std::string>& files) {
  system_config cfg;
  caf::actor_system sys{cfg};
  auto reg = connect(sys, uri);
  if (!reg)
    return report_error(reg.error());
  std::printf("connected\n");
  std::fflush(stdout);
  char line[16];
  (void) std::fgets(line, sizeof(line), stdin); // everyone asks at the same moment
  caf::scoped_actor self{sys};
  auto asked = std::chrono::steady_clock::now();
  auto handle = get_model(sys, *reg, model);
  if (!handle)
    return report_error(handle.error());
  auto load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - asked).count();
  for (const auto& f : files) {
    auto pcm = read_file(f);
    auto samples = static_cast<int64_t>(pcm.size() / 2);
    // Written straight into shared memory: the recogniser reads it in place.
    auto audio = allocate_input(sys, *reg, dtype::i16, {samples});
    if (!audio)
      return report_error(audio.error());
    std::memcpy(audio->mutable_data(), pcm.data(), static_cast<size_t>(samples) * 2);
    auto started = std::chrono::steady_clock::now();
    nlohmann::json j = {{"file", std::filesystem::path{f}.filename().string()},
                        {"bytes", samples * 2}};
    self->request(*reg, std::chrono::minutes{1}, infer_atom::value, model, tensor_map{{"audio", *audio}})
      .receive([&](tensor_map& out) { j["text"] = text_of(out); },
               [&](caf::error& e) { j["error"] = describe(e); });
    j["latency_ms"] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    std::printf("%s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  auto st = stats_of(sys, *reg);
  nlohmann::json done = {{"done", true},
                         {"load_wait_ms", load_ms},
                         {"zero_copy_tensors", st ? st->zero_copy_tensors : 0},
                         {"copied_bytes", st ? st->copied_bytes : 0}};
  std::printf("%s\n", done.dump().c_str());
  std::fflush(stdout);
  while (std::fgets(line, sizeof(line), stdin) != nullptr) {
  } // stay alive (holding the model) until the parent has measured
  handle->release();
  caf::anon_send(*reg, shutdown_atom::value);
  return 0;
}

int run_asr_alone(const model_spec& spec, const std::string& file) {
  auto loader = backend_registry::with_builtins()->loader_for(spec);
  if (!loader)
    return report_error(loader.error());
  auto m = (*loader)();
  if (!m)
    return report_error(m.error());
  auto pcm = read_file(file);
  auto audio = tensor::allocate(dtype::i16, {static_cast<int64_t>(pcm.size() / 2)});
  std::memcpy(audio->mutable_data(), pcm.data(), pcm.size() / 2 * 2);
  auto out = (*m)->infer({{"audio", *audio}}, heap_allocator());
  nlohmann::json j = {{"text", out ? text_of(*out) : describe(out.error())}};
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
  char line[16];
  while (std::fgets(line, sizeof(line), stdin) != nullptr) {
  }
  return 0;
}

std::string run_memory_bench(const std::string& self_path, size_t clients, const std::string& model) {
  auto file = default_recordings().front().file;
  private_node node{self_path, "demo"};
  if (!node.ready)
    return nlohmann::json{{"clients", clients}, {"error", "the node did not start"}}.dump();
  std::vector<std::unique_ptr<child_process>> procs;
  for (size_t i = 0; i < clients; ++i)
    procs.push_back(std::make_unique<child_process>(
      std::vector<std::string>{self_path, "__asr-node-client", node.uri(), model, file}));
  for (auto& p : procs)
    if (p->read_line(std::chrono::seconds{30}) != "connected")
      return nlohmann::json{{"clients", clients}, {"error", "a client could not connect"}}.dump();
  for (auto& p : procs)
    p->write_line("go");
  for (auto& p : procs) {
    p->read_line(std::chrono::seconds{60}); // the transcript
    p->read_line(std::chrono::seconds{30}); // its counters
  }
  uint64_t shared = pss_bytes(node.process->pid());
  for (auto& p : procs)
    shared += pss_bytes(p->pid());
  for (auto& p : procs)
    p->close_stdin();
  for (auto& p : procs)
    p->wait_for_exit(std::chrono::seconds{10});
  auto separate = separate_pss(self_path, clients, model, file);
  double reduction = separate > 0 ? 1.0 - static_cast<double>(shared) / static_cast<double>(separate) : 0.0;
  return nlohmann::json{{"clients", clients},
                        {"model", model},
                        {"separate_pss_bytes", separate},
                        {"shared_pss_bytes", shared},
                        {"reduction", reduction}}
    .dump();
}

} // namespace modelreg::tools

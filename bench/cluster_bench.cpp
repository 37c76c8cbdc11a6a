#include "bench/cluster_bench.hpp"

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <regex>
#include <thread>
#include <vector>

#include <stdlib.h>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "bench/stats.hpp"
#include "modelreg/actors/ask.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"
#include "tools/child_process.hpp"

namespace modelreg::bench {

namespace {

using clock_type = std::chrono::steady_clock;
using tools::child_process;

double ms_since(clock_type::time_point t) {
  return std::chrono::duration<double, std::milli>(clock_type::now() - t).count();
}

/// One member: `modelreg serve` in a child process.
struct member {
  std::unique_ptr<child_process> proc;
  std::string socket;
  std::string address; ///< its name in the cluster
  std::optional<registry_actor> reg;
};

caf::expected<nlohmann::json> status_of(caf::actor_system& sys, const registry_actor& reg) {
  auto raw = remote_status_json(sys, reg, std::chrono::seconds{10});
  if (!raw)
    return raw.error();
  return nlohmann::json::parse(*raw);
}

/// This member's own row of `status --cluster`.
nlohmann::json self_row(const nlohmann::json& status) {
  for (const auto& m : status["cluster"]["members"])
    if (m["self"].get<bool>())
      return m;
  return {};
}

bool wait_until(const std::function<bool()>& pred, std::chrono::seconds timeout) {
  auto deadline = clock_type::now() + timeout;
  while (clock_type::now() < deadline) {
    if (pred())
      return true;
    std::this_thread::sleep_for(std::chrono::milliseconds{20});
  }
  return pred();
}

caf::expected<tensor_map> input(size_t n) {
  std::vector<float> v(n, 1.5f);
  auto t = tensor::from_values(v);
  if (!t)
    return t.error();
  return tensor_map{{"x", *t}};
}

} // namespace

std::string run_cluster_bench(const cluster_bench_options& o) {
  nlohmann::json out = {{"nodes", o.nodes}, {"clients", o.clients}, {"models", o.models},
                        {"load_delay_ms", o.load_delay_ms}};
  char tmpl[] = "/tmp/modelreg-bench-cluster-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr) {
    out["error"] = "mkdtemp failed";
    return out.dump();
  }
  std::string dir = tmpl;
  struct cleanup {
    std::string dir;
    ~cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(dir, ec);
    }
  } remove_dir{dir};
  // The catalog: `models` identity models of 8 MiB each that take
  // load_delay_ms to load, and one more for the cold start.
  nlohmann::json models = nlohmann::json::object();
  auto model_entry = [&] {
    return nlohmann::json{{"backend", "identity"},
                          {"params",
                           {{"reserve_bytes", 8 << 20},
                            {"thread_safe", true},
                            {"load_delay_ms", o.load_delay_ms}}},
                          {"expected_bytes", 8 << 20}};
  };
  for (int i = 1; i <= o.models; ++i)
    models["m" + std::to_string(i)] = model_entry();
  models["cold"] = model_entry();
  auto catalog = dir + "/catalog.json";
  std::ofstream{catalog} << nlohmann::json{{"models", models}}.dump();

  std::vector<member> members(static_cast<size_t>(o.nodes));
  for (int i = 0; i < o.nodes; ++i) {
    auto& m = members[static_cast<size_t>(i)];
    m.socket = dir + "/n" + std::to_string(i + 1) + ".sock";
    std::vector<std::string> argv = {o.self_path, "serve", "--socket", m.socket, "--catalog",
                                     catalog, "--tcp", "127.0.0.1:0", "--insecure-admin",
                                     "--max-memory", "1G"};
    if (i == 0)
      argv.push_back("--cluster");
    else {
      argv.push_back("--join");
      argv.push_back(members[0].address);
    }
    m.proc = std::make_unique<child_process>(argv);
    auto line = m.proc->read_line(std::chrono::seconds{60});
    std::smatch found;
    if (!std::regex_search(line, found, std::regex{"cluster (tcp://[^ ]+)"})) {
      out["error"] = "member " + std::to_string(i + 1) + " did not start: " + line;
      return out.dump();
    }
    m.address = found[1];
  }
  system_config cfg;
  caf::actor_system sys{cfg};
  for (auto& m : members) {
    auto reg = connect(sys, "unix:" + m.socket);
    if (!reg) {
      out["error"] = describe(reg.error());
      return out.dump();
    }
    m.reg = *reg;
  }
  auto everyone_joined = [&] {
    for (auto& m : members) {
      auto s = status_of(sys, *m.reg);
      if (!s || !s->contains("cluster") ||
          (*s)["cluster"]["members"].size() != static_cast<size_t>(o.nodes))
        return false;
    }
    return true;
  };
  if (!wait_until(everyone_joined, std::chrono::seconds{60})) {
    out["error"] = "the members did not all join within 60 s";
    return out.dump();
  }
  // Let placement settle after the last join (two heartbeats).
  std::this_thread::sleep_for(std::chrono::seconds{1});

  // 1. Every client asks for every model at once: loads per model.
  {
    std::vector<std::string> names;
    for (int i = 1; i <= o.models; ++i)
      names.push_back("m" + std::to_string(i));
    std::vector<std::unique_ptr<child_process>> clients;
    for (int c = 0; c < o.clients; ++c) {
      std::vector<std::string> argv = {o.self_path, "__cluster-client",
                                       "unix:" + members[static_cast<size_t>(c % o.nodes)].socket};
      argv.insert(argv.end(), names.begin(), names.end());
      clients.push_back(std::make_unique<child_process>(argv));
      if (clients.back()->read_line(std::chrono::seconds{30}) != "ready") {
        out["error"] = "a client did not start";
        return out.dump();
      }
    }
    for (auto& c : clients)
      c->write_line("go");
    int errors = 0;
    for (auto& c : clients)
      for (;;) {
        auto line = c->read_line(std::chrono::seconds{120});
        if (line.empty() || line == "done")
          break;
        if (!nlohmann::json::parse(line, nullptr, false).value("ok", false))
          ++errors;
      }
    out["client_errors"] = errors;
    clients.clear(); // their handles go with them
    nlohmann::json loads = nlohmann::json::object();
    auto counted = [&] {
      loads = nlohmann::json::object();
      int total = 0;
      for (auto& m : members) {
        auto s = status_of(sys, *m.reg);
        if (!s) {
          out["status_error"] = describe(s.error());
          return false;
        }
        auto row = self_row(*s);
        for (auto& [key, n] : row["loads"].items()) {
          loads[key] = loads.value(key, 0) + n.get<int>();
          total += n.get<int>();
        }
      }
      return total >= o.models;
    };
    wait_until(counted, std::chrono::seconds{10});
    std::this_thread::sleep_for(std::chrono::seconds{1}); // a late extra load would show now
    counted();
    out["loads_per_model"] = loads;
  }

  // 2. A cold model asked at every member at once.
  {
    auto started = clock_type::now();
    std::vector<double> answered(members.size(), -1);
    std::vector<std::thread> askers;
    for (size_t i = 0; i < members.size(); ++i)
      askers.emplace_back([&, i] {
        auto h = ask<model_handle>(sys, *members[i].reg, std::chrono::seconds{60}, "the node",
                                   get_or_load_atom::value, std::string{"cold"}, model_spec{});
        auto in = input(256);
        if (h && in && h->infer(*in, std::chrono::seconds{30}))
          answered[i] = ms_since(started);
      });
    for (auto& t : askers)
      t.join();
    double first = 1e18, last = 0;
    for (auto a : answered) {
      if (a < 0) {
        out["error"] = "a cold request failed";
        return out.dump();
      }
      first = std::min(first, a);
      last = std::max(last, a);
    }
    out["cold_first_answer_ms"] = first;
    out["cold_last_answer_ms"] = last;
  }

  // 3. Round trips to m1 through its holder and through another member.
  size_t holder_index = 0;
  {
    for (size_t i = 0; i < members.size(); ++i) {
      auto s = status_of(sys, *members[i].reg);
      if (!s)
        continue;
      auto row = self_row(*s);
      for (const auto& m : row["models"])
        if (m["key"] == "m1")
          holder_index = i;
    }
    auto other_index = (holder_index + 1) % members.size();
    auto rtt = [&](size_t index) -> std::vector<double> {
      std::vector<double> us;
      auto h = ask<model_handle>(sys, *members[index].reg, std::chrono::seconds{60}, "the node",
                                 get_or_load_atom::value, std::string{"m1"}, model_spec{});
      auto in = input(256);
      if (!h || !in)
        return us;
      for (int r = 0; r < o.rtt_requests; ++r) {
        auto t0 = clock_type::now();
        if (!h->infer(*in, std::chrono::seconds{10}))
          return {};
        us.push_back(ms_since(t0) * 1000);
      }
      return us;
    };
    // Interleaved in rounds, so both see the same machine.
    std::vector<double> local, forwarded;
    for (int round = 0; round < 4; ++round) {
      auto l = rtt(holder_index);
      auto f = rtt(other_index);
      local.insert(local.end(), l.begin(), l.end());
      forwarded.insert(forwarded.end(), f.begin(), f.end());
    }
    auto l50 = percentile(local, 0.5), f50 = percentile(forwarded, 0.5);
    out["local_rtt_us_p50"] = l50;
    out["forwarded_rtt_us_p50"] = f50;
    out["forwarded_over_local"] = l50 > 0 ? f50 / l50 : 0;
  }

  // 4. Failover: kill -9 the holder of m1 while another member's client
  // uses it; time to its first good answer after the kill.
  {
    auto other_index = (holder_index + 1) % members.size();
    auto reg = *members[other_index].reg;
    auto in = input(256);
    auto h = ask<model_handle>(sys, reg, std::chrono::seconds{60}, "the node",
                               get_or_load_atom::value, std::string{"m1"}, model_spec{});
    if (!h || !in || !h->infer(*in, std::chrono::seconds{10})) {
      out["error"] = "m1 is not served before the failover";
      return out.dump();
    }
    auto killed = clock_type::now();
    members[holder_index].proc->kill(SIGKILL);
    int errors = 0;
    std::optional<model_handle> handle = *h;
    for (;;) {
      if (ms_since(killed) > 60000) {
        out["error"] = "no good answer within 60 s of the kill";
        return out.dump();
      }
      if (!handle) {
        auto again = ask<model_handle>(sys, reg, std::chrono::seconds{30}, "the node",
                                       get_or_load_atom::value, std::string{"m1"}, model_spec{});
        if (!again) {
          ++errors;
          continue;
        }
        handle = *again;
      }
      if (handle->infer(*in, std::chrono::seconds{10}))
        break;
      ++errors;
      handle.reset();
    }
    out["failover_ms"] = ms_since(killed);
    out["failover_errors"] = errors;
  }
  for (auto& m : members)
    if (m.reg)
      caf::anon_send(*m.reg, shutdown_atom::value);
  for (size_t i = 0; i < members.size(); ++i)
    if (i != holder_index)
      members[i].proc->kill(SIGTERM);
  return out.dump();
}

} // namespace modelreg::bench

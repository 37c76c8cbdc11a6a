// The operator's commands against a running node: status, ls, load, unload,
// infer; and the small helpers every command shares.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <future>
#include <iostream>
#include <map>
#include <thread>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "cli/commands.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"
#include "modelreg/tensor/npy.hpp"

namespace modelreg::cli {

// -- helpers ---------------------------------------------------------------

int usage_error(const std::string& what) {
  std::cerr << "modelreg: " << what << "\n(run 'modelreg help' for usage)\n";
  return exit_usage;
}

bool take_flag(std::vector<std::string>& args, const std::string& flag) {
  for (auto i = args.begin(); i != args.end(); ++i)
    if (*i == flag) {
      args.erase(i);
      return true;
    }
  return false;
}

std::optional<std::string> take_option(std::vector<std::string>& args, const std::string& name) {
  for (auto i = args.begin(); i != args.end(); ++i) {
    if (*i == name && i + 1 != args.end()) {
      auto v = *(i + 1);
      args.erase(i, i + 2);
      return v;
    }
    if (i->rfind(name + "=", 0) == 0) {
      auto v = i->substr(name.size() + 1);
      args.erase(i);
      return v;
    }
  }
  return std::nullopt;
}

std::vector<std::string> take_all(std::vector<std::string>& args, const std::string& name) {
  std::vector<std::string> out;
  while (auto v = take_option(args, name))
    out.push_back(*v);
  return out;
}

std::string self_path() {
  char buf[4096];
  auto n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "modelreg";
}

namespace {

/// Where a command connects, and with which TLS files.
struct node_options {
  std::string uri;
  tls_files tls;
};

node_options take_node_options(std::vector<std::string>& args) {
  node_options o;
  auto socket = take_option(args, "--socket");
  auto uri = take_option(args, "--connect");
  o.uri = uri ? *uri : "unix:" + socket.value_or(default_socket_path());
  o.tls.cert = take_option(args, "--tls-cert").value_or("");
  o.tls.key = take_option(args, "--tls-key").value_or("");
  o.tls.ca = take_option(args, "--tls-ca").value_or("");
  return o;
}

/// An actor system for talking to a node (middleman and TLS when needed).
struct client_system {
  explicit client_system(const node_options& o) : cfg(), sys(prepare(cfg, o)) {}

  static caf::actor_system_config& prepare(system_config& cfg, const node_options& o) {
    configure_for_connect(cfg, o.uri, o.tls);
    return cfg;
  }

  system_config cfg;
  caf::actor_system sys;
};

/// Connects without reconnecting (a command wants an answer, not a wait).
caf::expected<registry_actor> connect_node(caf::actor_system& sys, const node_options& o) {
  connect_options copts;
  copts.reconnect = false;
  return connect(sys, o.uri, copts);
}

int unreachable(const node_options& o, const caf::error& err) {
  std::cerr << "modelreg: no node at " << o.uri << ": " << describe(err)
            << "\n(start one with 'modelreg serve')\n";
  return exit_unreachable;
}

int failed(const caf::error& err) {
  std::cerr << "modelreg: " << describe(err) << "\n";
  return is(err, errc::unavailable) ? exit_unreachable : exit_failed;
}

template <class T, class... Ts>
caf::expected<T> ask(caf::actor_system& sys, const registry_actor& reg, caf::timespan timeout,
                     Ts&&... xs) {
  caf::scoped_actor self{sys};
  caf::expected<T> out{caf::error{}};
  self->request(reg, timeout, std::forward<Ts>(xs)...)
    .receive([&](T& x) { out = std::move(x); }, [&](caf::error& err) { out = std::move(err); });
  return out;
}

/// Blocks on `f` while printing elapsed time to stderr (when it is a terminal).
template <class T>
T with_progress(const std::string& what, std::future<T> f) {
  bool tty = ::isatty(STDERR_FILENO) != 0;
  auto start = std::chrono::steady_clock::now();
  bool shown = false;
  while (f.wait_for(std::chrono::milliseconds{200}) != std::future_status::ready) {
    auto s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (tty)
      std::fprintf(stderr, "\r%s ... %.1f s", what.c_str(), s);
    else if (!shown)
      std::fprintf(stderr, "%s ...\n", what.c_str());
    shown = true;
  }
  if (shown && tty)
    std::fprintf(stderr, "\r\033[K");
  return f.get();
}

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

/// The node's status as JSON (the raw answer: catalog and connections too).
caf::expected<nlohmann::json> status_json(caf::actor_system& sys, const registry_actor& reg) {
  auto raw = remote_status_json(sys, reg);
  if (!raw)
    return raw.error();
  auto j = nlohmann::json::parse(*raw, nullptr, false);
  if (j.is_discarded())
    return make_error(errc::malformed_frame, "status is not JSON");
  return j;
}

void print_table(const nlohmann::json& j, const std::map<std::string, double>& rates) {
  std::printf("%-16s %-8s %7s %10s %9s %9s %9s %9s  %s\n", "MODEL", "STATE", "HANDLES", "MEMORY",
              "REQ/S", "P50 US", "P99 US", "REQUESTS", "DESCRIPTION");
  for (const auto& m : j["models"]) {
    auto key = m["key"].get<std::string>();
    auto rate = rates.count(key) ? rates.at(key) : 0.0;
    std::printf("%-16s %-8s %7llu %10s %9.0f %9llu %9llu %9llu  %s\n", key.c_str(),
                m["state"].get<std::string>().c_str(),
                static_cast<unsigned long long>(m["handles"].get<uint64_t>()),
                human_bytes(m["memory_bytes"].get<uint64_t>()).c_str(), rate,
                static_cast<unsigned long long>(m["latency_p50_us"].get<uint64_t>()),
                static_cast<unsigned long long>(m["latency_p99_us"].get<uint64_t>()),
                static_cast<unsigned long long>(m["requests"].get<uint64_t>()),
                m["description"].get<std::string>().c_str());
  }
  const auto& t = j["totals"];
  std::printf("\n%llu models, %s in use, hit rate %.1f%%, %llu loads (%llu failed), "
              "%llu connections\n",
              static_cast<unsigned long long>(t["models_loaded"].get<uint64_t>()),
              human_bytes(t["bytes_in_use"].get<uint64_t>()).c_str(),
              100.0 * t["hit_rate"].get<double>(),
              static_cast<unsigned long long>(t["loads"].get<uint64_t>()),
              static_cast<unsigned long long>(t["load_failures"].get<uint64_t>()),
              static_cast<unsigned long long>(j.value("connections", uint64_t{0})));
}

/// Prints transitions as the supervisor publishes them (for --watch).
caf::behavior event_printer(caf::event_based_actor* self, bool json) {
  (void) self;
  return {
    [json](status_atom, const status_event& ev) {
      if (json) {
        std::cout << "{\"event\":" << to_json(ev) << "}" << std::endl;
        return;
      }
      std::printf("  %s %s (generation %llu)%s%s\n", ev.key.c_str(), to_string(ev.state).c_str(),
                  static_cast<unsigned long long>(ev.generation), ev.detail.empty() ? "" : ": ",
                  ev.detail.c_str());
      std::fflush(stdout);
    },
    [](snapshot_atom, const registry_snapshot&) {},
  };
}

constexpr const char* node_help = R"(
connection options (every command):
  --socket PATH          the node's Unix socket (default: $MODELREG_SOCKET, else
                         $XDG_RUNTIME_DIR/modelreg/modelreg.sock, else
                         /tmp/modelreg-$UID/modelreg.sock)
  --connect URI          unix:PATH or tcp://HOST:PORT instead
  --tls-cert F --tls-key F --tls-ca F   client certificate for a TLS node

exit codes: 0 success, 1 the command failed, 2 usage error, 3 no node reachable
)";

} // namespace

int status(std::vector<std::string> args) {
  if (take_flag(args, "--help")) {
    std::cout << "usage: modelreg status [--watch] [--json] [--interval-ms MS]\n\n"
                 "The node's models (state, handles, memory, requests/s, latency p50/p99),\n"
                 "hit rate and connections. --watch redraws every interval and prints\n"
                 "each transition the supervisor publishes as it happens.\n"
              << node_help;
    return exit_ok;
  }
  bool watch = take_flag(args, "--watch");
  bool json = take_flag(args, "--json");
  auto interval = std::chrono::milliseconds{1000};
  if (auto v = take_option(args, "--interval-ms"))
    interval = std::chrono::milliseconds{std::stoul(*v)};
  auto count = take_option(args, "--count"); // --watch: stop after N refreshes
  auto node = take_node_options(args);
  if (!args.empty())
    return usage_error("status: unknown option " + args.front());
  client_system cs{node};
  auto reg = connect_node(cs.sys, node);
  if (!reg)
    return unreachable(node, reg.error());
  std::map<std::string, uint64_t> last_requests;
  auto last_time = std::chrono::steady_clock::now();
  caf::actor printer;
  if (watch) {
    printer = cs.sys.spawn(event_printer, json);
    caf::anon_send(*reg, subscribe_atom::value, caf::actor_cast<status_listener>(printer));
  }
  int rc = exit_ok;
  for (size_t n = 0;; ++n) {
    auto j = status_json(cs.sys, *reg);
    if (!j) {
      rc = failed(j.error());
      break;
    }
    auto now = std::chrono::steady_clock::now();
    double secs = std::chrono::duration<double>(now - last_time).count();
    std::map<std::string, double> rates;
    for (const auto& m : (*j)["models"]) {
      auto key = m["key"].get<std::string>();
      auto req = m["requests"].get<uint64_t>();
      if (last_requests.count(key) && secs > 0)
        rates[key] = static_cast<double>(req - std::min(req, last_requests[key])) / secs;
      last_requests[key] = req;
    }
    last_time = now;
    if (json) {
      for (auto& m : (*j)["models"])
        m["requests_per_s"] = rates[m["key"].get<std::string>()];
      std::cout << j->dump() << std::endl;
    } else {
      if (watch && ::isatty(STDOUT_FILENO))
        std::printf("\033[H\033[2J");
      print_table(*j, rates);
      std::fflush(stdout);
    }
    if (!watch || (count && n + 1 >= std::stoul(*count)))
      break;
    std::this_thread::sleep_for(interval);
  }
  if (printer)
    caf::anon_send_exit(printer, caf::exit_reason::user_shutdown);
  caf::anon_send(*reg, shutdown_atom::value);
  return rc;
}

int ls(std::vector<std::string> args) {
  if (take_flag(args, "--help")) {
    std::cout << "usage: modelreg ls [--json]\n\nThe node's catalog and which of its models are "
                 "loaded.\n"
              << node_help;
    return exit_ok;
  }
  bool json = take_flag(args, "--json");
  auto node = take_node_options(args);
  if (!args.empty())
    return usage_error("ls: unknown option " + args.front());
  client_system cs{node};
  auto reg = connect_node(cs.sys, node);
  if (!reg)
    return unreachable(node, reg.error());
  auto j = status_json(cs.sys, *reg);
  caf::anon_send(*reg, shutdown_atom::value);
  if (!j)
    return failed(j.error());
  std::map<std::string, nlohmann::json> loaded;
  for (const auto& m : (*j)["models"])
    loaded[m["key"].get<std::string>()] = m;
  std::vector<std::string> names = j->value("catalog", std::vector<std::string>{});
  for (const auto& [key, m] : loaded)
    if (std::find(names.begin(), names.end(), key) == names.end())
      names.push_back(key);
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& n : names) {
      auto i = loaded.find(n);
      nlohmann::json row = {{"name", n}, {"state", "available"}, {"memory_bytes", 0}};
      if (i != loaded.end()) {
        row["state"] = i->second["state"];
        row["memory_bytes"] = i->second["memory_bytes"];
      }
      out.push_back(row);
    }
    std::cout << out.dump() << std::endl;
    return exit_ok;
  }
  std::printf("%-20s %-10s %10s\n", "NAME", "STATE", "MEMORY");
  for (const auto& n : names) {
    auto i = loaded.find(n);
    std::printf("%-20s %-10s %10s\n", n.c_str(),
                i == loaded.end() ? "available" : i->second["state"].get<std::string>().c_str(),
                i == loaded.end() ? "-"
                                  : human_bytes(i->second["memory_bytes"].get<uint64_t>()).c_str());
  }
  return exit_ok;
}

int load(std::vector<std::string> args) {
  if (take_flag(args, "--help")) {
    std::cout << "usage: modelreg load NAME [--json]\n\nLoads catalog entry NAME on the node "
                 "(once, however many ask) and reports it.\nThe model stays loaded until "
                 "evicted (idle TTL, budget) or unloaded.\n"
              << node_help;
    return exit_ok;
  }
  bool json = take_flag(args, "--json");
  auto node = take_node_options(args);
  if (args.size() != 1)
    return usage_error("load needs exactly one NAME");
  auto name = args.front();
  client_system cs{node};
  auto reg = connect_node(cs.sys, node);
  if (!reg)
    return unreachable(node, reg.error());
  auto started = std::chrono::steady_clock::now();
  auto h = with_progress(
    "loading " + name, std::async(std::launch::async, [&] {
      return ask<model_handle>(cs.sys, *reg, std::chrono::minutes{10}, get_or_load_atom::value,
                               name, model_spec{});
    }));
  auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started)
              .count();
  int rc = exit_ok;
  if (!h) {
    rc = failed(h.error());
  } else if (json) {
    std::cout << nlohmann::json{{"name", name},
                                {"description", h->description()},
                                {"memory_bytes", h->memory_bytes()},
                                {"generation", h->generation()},
                                {"wall_ms", ms}}
                   .dump()
              << std::endl;
  } else {
    std::printf("%s: loaded (%s, %s) in %.0f ms\n", name.c_str(), h->description().c_str(),
                human_bytes(h->memory_bytes()).c_str(), ms);
  }
  if (h)
    h->release();
  caf::anon_send(*reg, shutdown_atom::value);
  return rc;
}

int unload(std::vector<std::string> args) {
  if (take_flag(args, "--help")) {
    std::cout << "usage: modelreg unload NAME\n\nUnloads NAME now if nobody holds it (exit 1 "
                 "with 'busy' otherwise).\n"
              << node_help;
    return exit_ok;
  }
  auto node = take_node_options(args);
  if (args.size() != 1)
    return usage_error("unload needs exactly one NAME");
  client_system cs{node};
  auto reg = connect_node(cs.sys, node);
  if (!reg)
    return unreachable(node, reg.error());
  auto rep = ask<eviction_report>(cs.sys, *reg, std::chrono::seconds{30}, unload_atom::value,
                                  args.front());
  caf::anon_send(*reg, shutdown_atom::value);
  if (!rep)
    return failed(rep.error());
  std::printf("%s: unloaded, %s freed\n", args.front().c_str(),
              human_bytes(rep->freed_bytes).c_str());
  return exit_ok;
}

int infer(std::vector<std::string> args) {
  if (take_flag(args, "--help")) {
    std::cout << "usage: modelreg infer NAME --input NAME=FILE.npy [--input ...] "
                 "[--output DIR] [--json]\n\nRuns catalog model NAME (loading it if needed) on "
                 "NumPy .npy inputs and writes\neach output to DIR/OUTPUT.npy (default: the "
                 "current directory).\n"
              << node_help;
    return exit_ok;
  }
  bool json = take_flag(args, "--json");
  auto inputs_args = take_all(args, "--input");
  auto out_dir = take_option(args, "--output").value_or(".");
  auto node = take_node_options(args);
  if (args.size() != 1)
    return usage_error("infer needs exactly one model NAME");
  if (inputs_args.empty())
    return usage_error("infer needs at least one --input NAME=FILE.npy");
  tensor_map inputs;
  for (const auto& a : inputs_args) {
    auto eq = a.find('=');
    if (eq == std::string::npos || eq == 0)
      return usage_error("--input wants NAME=FILE.npy, got '" + a + "'");
    auto t = npy::load(a.substr(eq + 1));
    if (!t)
      return failed(t.error());
    inputs[a.substr(0, eq)] = std::move(*t);
  }
  client_system cs{node};
  auto reg = connect_node(cs.sys, node);
  if (!reg)
    return unreachable(node, reg.error());
  auto name = args.front();
  auto h = with_progress(
    "loading " + name, std::async(std::launch::async, [&] {
      return ask<model_handle>(cs.sys, *reg, std::chrono::minutes{10}, get_or_load_atom::value,
                               name, model_spec{});
    }));
  if (!h) {
    caf::anon_send(*reg, shutdown_atom::value);
    return failed(h.error());
  }
  auto started = std::chrono::steady_clock::now();
  auto out = ask<tensor_map>(cs.sys, *reg, std::chrono::minutes{5}, infer_atom::value, name,
                             inputs);
  auto us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - started)
              .count();
  int rc = exit_ok;
  if (!out) {
    rc = failed(out.error());
  } else {
    std::error_code ec;
    std::filesystem::create_directories(out_dir, ec);
    nlohmann::json report = {{"model", name}, {"latency_us", us}, {"outputs", nlohmann::json::object()}};
    for (const auto& [oname, t] : *out) {
      auto path = (std::filesystem::path{out_dir} / (oname + ".npy")).string();
      if (auto err = npy::save(path, t)) {
        rc = failed(err);
        break;
      }
      report["outputs"][oname] = {{"path", path}, {"dtype", to_string(t.type())}, {"shape", t.shape()}};
      if (!json)
        std::printf("%s: %s -> %s\n", oname.c_str(), t.describe().c_str(), path.c_str());
    }
    if (json && rc == exit_ok)
      std::cout << report.dump() << std::endl;
    else if (rc == exit_ok)
      std::printf("%s answered in %.0f us\n", name.c_str(), us);
  }
  h->release();
  caf::anon_send(*reg, shutdown_atom::value);
  return rc;
}

} // namespace modelreg::cli

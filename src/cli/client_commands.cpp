// The operator's commands against a running node: status, ls, load, unload,
// infer; and the small helpers every command shares.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <iostream>
#include <csignal>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "modelreg/actors/ask.hpp"
#include "modelreg/actors/blocking_client.hpp"
#include "cli/commands.hpp"
#include "modelreg/nearest.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/backend/catalog.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"
#include "modelreg/tensor/npy.hpp"

namespace modelreg::cli {

// -- helpers ---------------------------------------------------------------

std::string self_path() {
  char buf[4096];
  auto n = ::readlink("/proc/self/exe", buf, sizeof(buf) - 1);
  return n > 0 ? std::string(buf, static_cast<size_t>(n)) : "modelreg";
}

namespace {

/// Where a command connects, with which TLS files, and how long it waits.
struct node_options {
  std::string socket = default_socket_path();
  std::string connect;
  tls_files tls;
  std::chrono::milliseconds timeout;

  std::string uri() const { return connect.empty() ? "unix:" + socket : connect; }
};

void add_node_options(CLI::App* sub, node_options& o, std::chrono::milliseconds timeout,
                      const std::string& timeout_what) {
  o.timeout = timeout;
  sub->add_option("--socket", o.socket,
                  "the node's Unix socket (default: $MODELREG_SOCKET, else "
                  "$XDG_RUNTIME_DIR/modelreg/modelreg.sock, else /tmp/modelreg-$UID/modelreg.sock)")
    ->type_name("PATH");
  sub->add_option("--connect", o.connect, "unix:PATH or tcp://HOST:PORT instead")
    ->type_name("URI");
  sub->add_option("--tls-cert", o.tls.cert, "client certificate for a TLS node")
    ->type_name("FILE");
  sub->add_option("--tls-key", o.tls.key, "its private key")->type_name("FILE");
  sub->add_option("--tls-ca", o.tls.ca, "the CA of the node's certificate")->type_name("FILE");
  add_duration(sub, "--timeout", o.timeout,
               "give up after this long: " + timeout_what + " (connecting included)");
}

/// An actor system for talking to a node (middleman and TLS when needed).
struct client_system {
  explicit client_system(const node_options& o) : cfg(), sys(prepare(cfg, o)) {}

  static caf::actor_system_config& prepare(system_config& cfg, const node_options& o) {
    configure_for_connect(cfg, o.uri(), o.tls);
    return cfg;
  }

  system_config cfg;
  caf::actor_system sys;
};

/// What to do about `err`, for a person at a terminal.
std::string advice_line(const caf::error& err) {
  switch (advice(err)) {
    case error_advice::do_not_retry:
      return "the request itself is wrong: change it before trying again";
    case error_advice::back_off:
      return "the node is busy or full: try again later, or free memory (unload, --max-memory)";
    case error_advice::reconnect:
      return "the node or the model went away: try again once it is back";
    case error_advice::fall_back:
      return "the node or backend cannot do this: use another model or transport";
    default:
      return {};
  }
}

int failed(const caf::error& err) {
  std::cerr << "modelreg: " << describe(err) << "\n";
  if (auto a = advice_line(err); !a.empty())
    std::cerr << "  (" << a << ")\n";
  return is(err, errc::unavailable) || is(err, errc::timeout) ? exit_unreachable : exit_failed;
}

/// Connects without reconnecting (a command wants an answer, not a wait),
/// within the command's timeout. Prints why not and sets `rc` if it fails.
std::optional<registry_actor> connect_node(caf::actor_system& sys, const node_options& o,
                                           int& rc) {
  connect_options copts;
  copts.reconnect = false;
  copts.connect_timeout = o.timeout;
  auto reg = connect(sys, o.uri(), copts);
  if (reg)
    return *reg;
  const auto& err = reg.error();
  if (is(err, errc::invalid_argument)) {
    rc = usage_error(describe(err)); // a malformed URI, TLS files that cannot work
    return std::nullopt;
  }
  std::cerr << "modelreg: no node at " << o.uri() << ": " << describe(err) << "\n";
  if (o.connect.empty() || o.connect.rfind("unix:", 0) == 0)
    std::cerr << "  (start one with 'modelreg serve', or give --socket or --connect)\n";
  rc = exit_unreachable;
  return std::nullopt;
}

template <class T, class... Ts>
caf::expected<T> ask(caf::actor_system& sys, const registry_actor& reg, caf::timespan timeout,
                     Ts&&... xs) {
  auto out = modelreg::ask<T>(sys, reg, timeout, "the node", std::forward<Ts>(xs)...);
  if (!out && is(out.error(), errc::timeout))
    return make_error(errc::timeout,
                      "no answer within " +
                        human_duration(std::chrono::duration_cast<std::chrono::nanoseconds>(timeout)) +
                        " (--timeout)");
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

/// While a load runs on the node, Ctrl-C ends this command only: say so.
struct interrupt_note {
  explicit interrupt_note(std::string name) {
    static std::string note;
    note = "\nmodelreg: stopped waiting; the load of '" + name +
           "' goes on in the node (see 'modelreg status')\n";
    static const std::string* text = &note;
    text_ = text;
    struct sigaction sa {};
    sa.sa_handler = [](int) {
      auto* t = current();
      if (t != nullptr)
        (void) !::write(STDERR_FILENO, t->data(), t->size());
      ::_exit(130);
    };
    current() = text_;
    ::sigaction(SIGINT, &sa, &old_);
  }
  ~interrupt_note() {
    ::sigaction(SIGINT, &old_, nullptr);
    current() = nullptr;
  }
  static const std::string*& current() {
    static const std::string* p = nullptr;
    return p;
  }
  const std::string* text_;
  struct sigaction old_ {};
};

/// Gets catalog model `name`, showing elapsed time while it loads; Ctrl-C
/// meanwhile says that the load goes on in the node.
caf::expected<model_handle> load_with_progress(caf::actor_system& sys, const registry_actor& reg,
                                               const std::string& name, caf::timespan timeout) {
  interrupt_note note{name};
  return with_progress("loading " + name, std::async(std::launch::async, [&] {
                         return ask<model_handle>(sys, reg, timeout, get_or_load_atom::value, name,
                                                  model_spec{});
                       }));
}

/// The node's status as JSON (the raw answer: catalog and connections too).
caf::expected<nlohmann::json> status_json(caf::actor_system& sys, const registry_actor& reg,
                                          caf::timespan timeout) {
  auto raw = remote_status_json(sys, reg, timeout);
  if (!raw)
    return raw.error();
  auto j = nlohmann::json::parse(*raw, nullptr, false);
  if (j.is_discarded())
    return make_error(errc::malformed_frame, "status is not JSON");
  return j;
}

/// The state of `name` on the node, or empty if it is not loaded.
std::string state_of(const nlohmann::json& status, const std::string& name) {
  for (const auto& m : status["models"])
    if (m["key"] == name)
      return m["state"].get<std::string>();
  return {};
}

void print_table(const nlohmann::json& j, const std::map<std::string, double>& rates) {
  std::printf("%-16s %-8s %7s %10s %9s %9s %9s %9s %7s  %s\n", "MODEL", "STATE", "HANDLES",
              "MEMORY", "REQ/S", "P50", "P99", "REQUESTS", "ERRORS", "DESCRIPTION");
  for (const auto& m : j["models"]) {
    auto key = m["key"].get<std::string>();
    auto rate = rates.count(key) ? rates.at(key) : 0.0;
    auto us = [](uint64_t v) { return human_duration(std::chrono::microseconds{v}); };
    std::printf("%-16s %-8s %7llu %10s %9.0f %9s %9s %9llu %7llu  %s\n", key.c_str(),
                m["state"].get<std::string>().c_str(),
                static_cast<unsigned long long>(m["handles"].get<uint64_t>()),
                human_bytes(m["memory_bytes"].get<uint64_t>()).c_str(), rate,
                us(m["latency_p50_us"].get<uint64_t>()).c_str(),
                us(m["latency_p99_us"].get<uint64_t>()).c_str(),
                static_cast<unsigned long long>(m["requests"].get<uint64_t>()),
                static_cast<unsigned long long>(m.value("errors", uint64_t{0})),
                (m.contains("holder") ? "on " + m["holder"].get<std::string>() + ": " +
                                          m["description"].get<std::string>()
                                      : m["description"].get<std::string>())
                  .c_str());
  }
  const auto& t = j["totals"];
  std::printf("\n%llu models, %s in use, hit rate %.1f%%, %llu loads (%llu failed), "
              "%llu connections; latency counts successful requests only\n",
              static_cast<unsigned long long>(t["models_loaded"].get<uint64_t>()),
              human_bytes(t["bytes_in_use"].get<uint64_t>()).c_str(),
              100.0 * t["hit_rate"].get<double>(),
              static_cast<unsigned long long>(t["loads"].get<uint64_t>()),
              static_cast<unsigned long long>(t["load_failures"].get<uint64_t>()),
              static_cast<unsigned long long>(j.value("connections", uint64_t{0})));
}

/// `status --cluster`: one line per member, as the node asked sees them.
void print_cluster(const nlohmann::json& c) {
  std::printf("%-28s %21s %6s %8s %7s  %s\n", "NODE", "MEMORY / BUDGET", "CONNS",
              "REQ/S", "SEEN", "MODELS (held here; * loading)");
  for (const auto& m : c["members"]) {
    auto budget = m["budget_bytes"].get<uint64_t>();
    auto memory = human_bytes(m["bytes_in_use"].get<uint64_t>()) + " / " +
                  (budget == 0 ? std::string{"none"} : human_bytes(budget));
    std::string models;
    for (const auto& h : m["models"])
      models += (models.empty() ? "" : " ") + h["key"].get<std::string>() +
                (h["state"] == "ready" ? "" : "*");
    auto seen = m["self"].get<bool>()
                  ? std::string{"self"}
                  : human_duration(std::chrono::milliseconds{m["last_seen_ms"].get<int64_t>()});
    std::printf("%-28s %21s %6llu %8llu %7s  %s\n",
                m["address"].get<std::string>().c_str(), memory.c_str(),
                static_cast<unsigned long long>(m["connections"].get<uint64_t>()),
                static_cast<unsigned long long>(m["requests_per_s"].get<uint64_t>()),
                seen.c_str(), models.empty() ? "-" : models.c_str());
  }
  if (!c.value("joined", true))
    std::printf("\nnot joined yet: this node places no model until a --join address "
                "answers (its log says why it does not)\n");
  else
    std::printf("\n%zu members; each key's owner is chosen by rendezvous hashing over them "
                "(docs/cluster.md)\n",
                c["members"].size());
}

/// Transitions as the supervisor publishes them (for --watch): printed at
/// once as JSON, or kept (the last 12) for the log under the table.
struct transition_log {
  std::mutex mutex;
  std::deque<std::string> lines;
};

caf::behavior event_printer(caf::event_based_actor* self, bool json,
                            std::shared_ptr<transition_log> log) {
  (void) self;
  return {
    [json, log](status_atom, const status_event& ev) {
      if (json) {
        std::cout << "{\"event\":" << to_json(ev) << "}" << std::endl;
        return;
      }
      auto now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
      char stamp[16];
      std::strftime(stamp, sizeof(stamp), "%H:%M:%S", std::localtime(&now));
      char line[512];
      std::snprintf(line, sizeof(line), "%s  %s %s (generation %llu)%s%s", stamp, ev.key.c_str(),
                    to_string(ev.state).c_str(), static_cast<unsigned long long>(ev.generation),
                    ev.detail.empty() ? "" : ": ", ev.detail.c_str());
      std::lock_guard lock{log->mutex};
      log->lines.emplace_back(line);
      if (log->lines.size() > 12)
        log->lines.pop_front();
    },
    [](snapshot_atom, const registry_snapshot&) {},
  };
}

// -- status ------------------------------------------------------------------

struct status_options {
  node_options node;
  bool cluster = false;
  bool watch = false;
  bool json = false;
  std::chrono::milliseconds interval{1000};
  size_t count = 0;
};

int run_status(const status_options& o) {
  client_system cs{o.node};
  int rc = exit_ok;
  auto reg = connect_node(cs.sys, o.node, rc);
  if (!reg)
    return rc;
  std::map<std::string, uint64_t> last_requests;
  auto last_time = std::chrono::steady_clock::now();
  caf::actor printer;
  auto log = std::make_shared<transition_log>();
  if (o.watch) {
    printer = cs.sys.spawn(event_printer, o.json, log);
    caf::anon_send(*reg, subscribe_atom::value, caf::actor_cast<status_listener>(printer));
  }
  bool tty = ::isatty(STDOUT_FILENO) != 0;
  for (size_t n = 0;; ++n) {
    auto j = status_json(cs.sys, *reg, caf::timespan{o.node.timeout});
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
    if (o.cluster) {
      if (!j->contains("cluster")) {
        std::cerr << "modelreg status: the node is not a cluster member (start it with "
                     "'modelreg serve --cluster' or '--join')\n";
        rc = exit_failed;
        break;
      }
      if (o.json) {
        std::cout << (*j)["cluster"].dump() << std::endl;
      } else {
        if (o.watch && tty)
          std::printf("\033[H\033[2J");
        print_cluster((*j)["cluster"]);
        std::fflush(stdout);
      }
    } else if (o.json) {
      for (auto& m : (*j)["models"])
        m["requests_per_s"] = rates[m["key"].get<std::string>()];
      std::cout << j->dump() << std::endl;
    } else {
      if (o.watch && tty)
        std::printf("\033[H\033[2J");
      print_table(*j, rates);
      if (o.watch) {
        std::lock_guard lock{log->mutex};
        std::printf("\ntransitions%s\n", log->lines.empty() ? ": none yet" : " (newest last):");
        for (const auto& l : log->lines)
          std::printf("  %s\n", l.c_str());
        if (!tty)
          log->lines.clear(); // a log file gets each line once
      }
      std::fflush(stdout);
    }
    if (!o.watch || (o.count > 0 && n + 1 >= o.count))
      break;
    std::this_thread::sleep_for(o.interval);
  }
  if (printer)
    caf::anon_send_exit(printer, caf::exit_reason::user_shutdown);
  caf::anon_send(*reg, shutdown_atom::value);
  return rc;
}

// -- ls ----------------------------------------------------------------------

struct ls_options {
  node_options node;
  bool json = false;
};

int run_ls(const ls_options& o) {
  client_system cs{o.node};
  int rc = exit_ok;
  auto reg = connect_node(cs.sys, o.node, rc);
  if (!reg)
    return rc;
  auto j = status_json(cs.sys, *reg, caf::timespan{o.node.timeout});
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
  if (o.json) {
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

// -- load --------------------------------------------------------------------

struct load_options {
  node_options node;
  std::string name;
  bool json = false;
};

int run_load(const load_options& o) {
  client_system cs{o.node};
  int rc = exit_ok;
  auto reg = connect_node(cs.sys, o.node, rc);
  if (!reg)
    return rc;
  caf::timespan timeout{o.node.timeout};
  bool was_loaded = false;
  if (auto before = status_json(cs.sys, *reg, timeout))
    was_loaded = state_of(*before, o.name) == "ready";
  auto started = std::chrono::steady_clock::now();
  auto h = load_with_progress(cs.sys, *reg, o.name, timeout);
  auto took = std::chrono::steady_clock::now() - started;
  if (!h) {
    rc = failed(h.error());
  } else if (o.json) {
    std::cout << nlohmann::json{{"name", o.name},
                                {"description", h->description()},
                                {"memory_bytes", h->memory_bytes()},
                                {"generation", h->generation()},
                                {"already_loaded", was_loaded},
                                {"wall_ms", std::chrono::duration<double, std::milli>(took).count()}}
                   .dump()
              << std::endl;
  } else if (was_loaded) {
    std::printf("%s: already loaded (%s, %s)\n", o.name.c_str(), h->description().c_str(),
                human_bytes(h->memory_bytes()).c_str());
  } else {
    std::printf("%s: loaded (%s, %s) in %s\n", o.name.c_str(), h->description().c_str(),
                human_bytes(h->memory_bytes()).c_str(), human_duration(took).c_str());
  }
  if (h)
    h->release();
  caf::anon_send(*reg, shutdown_atom::value);
  return rc;
}

// -- unload ------------------------------------------------------------------

struct unload_options {
  node_options node;
  std::string name;
  bool if_loaded = false;
};

int run_unload(const unload_options& o) {
  client_system cs{o.node};
  int rc = exit_ok;
  auto reg = connect_node(cs.sys, o.node, rc);
  if (!reg)
    return rc;
  auto rep = ask<eviction_report>(cs.sys, *reg, caf::timespan{o.node.timeout},
                                  unload_atom::value, o.name);
  caf::anon_send(*reg, shutdown_atom::value);
  if (!rep && o.if_loaded && is(rep.error(), errc::model_not_found)) {
    std::printf("%s: not loaded; nothing to do\n", o.name.c_str());
    return exit_ok;
  }
  if (!rep)
    return failed(rep.error());
  std::printf("%s: unloaded, %s freed\n", o.name.c_str(), human_bytes(rep->freed_bytes).c_str());
  return exit_ok;
}

// -- infer -------------------------------------------------------------------

struct infer_options {
  node_options node;
  std::string name;
  std::vector<std::string> inputs;
  std::string output = ".";
  bool force = false;
  bool json = false;
};

/// Text a person can read: a 1-D u8 tensor of printable UTF-8.
std::optional<std::string> as_text(const tensor& t) {
  if (t.type() != dtype::u8 || t.shape().size() != 1)
    return std::nullopt;
  auto bytes = std::string(reinterpret_cast<const char*>(t.data()), t.nbytes());
  for (unsigned char c : bytes)
    if (c < 0x20 && c != '\n' && c != '\t')
      return std::nullopt;
  return bytes;
}

/// Why `inputs` do not fit what catalog entry `name` declares (`entry`
/// from "catalog_details"), or empty. Names and dtypes; shapes are the
/// model's to check (several can be right).
std::string check_inputs(const std::string& name, const nlohmann::json& entry,
                         const tensor_map& inputs) {
  if (!entry.contains("inputs"))
    return {};
  std::map<std::string, nlohmann::json> declared;
  for (const auto& t : entry["inputs"]) {
    if (t["name"] == "*")
      return {}; // any inputs
    declared[t["name"].get<std::string>()] = t;
  }
  for (const auto& [in_name, t] : inputs) {
    auto d = declared.find(in_name);
    if (d == declared.end()) {
      std::string known;
      for (const auto& [k, v] : declared)
        known += (known.empty() ? "" : ", ") + k;
      return "model '" + name + "' has no input '" + in_name + "'; its inputs: " + known;
    }
    auto want = d->second["dtype"].get<std::string>();
    auto have = to_string(t.type());
    bool ok = want == "*";
    for (size_t at = 0; !ok && at <= want.size();) {
      auto bar = std::min(want.find('|', at), want.size());
      ok = want.substr(at, bar - at) == have;
      at = bar + 1;
    }
    if (!ok)
      return "model '" + name + "' wants input '" + in_name + "' as " + want + "; the file holds " +
             t.describe();
  }
  for (const auto& [k, v] : declared)
    if (!v.value("optional", false) && inputs.count(k) == 0)
      return "model '" + name + "' needs input '" + k + "' (" + v["dtype"].get<std::string>() +
             ": " + v["doc"].get<std::string>() + "): give --input " + k + "=FILE.npy";
  return {};
}

int run_infer(const infer_options& o) {
  namespace fs = std::filesystem;
  tensor_map inputs;
  std::set<fs::path> input_files;
  for (const auto& a : o.inputs) {
    auto eq = a.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == a.size())
      return usage_error("infer: --input takes NAME=FILE.npy, not '" + a + "'");
    auto name = a.substr(0, eq);
    if (inputs.count(name) != 0)
      return usage_error("infer: input '" + name + "' is given twice");
    auto t = npy::load(a.substr(eq + 1));
    if (!t)
      return failed(t.error());
    std::error_code ec;
    input_files.insert(fs::weakly_canonical(a.substr(eq + 1), ec));
    inputs[name] = std::move(*t);
  }
  // The output folder: writable before the model runs, not after.
  std::error_code ec;
  fs::create_directories(o.output, ec);
  if (ec || !fs::is_directory(o.output) || ::access(o.output.c_str(), W_OK) != 0) {
    std::cerr << "modelreg: cannot write outputs to " << o.output << ": "
              << (ec ? ec.message() : std::string{std::strerror(errno)}) << "\n";
    return exit_failed;
  }
  client_system cs{o.node};
  int rc = exit_ok;
  auto reg = connect_node(cs.sys, o.node, rc);
  if (!reg)
    return rc;
  caf::timespan timeout{o.node.timeout};
  // The inputs against what the model declares, before anything is sent.
  if (auto status = status_json(cs.sys, *reg, timeout)) {
    const auto& details = (*status)["catalog_details"];
    if (details.is_object() && details.contains(o.name)) {
      if (auto why = check_inputs(o.name, details[o.name], inputs); !why.empty()) {
        caf::anon_send(*reg, shutdown_atom::value);
        std::cerr << "modelreg: " << why << "\n  (see 'modelreg describe " << o.name << "')\n";
        return exit_failed;
      }
    }
  }
  auto h = load_with_progress(cs.sys, *reg, o.name, timeout);
  if (!h) {
    caf::anon_send(*reg, shutdown_atom::value);
    return failed(h.error());
  }
  auto started = std::chrono::steady_clock::now();
  auto out = ask<tensor_map>(cs.sys, *reg, timeout, infer_atom::value, o.name, inputs);
  auto took = std::chrono::steady_clock::now() - started;
  h->release();
  caf::anon_send(*reg, shutdown_atom::value);
  if (!out)
    return failed(out.error());
  // Where each output goes; nothing is written unless all of them may be.
  std::vector<std::pair<std::string, std::string>> paths;
  for (const auto& [oname, t] : *out) {
    auto path = (fs::path{o.output} / (oname + ".npy")).string();
    if (input_files.count(fs::weakly_canonical(path, ec)) != 0) {
      std::cerr << "modelreg: output '" << oname << "' would be written over the input " << path
                << "; give another --output folder\n";
      return exit_failed;
    }
    if (fs::exists(path, ec) && !o.force) {
      std::cerr << "modelreg: " << path
                << " exists; give --force to replace it, or another --output folder\n";
      return exit_failed;
    }
    paths.emplace_back(oname, path);
  }
  nlohmann::json report = {{"model", o.name},
                           {"latency_us", std::chrono::duration<double, std::micro>(took).count()},
                           {"outputs", nlohmann::json::object()}};
  for (const auto& [oname, path] : paths) {
    const auto& t = out->at(oname);
    if (auto err = npy::save(path, t))
      return failed(err);
    report["outputs"][oname] = {{"path", path}, {"dtype", to_string(t.type())}, {"shape", t.shape()}};
    auto text = as_text(t);
    if (text)
      report["outputs"][oname]["text"] = *text;
    if (o.json)
      continue;
    if (text && text->find('\n') == std::string::npos)
      std::printf("%s: \"%s\" (%s)\n", oname.c_str(), text->c_str(), path.c_str());
    else
      std::printf("%s: %s -> %s\n", oname.c_str(), t.describe().c_str(), path.c_str());
  }
  if (o.json)
    std::cout << report.dump() << std::endl;
  else
    std::printf("%s answered in %s\n", o.name.c_str(), human_duration(took).c_str());
  return exit_ok;
}

// -- describe ------------------------------------------------------------------

struct describe_options {
  node_options node;
  std::string name;
  bool json = false;
};

std::string shape_text(const nlohmann::json& shape) {
  if (shape.is_null())
    return "any shape";
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    auto d = shape[i].get<int64_t>();
    out += (i ? ", " : "") + (d < 0 ? std::string{"N"} : std::to_string(d));
  }
  return out + "]";
}

int run_describe(const describe_options& o) {
  client_system cs{o.node};
  int rc = exit_ok;
  auto reg = connect_node(cs.sys, o.node, rc);
  if (!reg)
    return rc;
  auto status = status_json(cs.sys, *reg, caf::timespan{o.node.timeout});
  caf::anon_send(*reg, shutdown_atom::value);
  if (!status)
    return failed(status.error());
  const auto& details = (*status)["catalog_details"];
  if (!details.is_object() || !details.contains(o.name)) {
    std::vector<std::string> names = status->value("catalog", std::vector<std::string>{});
    auto near = modelreg::nearest_name(o.name, names);
    std::string all;
    for (const auto& n : names)
      all += (all.empty() ? "" : ", ") + n;
    std::cerr << "modelreg: the node's catalog has no '" << o.name << "'"
              << (near.empty() ? "" : "; did you mean '" + near + "'?") << " (it has: " << all
              << ")\n";
    return exit_failed;
  }
  const auto& e = details[o.name];
  if (o.json) {
    std::cout << e.dump() << std::endl;
    return exit_ok;
  }
  std::printf("%s: backend '%s'%s%s\n", o.name.c_str(), e["backend"].get<std::string>().c_str(),
              e.contains("doc") ? ": " : "", e.value("doc", std::string{}).c_str());
  auto given = e["params"];
  if (e.contains("parameters") && !e["parameters"].empty()) {
    std::printf("\nparameters:\n");
    for (const auto& p : e["parameters"]) {
      auto n = p["name"].get<std::string>();
      auto value = given.contains(n) ? given[n].get<std::string>() + " (catalog)"
                                     : p["default"].get<std::string>() + " (default)";
      std::printf("  %-16s %-8s %-28s %s\n", n.c_str(), p["type"].get<std::string>().c_str(),
                  value.c_str(), p["doc"].get<std::string>().c_str());
    }
  } else if (!given.empty()) {
    std::printf("\nparameters (not declared by the backend):\n");
    for (const auto& [k, v] : given.items())
      std::printf("  %-16s %s\n", k.c_str(), v.get<std::string>().c_str());
  }
  for (const char* side : {"inputs", "outputs"}) {
    if (!e.contains(side))
      continue;
    std::printf("\n%s:\n", side);
    for (const auto& t : e[side])
      std::printf("  %-16s %-8s %-12s %s%s\n", t["name"].get<std::string>().c_str(),
                  t["dtype"].get<std::string>().c_str(), shape_text(t["shape"]).c_str(),
                  t["doc"].get<std::string>().c_str(), t.value("optional", false) ? " (optional)" : "");
  }
  return exit_ok;
}

// -- catalog check ---------------------------------------------------------------

int run_catalog_check(const std::vector<std::string>& files) {
  auto backends = backend_registry::with_builtins();
  int rc = exit_ok;
  for (const auto& file : files) {
    auto cat = catalog::load_file(file);
    if (!cat) {
      std::cerr << "modelreg: " << describe(cat.error()) << "\n";
      rc = exit_failed;
      continue;
    }
    auto problems = cat->check(*backends);
    for (const auto& p : problems)
      std::cerr << p << "\n";
    if (problems.empty())
      std::printf("%s: %zu entries, all valid\n", file.c_str(), cat->size());
    else
      rc = exit_failed;
  }
  return rc;
}

// -- transcribe -------------------------------------------------------------

struct transcribe_options {
  node_options node;
  std::string file;
  std::string model = "asr-en-us";
  bool stream = false;
  bool realtime = false;
  std::chrono::milliseconds chunk{20};
  bool json = false;
};

/// 16 kHz mono int16 samples from a WAV file (PCM, 16-bit, mono, 16 kHz) or
/// a headerless .raw/.pcm file of such samples.
caf::expected<std::vector<int16_t>> read_pcm16k(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  if (!in)
    return make_error(errc::invalid_argument,
                      "cannot read '" + path + "': " + std::strerror(errno));
  std::vector<char> bytes{std::istreambuf_iterator<char>{in}, {}};
  auto bad = [&](const std::string& why) {
    return make_error(errc::invalid_argument,
                      path + ": " + why + "; give 16 kHz mono 16-bit PCM (WAV, or .raw samples; "
                                          "e.g. sox IN -r 16000 -c 1 -b 16 OUT.wav)");
  };
  size_t data_at = 0, data_size = bytes.size();
  if (bytes.size() >= 12 && std::memcmp(bytes.data(), "RIFF", 4) == 0 &&
      std::memcmp(bytes.data() + 8, "WAVE", 4) == 0) {
    auto u16 = [&](size_t at) {
      uint16_t v;
      std::memcpy(&v, bytes.data() + at, 2);
      return v;
    };
    auto u32 = [&](size_t at) {
      uint32_t v;
      std::memcpy(&v, bytes.data() + at, 4);
      return v;
    };
    bool fmt_seen = false;
    data_size = 0;
    for (size_t at = 12; at + 8 <= bytes.size();) {
      auto size = u32(at + 4);
      if (std::memcmp(bytes.data() + at, "fmt ", 4) == 0 && size >= 16 && at + 24 <= bytes.size()) {
        if (u16(at + 8) != 1)
          return bad("not PCM (format " + std::to_string(u16(at + 8)) + ")");
        if (u16(at + 10) != 1)
          return bad(std::to_string(u16(at + 10)) + " channels");
        if (u32(at + 12) != 16000)
          return bad(std::to_string(u32(at + 12)) + " Hz");
        if (u16(at + 22) != 16)
          return bad(std::to_string(u16(at + 22)) + "-bit samples");
        fmt_seen = true;
      } else if (std::memcmp(bytes.data() + at, "data", 4) == 0) {
        data_at = at + 8;
        data_size = std::min<size_t>(size, bytes.size() - data_at);
        break;
      }
      at += 8 + size + (size & 1);
    }
    if (!fmt_seen || data_at == 0)
      return bad("a WAV file without a format or data chunk");
  } else {
    auto ext = std::filesystem::path{path}.extension().string();
    if (ext != ".raw" && ext != ".pcm")
      return bad("not a WAV file, and headerless samples need a .raw or .pcm name");
  }
  if (data_size < 2)
    return bad("no audio");
  std::vector<int16_t> samples(data_size / 2);
  std::memcpy(samples.data(), bytes.data() + data_at, samples.size() * 2);
  return samples;
}

int run_transcribe(const transcribe_options& o) {
  if (o.chunk.count() < 1 || o.chunk.count() > 10000)
    return usage_error("transcribe: --chunk must be from 1ms to 10s, not " +
                       std::to_string(o.chunk.count()) + "ms");
  if (o.realtime && !o.stream)
    return usage_error("transcribe: --realtime paces a stream: give --stream too");
  auto samples = read_pcm16k(o.file);
  if (!samples)
    return failed(samples.error());
  client_system cs{o.node};
  int rc = exit_ok;
  auto reg = connect_node(cs.sys, o.node, rc);
  if (!reg)
    return rc;
  caf::timespan timeout{o.node.timeout};
  auto done = [&](int code) {
    caf::anon_send(*reg, shutdown_atom::value);
    return code;
  };
  auto text_of = [](const tensor_map& m) {
    auto i = m.find("text");
    return i == m.end() ? std::string{} : as_text(i->second).value_or("");
  };
  nlohmann::json report = {{"file", o.file},
                           {"model", o.model},
                           {"seconds", static_cast<double>(samples->size()) / 16000.0}};
  if (!o.stream) {
    auto h = load_with_progress(cs.sys, *reg, o.model, timeout);
    if (!h)
      return done(failed(h.error()));
    auto audio = tensor::from_values<int16_t>(*samples, {static_cast<int64_t>(samples->size())});
    auto started = std::chrono::steady_clock::now();
    auto out = ask<tensor_map>(cs.sys, *reg, timeout, infer_atom::value, o.model,
                               tensor_map{{"audio", *audio}});
    auto ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started);
    h->release();
    if (!out)
      return done(failed(out.error()));
    report["text"] = text_of(*out);
    report["latency_ms"] = ms.count();
  } else {
    blocking_client caller{cs.sys, *reg};
    if (!caller.direct())
      return done(failed(make_error(errc::unsupported,
                                    "--stream needs a Unix link (--socket or --connect unix:PATH)")));
    auto session = caller.open_session(o.model, std::chrono::milliseconds{0}, timeout);
    if (!session)
      return done(failed(session.error()));
    bool tty = ::isatty(STDOUT_FILENO) != 0 && !o.json;
    auto per_chunk = static_cast<size_t>(16 * o.chunk.count());
    std::vector<double> latencies;
    std::string shown;
    size_t changes = 0;
    auto start = std::chrono::steady_clock::now();
    for (size_t off = 0; off < samples->size(); off += per_chunk) {
      auto n = std::min(per_chunk, samples->size() - off);
      if (o.realtime) // at the pace of the audio: chunk k goes out when it has been "heard"
        std::this_thread::sleep_until(start + std::chrono::microseconds{
                                                static_cast<int64_t>((off + n) * 1000000 / 16000)});
      std::vector<int16_t> part(samples->begin() + static_cast<std::ptrdiff_t>(off),
                                samples->begin() + static_cast<std::ptrdiff_t>(off + n));
      auto chunk = tensor::from_values<int16_t>(part, {static_cast<int64_t>(n)});
      auto sent = std::chrono::steady_clock::now();
      auto partial = session->push({{"audio", *chunk}}, timeout);
      latencies.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - sent).count());
      if (!partial)
        return done(failed(partial.error()));
      auto text = text_of(*partial);
      if (text != shown) {
        shown = text;
        ++changes;
        if (tty)
          std::cout << "\r\033[K" << text << std::flush;
        else if (!o.json)
          std::cout << "partial: " << text << std::endl;
      }
    }
    auto sent = std::chrono::steady_clock::now();
    auto final = session->finish(timeout);
    auto final_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - sent).count();
    if (tty)
      std::cout << "\r\033[K";
    if (!final)
      return done(failed(final.error()));
    std::sort(latencies.begin(), latencies.end());
    auto at = [&](double q) {
      return latencies.empty() ? 0.0
                               : latencies[std::min(latencies.size() - 1,
                                                    static_cast<size_t>(q * static_cast<double>(latencies.size())))];
    };
    report["text"] = text_of(*final);
    report["chunks"] = latencies.size();
    report["partials"] = changes;
    report["chunk_latency_ms_p50"] = at(0.5);
    report["chunk_latency_ms_p99"] = at(0.99);
    report["final_latency_ms"] = final_ms;
  }
  if (o.json)
    std::cout << report.dump() << "\n";
  else
    std::cout << report["text"].get<std::string>() << "\n";
  return done(exit_ok);
}

constexpr const char* exit_codes =
  "\nexit codes: 0 success, 1 the command failed, 2 usage error, 3 no node reachable\n";

} // namespace

std::vector<command> add_client_commands(CLI::App& app) {
  using namespace std::chrono_literals;
  std::vector<command> out;

  auto st = std::make_shared<status_options>();
  auto* status = app.add_subcommand("status", "models, state, handles, memory, requests/s, "
                                              "latency, errors, hit rate and connections of a "
                                              "running node");
  status->add_flag("--watch", st->watch,
                   "redraw every interval, with a log of the transitions under the table");
  status->add_flag("--json", st->json, "one JSON document per refresh");
  status->add_flag("--cluster", st->cluster,
                   "every member of the node's cluster: address, models held, memory and "
                   "budget, connections, requests/s (docs/cluster.md)");
  add_duration(status, "--interval", st->interval, "--watch: time between refreshes (default 1s)");
  add_count(status, "--count", st->count, "--watch: stop after N refreshes", 1);
  add_node_options(status, st->node, 5s, "default 5s");
  status->footer(exit_codes);
  out.push_back({status, [st] { return run_status(*st); }});

  auto lo = std::make_shared<ls_options>();
  auto* ls = app.add_subcommand("ls", "the node's catalog and what is loaded");
  ls->add_flag("--json", lo->json, "as JSON");
  add_node_options(ls, lo->node, 5s, "default 5s");
  ls->footer(exit_codes);
  out.push_back({ls, [lo] { return run_ls(*lo); }});

  auto ld = std::make_shared<load_options>();
  auto* load = app.add_subcommand("load", "load a catalog model on the node (once, however many "
                                          "ask); it stays until evicted or unloaded");
  load->add_option("NAME", ld->name, "catalog name")->required();
  load->add_flag("--json", ld->json, "as JSON");
  add_node_options(load, ld->node, 10min, "default 10m");
  load->footer(std::string{"\nCtrl-C stops waiting; the load goes on in the node.\n"} + exit_codes);
  out.push_back({load, [ld] { return run_load(*ld); }});

  auto ul = std::make_shared<unload_options>();
  auto* unload = app.add_subcommand("unload", "unload an idle model now (exit 1 with 'busy' if "
                                              "someone holds it)");
  unload->add_option("NAME", ul->name, "model name")->required();
  unload->add_flag("--if-loaded", ul->if_loaded, "a model that is not loaded is not an error");
  add_node_options(unload, ul->node, 30s, "default 30s");
  unload->footer(exit_codes);
  out.push_back({unload, [ul] { return run_unload(*ul); }});

  auto in = std::make_shared<infer_options>();
  auto* infer = app.add_subcommand("infer", "run a model on NumPy .npy inputs; outputs are "
                                            "written as .npy, text outputs also printed");
  infer->add_option("NAME", in->name, "catalog name (loaded if needed)")->required();
  infer->add_option("--input", in->inputs, "an input tensor (repeatable)")
    ->type_name("NAME=FILE.npy")
    ->required();
  infer->add_option("--output", in->output,
                    "folder for OUTPUT.npy files (default: the current one); inputs are never "
                    "overwritten, other files only with --force")
    ->type_name("DIR");
  infer->add_flag("--force", in->force, "replace existing output files");
  infer->add_flag("--json", in->json, "report as JSON");
  add_node_options(infer, in->node, 10min, "default 10m, for the load and the inference each");
  infer->footer(exit_codes);
  out.push_back({infer, [in] { return run_infer(*in); }});

  auto tr = std::make_shared<transcribe_options>();
  auto* transcribe = app.add_subcommand(
    "transcribe", "speech to text with the node's recogniser: a whole file, or streamed in "
                  "chunks with partial results as they change (--stream)");
  transcribe->add_option("FILE", tr->file, "16 kHz mono 16-bit PCM: a WAV file or .raw samples")
    ->required();
  transcribe->add_option("--model", tr->model, "catalog name (default asr-en-us)")
    ->type_name("NAME");
  transcribe->add_flag("--stream", tr->stream,
                       "a session: send the audio in chunks, print partial results as they change");
  transcribe->add_flag("--realtime", tr->realtime,
                       "with --stream: send each chunk when the audio would have been heard");
  add_duration(transcribe, "--chunk", tr->chunk, "with --stream: chunk length (default 20ms)");
  transcribe->add_flag("--json", tr->json,
                       "report as JSON (text; with --stream also chunk and final latencies)");
  add_node_options(transcribe, tr->node, 2min, "default 2m, per request");
  transcribe->footer(exit_codes);
  out.push_back({transcribe, [tr] { return run_transcribe(*tr); }});

  auto de = std::make_shared<describe_options>();
  auto* describe_cmd = app.add_subcommand(
    "describe", "a catalog model's backend, parameters, inputs and outputs, as the node has it");
  describe_cmd->add_option("NAME", de->name, "catalog name")->required();
  describe_cmd->add_flag("--json", de->json, "as JSON");
  add_node_options(describe_cmd, de->node, 5s, "default 5s");
  describe_cmd->footer(exit_codes);
  out.push_back({describe_cmd, [de] { return run_describe(*de); }});

  auto* catalog_cmd = app.add_subcommand("catalog", "work with catalog files");
  catalog_cmd->require_subcommand(1);
  auto files = std::make_shared<std::vector<std::string>>();
  auto* check = catalog_cmd->add_subcommand(
    "check", "check catalog files offline as `serve` does at start-up: JSON, backends, "
             "parameter names and values, with file positions");
  check->add_option("FILE", *files, "catalog files")->required();
  check->footer("\nexit codes: 0 every file is valid, 1 a problem was printed, 2 usage error\n");
  out.push_back({check, [files] { return run_catalog_check(*files); }});
  return out;
}

} // namespace modelreg::cli

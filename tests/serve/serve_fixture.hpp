// The fixture of the multi-process serve tests: a real `modelreg serve` with
// a test catalog in a private folder (removed at the end, on failure too),
// a client side with its own actor system, and `modelreg` CLI runs.
#pragma once

#include <csignal>
#include <filesystem>
#include <fstream>
#include <regex>

#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>

#include <nlohmann/json.hpp>

#include "actors/registry_fixture.hpp"
#include "tools/child_process.hpp"
#include "modelreg/actors/ask.hpp"
#include "modelreg/actors/connect_uri.hpp"
#include "modelreg/actors/remote_registry.hpp"

namespace modelreg::test {

using namespace std::chrono_literals;
using tools::child_process;
namespace fs = std::filesystem;

inline constexpr const char* test_catalog = R"({
  "models": {
    "echo": { "backend": "identity", "params": { "thread_safe": true } },
    "gain": { "backend": "gain", "params": { "gain": 2 } },
    "slow-infer": { "backend": "identity", "params": { "infer_delay_ms": 400 } },
    "broken": { "backend": "identity", "params": { "fail_load": true } },
    "slow-gain": { "backend": "gain", "params": { "gain": 2, "infer_delay_ms": 300 } },
    "slow-load": { "backend": "identity", "params": { "load_delay_ms": 60000 } },
    "forked": { "backend": "identity", "params": { "with_pid": true }, "instances": 2 },
    "stream": { "backend": "identity", "params": { "with_pid": true, "streaming": true },
                "instances": 2 },
    "stream-too": { "backend": "identity", "params": { "streaming": true } }
  }
})";

/// A command's stdout, stderr and exit code.
struct run_result {
  int code = -1;
  std::string out;
  std::string err;
};

/// Runs `modelreg ARGV...` to its end.
inline run_result run(std::vector<std::string> argv, const std::vector<std::string>& prefix = {}) {
  argv.insert(argv.begin(), MODELREG_CLI);
  argv.insert(argv.begin(), prefix.begin(), prefix.end());
  run_result r;
  char err_path[] = "/tmp/modelreg-stderr-XXXXXX";
  int err_fd = ::mkstemp(err_path);
  if (err_fd < 0)
    return r;
  ::close(err_fd);
  std::string cmd;
  for (const auto& a : argv)
    cmd += "'" + a + "' ";
  cmd += std::string{"2>"} + err_path;
  if (auto* p = ::popen(cmd.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0)
      r.out.append(buf, n);
    auto status = ::pclose(p);
    r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::ifstream in{err_path};
  r.err.assign(std::istreambuf_iterator<char>{in}, {});
  ::unlink(err_path);
  return r;
}

class serve_test : public ::testing::Test {
protected:
  void SetUp() override {
    char tmpl[] = "/tmp/modelreg-serve-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir = tmpl;
    socket = dir + "/run/node.sock";
    catalog_path = dir + "/catalog.json";
    std::ofstream{catalog_path} << test_catalog;
  }

  void TearDown() override {
    if (node) {
      node->kill(SIGTERM); // the graceful stop, every time
      EXPECT_TRUE(node->wait_for_exit(10s));
    }
    node.reset();
    fs::remove_all(dir);
  }

  /// Starts `modelreg serve` with the test catalog; waits for "ready".
  bool start_node(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{MODELREG_CLI, "serve", "--socket", socket, "--catalog",
                                  catalog_path};
    argv.insert(argv.end(), extra.begin(), extra.end());
    node = std::make_unique<child_process>(argv);
    ready_line = node->read_line(20s);
    return ready_line.rfind("ready", 0) == 0;
  }

  /// The TCP port from the ready line.
  uint16_t tcp_port() const {
    std::smatch m;
    static const std::regex re{R"(tcp://[^ ]*:(\d+))"};
    if (!std::regex_search(ready_line, m, re))
      return 0;
    return static_cast<uint16_t>(std::stoul(m[1].str()));
  }

  std::string uri() const { return "unix:" + socket; }

  std::string dir, socket, catalog_path, ready_line;
  std::unique_ptr<child_process> node;
};

/// An actor system for the test's own client side.
struct client {
  explicit client(bool middleman = false, const std::string& cert = {},
                  const std::string& key = {}, const std::string& ca = {}) {
    if (middleman)
      cfg.load<caf::io::middleman>();
    if (!cert.empty())
      load_tls(cfg, {cert, key, ca});
    sys = std::make_unique<caf::actor_system>(cfg);
  }
  ~client() {
    for (auto& r : remotes)
      caf::anon_send(r, shutdown_atom::value);
  }

  caf::expected<registry_actor> connect(const std::string& uri, bool reconnect = true) {
    connect_options o;
    o.reconnect = reconnect;
    o.backoff_max = 200ms;
    auto r = modelreg::connect(*sys, uri, o);
    if (r)
      remotes.push_back(*r);
    return r;
  }

  template <class T, class... Ts>
  caf::expected<T> ask(const registry_actor& reg, Ts&&... xs) {
    return modelreg::ask<T>(*sys, reg, timeouts::request, "the node", std::forward<Ts>(xs)...);
  }

  nlohmann::json status(const registry_actor& reg) {
    auto raw = remote_status_json(*sys, reg);
    if (!raw)
      return {};
    return nlohmann::json::parse(*raw);
  }

  system_config cfg;
  std::unique_ptr<caf::actor_system> sys;
  std::vector<registry_actor> remotes;
};

inline uint64_t handles_of(const nlohmann::json& status, const std::string& key) {
  for (const auto& m : status["models"])
    if (m["key"] == key)
      return m["handles"].get<uint64_t>();
  return 0;
}


} // namespace modelreg::test

// What the benchmarks' processes share: a `modelreg serve` node on a private
// socket, and a client's blocking get-or-load.
#pragma once

#include <chrono>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <stdlib.h>

#include <cstdio>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/scoped_actor.hpp>

#include "tools/child_process.hpp"
#include "modelreg/actors/ask.hpp"
#include "modelreg/actors/registry_actor.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg::tools {

/// A child process's failure, as the process that reads its stdout expects
/// it: one JSON line {"error": "..."}; returns the exit code 1.
inline int report_error(const caf::error& err) {
  std::printf("%s\n", nlohmann::json{{"error", describe(err)}}.dump().c_str());
  return 1;
}

/// A node on a private socket in a fresh /tmp directory, started from this
/// executable; stopped (SIGTERM) and its directory removed at the end.
struct private_node {
  /// `catalog_json`: the node's catalog (empty: the built-in one).
  private_node(const std::string& self_path, const std::string& name,
               const std::string& catalog_json = {}) {
    std::string tmpl = "/tmp/modelreg-" + name + "-XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr)
      return; // `ready` stays false: the caller reports it
    dir = tmpl;
    socket = dir + "/node.sock";
    std::vector<std::string> argv{self_path, "serve", "--socket", socket};
    if (!catalog_json.empty()) {
      std::ofstream{dir + "/catalog.json"} << catalog_json;
      argv.insert(argv.end(), {"--catalog", dir + "/catalog.json"});
    }
    process = std::make_unique<child_process>(argv);
    ready = process->read_line(std::chrono::seconds{30}).rfind("ready", 0) == 0;
  }
  ~private_node() {
    if (process) {
      process->kill(SIGTERM);
      process->wait_for_exit(std::chrono::seconds{10});
    }
    if (!dir.empty())
      std::filesystem::remove_all(dir);
  }
  private_node(const private_node&) = delete;
  private_node& operator=(const private_node&) = delete;

  std::string uri() const { return "unix:" + socket; }

  std::string dir, socket;
  std::unique_ptr<child_process> process;
  bool ready = false;
};

/// Gets (loading if needed) catalog model `model` from `reg`, blocking.
inline caf::expected<model_handle> get_model(caf::actor_system& sys, const registry_actor& reg,
                                             const std::string& model) {
  return ask<model_handle>(sys, reg, std::chrono::minutes{2}, "the node", get_or_load_atom::value,
                           model, model_spec{});
}

} // namespace modelreg::tools

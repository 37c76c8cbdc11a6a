// modelreg: the command-line tool.
//
//   modelreg [--log-level LEVEL] <command> [options]
//
// Exit codes: 0 success, 1 the command failed, 2 usage error, 3 no node
// reachable. Options are parsed by CLI11, strictly: every value is checked
// and a bad one is named in the error.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "cli/args.hpp"
#include "modelreg/nearest.hpp"
#include "cli/commands.hpp"
#include "cli/default_catalog.hpp"
#include "modelreg/backend/catalog.hpp"
#include "modelreg/log.hpp"

#include "tools/asr_demo.hpp"
#include "tools/voice_loop.hpp"
#include "tools/cluster_client.hpp"
#include "tools/serve_client.hpp"
#include "tools/transport_peer.hpp"

namespace {

using namespace modelreg::cli;

constexpr const char* version = MODELREG_VERSION; // project() in CMakeLists.txt

constexpr const char* footer = R"(
exit codes: 0 success, 1 the command failed, 2 usage error, 3 no node reachable
'modelreg COMMAND --help' shows a command's options.
)";


/// The main job.
command add_demo(CLI::App& app) {
  auto opts = std::make_shared<modelreg::tools::voice_demo_options>();
  auto expect = std::make_shared<std::vector<std::string>>();
  auto* sub = app.add_subcommand(
    "demo", "the main job, a voice loop: 4 pipeline-node processes speak with one shared TTS "
            "model and stream what they say and three recordings, in real time, to one shared "
            "speech recogniser: partial results, transcripts, latencies, loads, instances, memory");
  sub->add_option("--expect", *expect,
                  "replace a recording's pinned transcript, to see the check fail (repeatable)")
    ->type_name("FILE=TEXT");
  auto no_keep_up = std::make_shared<bool>(false);
  sub->add_flag("--no-keep-up-check", *no_keep_up,
                "report streams that fall behind real time without failing (a machine busy with "
                "other work)");
  return {sub, [opts, expect, no_keep_up] {
    opts->require_keep_up = !*no_keep_up;
    opts->self_path = self_path();
    for (const auto& e : *expect) {
      auto eq = e.find('=');
      if (eq == std::string::npos || eq == 0)
        return usage_error("demo: --expect takes FILE=TEXT, not '" + e + "'");
      bool found = false;
      for (auto& r : opts->recordings)
        if (r.file.find(e.substr(0, eq)) != std::string::npos) {
          r.expected = e.substr(eq + 1);
          found = true;
        }
      if (!found)
        return usage_error("demo: --expect names no recording: '" + e.substr(0, eq) + "'");
    }
    return modelreg::tools::run_voice_demo(*opts);
  }};
}

/// A catalog name resolved in the built-in catalog.
modelreg::model_spec builtin_spec(const std::string& name) {
  auto cat = modelreg::catalog::parse(default_catalog_json);
  if (cat)
    if (const auto* spec = cat->find(name))
      return *spec;
  return modelreg::model_spec{name, {}}; // not a catalog name: a backend name
}

/// Hidden commands: the other processes of tests, benchmarks and the demo.
/// Not for people; their arguments are positional and checked by count.
std::optional<int> run_hidden(const std::string& command, std::vector<std::string> args) {
  auto n = [](const std::string& s) { return std::stoull(s); };
  if (command == "__echo-server" && !args.empty()) {
    bool inline_only = std::find(args.begin(), args.end(), "--inline") != args.end();
    uint64_t quota = 0;
    if (args.size() >= 3 && args[1] == "--quota-bytes")
      quota = n(args[2]);
    return modelreg::tools::run_echo_server(args[0], !inline_only, quota);
  }
#ifdef MODELREG_WITH_BENCH
  if (auto rc = run_hidden_bench(command, args))
    return rc;
#endif
  if (command == "__bench-serve-client" && args.size() == 6)
    return modelreg::tools::run_serve_bench_client(args[0], args[1], n(args[2]), n(args[3]),
                                                   n(args[4]), args[5]);
  if (command == "__bench-serve-client" && args.size() == 8)
    return modelreg::tools::run_serve_bench_client(args[0], args[1], n(args[2]), n(args[3]),
                                                   n(args[4]), args[5], args[6],
                                                   std::stof(args[7]));
  if (command == "__voice-client" && args.size() >= 5)
    return modelreg::tools::run_voice_client(args[0], args[1], args[2],
                                             std::vector<std::string>(args.begin() + 4, args.end()),
                                             args[3] == "live");
  if (command == "__asr-node-client" && args.size() >= 3)
    return modelreg::tools::run_asr_node_client(
      args[0], args[1], std::vector<std::string>(args.begin() + 2, args.end()));
  if (command == "__asr-alone" && args.size() == 2)
    return modelreg::tools::run_asr_alone(builtin_spec(args[0]), args[1]);
  if (command == "__cluster-client" && args.size() >= 2)
    return modelreg::tools::run_cluster_client(args[0],
                                               std::vector<std::string>(args.begin() + 1, args.end()));
  if (command == "__cluster-stream" && args.size() == 3)
    return modelreg::tools::run_cluster_stream_client(args[0], args[1], static_cast<int>(n(args[2])));
  if (command == "__cluster-loop" && args.size() == 2)
    return modelreg::tools::run_cluster_loop_client(args[0], args[1]);
  if (command == "__hold" && args.size() == 3)
    return modelreg::tools::run_holding_client(args[0], n(args[1]), n(args[2]));
  if (command == "__flood-client" && args.size() == 3)
    return modelreg::tools::run_flood_client(args[0], n(args[1]), n(args[2]));
  return std::nullopt;
}

} // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (!args.empty() && args.front().rfind("__", 0) == 0) {
    modelreg::log::init(std::nullopt);
    try {
      if (auto rc = run_hidden(args.front(), std::vector<std::string>(args.begin() + 1, args.end())))
        return *rc;
    } catch (const std::exception& e) {
      std::cerr << "modelreg " << args.front() << ": " << e.what() << "\n";
      return exit_usage;
    }
    return usage_error("unknown internal command " + args.front());
  }
  CLI::App app{"modelreg: load each ML model once and share it"};
  app.name("modelreg");
  app.footer(footer);
  app.require_subcommand(1);
  app.fallthrough(); // --log-level after the command, too
  std::optional<std::string> level;
  app.add_option("--log-level", level,
                 "trace, debug, info, warn (default), error, critical, off; overrides the "
                 "MODELREG_LOG environment variable")
    ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}));
  app.set_version_flag("--version", std::string{"modelreg "} + version);
  std::vector<command> commands;
  for (auto& c : add_serve(app))
    commands.push_back(std::move(c));
  for (auto& c : add_client_commands(app))
    commands.push_back(std::move(c));
  commands.push_back(add_demo(app));
#ifdef MODELREG_WITH_BENCH
  for (auto& c : add_benchmarks(app))
    commands.push_back(std::move(c));
#endif
  auto* version_cmd = app.add_subcommand("version", "print the version");
  commands.push_back({version_cmd, [] {
    std::cout << "modelreg " << version << "\n";
    return exit_ok;
  }});
  auto* help_cmd = app.add_subcommand("help", "print this text");
  commands.push_back({help_cmd, [&app] {
    std::cout << app.help();
    return exit_ok;
  }});

  // A mistyped command (or `bench` subcommand): name the nearest one.
  CLI::App* level_app = &app;
  std::string said = "command";
  for (size_t i = 0; i < args.size(); ++i) {
    if (args[i] == "--log-level") {
      ++i;
      continue;
    }
    if (args[i].rfind("-", 0) == 0)
      continue;
    std::vector<std::string> names;
    CLI::App* found = nullptr;
    for (auto* sub : level_app->get_subcommands([](const CLI::App*) { return true; })) {
      names.push_back(sub->get_name());
      if (sub->get_name() == args[i])
        found = sub;
    }
    if (found == nullptr) {
      auto near = modelreg::nearest_name(args[i], names);
      return usage_error("unknown " + said + " '" + args[i] + "'" +
                         (near.empty() ? "" : "; did you mean '" + near + "'?"));
    }
    if (found->get_subcommands([](const CLI::App*) { return true; }).empty())
      break;
    level_app = found;
    said = "'" + found->get_name() + "' command";
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp&) {
    // The help of the command named, or of modelreg itself.
    const CLI::App* shown = &app;
    for (const auto& c : commands)
      if (c.app->parsed())
        shown = c.app;
    if (shown == &app)
      for (const auto* sub : app.get_subcommands())
        shown = sub;
    std::cout << shown->help();
    return exit_ok;
  } catch (const CLI::CallForVersion&) {
    std::cout << "modelreg " << version << "\n";
    return exit_ok;
  } catch (const CLI::ParseError& e) {
    std::string where;
    for (const auto* sub = &app; sub != nullptr;) {
      auto subs = sub->get_subcommands();
      if (subs.empty())
        break;
      sub = subs.front();
      where += " " + sub->get_name();
    }
    std::cerr << "modelreg" << where << ": " << e.what() << "\n(run 'modelreg" << where
              << " --help' for usage)\n";
    return exit_usage;
  }
  if (!modelreg::log::init(level))
    return usage_error("unknown log level");
  try {
    for (const auto& c : commands)
      if (c.app->parsed())
        return c.run();
    std::cout << app.help();
    return exit_usage;
  } catch (const std::exception& e) {
    std::cerr << "modelreg: " << e.what() << "\n";
    return exit_failed;
  }
}

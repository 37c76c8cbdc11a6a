// The `modelreg` commands that run or talk to a node (see docs/serve.md).
// Each `add_*` registers its commands (options, help) with the CLI11 app and
// returns them; the one the command line names is run after parsing. Exit
// codes: 0 success, 1 the command failed, 2 usage error, 3 no node reachable.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "cli/args.hpp"

namespace modelreg::cli {

/// This executable's path (for child processes).
std::string self_path();

/// `serve`.
std::vector<command> add_serve(CLI::App& app);

/// `status`, `ls`, `load`, `unload`, `infer`.
std::vector<command> add_client_commands(CLI::App& app);

/// `bench ...` (only in builds with the benchmarks, src/cli/bench_commands.cpp).
std::vector<command> add_benchmarks(CLI::App& app);

/// The benchmarks' own child processes (`__caf-echo-server`, ...), or
/// nothing if `command` is not one of them.
std::optional<int> run_hidden_bench(const std::string& command,
                                    const std::vector<std::string>& args);

} // namespace modelreg::cli

// The `modelreg` commands that run or talk to a node (see docs/serve.md).
// Each `add_*` registers its commands (options, help) with the CLI11 app and
// returns them; the one the command line names is run after parsing. Exit
// codes: 0 success, 1 the command failed, 2 usage error, 3 no node reachable.
#pragma once

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

} // namespace modelreg::cli

// The `modelreg` commands that run or talk to a node (see docs/serve.md).
// Each takes the arguments after its name and returns the process exit code:
// 0 success, 1 the command failed, 2 usage error, 3 no node reachable.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace modelreg::cli {

inline constexpr int exit_ok = 0;
inline constexpr int exit_failed = 1;
inline constexpr int exit_usage = 2;
inline constexpr int exit_unreachable = 3;

/// Prints `what` and the usage hint; returns exit_usage.
int usage_error(const std::string& what);

/// Removes `flag` from `args`; true if it was there.
bool take_flag(std::vector<std::string>& args, const std::string& flag);

/// Removes `--name VALUE` or `--name=VALUE` from `args`.
std::optional<std::string> take_option(std::vector<std::string>& args, const std::string& name);

/// Every value of a repeatable option.
std::vector<std::string> take_all(std::vector<std::string>& args, const std::string& name);

/// This executable's path (for child processes).
std::string self_path();

int serve(std::vector<std::string> args);
int status(std::vector<std::string> args);
int ls(std::vector<std::string> args);
int load(std::vector<std::string> args);
int unload(std::vector<std::string> args);
int infer(std::vector<std::string> args);

} // namespace modelreg::cli

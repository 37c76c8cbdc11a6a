// Counters the benchmarks read from /proc (Linux only).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#include <sys/types.h>

namespace modelreg::tools {

/// Context switches (voluntary + involuntary) of every thread of `pid` so far
/// (0 for the calling process); threads that already ended are not counted.
inline uint64_t context_switches(pid_t pid = 0) {
  std::string dir = pid == 0 ? "/proc/self/task" : "/proc/" + std::to_string(pid) + "/task";
  uint64_t total = 0;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator{dir, ec}) {
    std::ifstream status{task.path() / "status"};
    std::string line;
    while (std::getline(status, line)) {
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0 ||
          line.rfind("nonvoluntary_ctxt_switches:", 0) == 0)
        total += std::stoull(line.substr(line.find(':') + 1));
    }
  }
  return total;
}

} // namespace modelreg::tools

// Counters the benchmarks read from /proc (Linux only).
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>

#include <sys/types.h>
#include <unistd.h>

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

/// CPU time (user + system, seconds) `pid` has used so far, its ended
/// threads included (0: the calling process; 0.0 if it is gone).
inline double cpu_seconds(pid_t pid = 0) {
  std::ifstream in{pid == 0 ? std::string{"/proc/self/stat"}
                            : "/proc/" + std::to_string(pid) + "/stat"};
  std::string text{std::istreambuf_iterator<char>{in}, {}};
  // The command name may hold spaces: fields count from its closing ')'.
  auto at = text.rfind(')');
  if (at == std::string::npos)
    return 0.0;
  std::istringstream fields{text.substr(at + 2)};
  std::string field;
  uint64_t utime = 0, stime = 0;
  for (int i = 3; i <= 15 && fields >> field; ++i) {
    if (i == 14)
      utime = std::stoull(field);
    else if (i == 15)
      stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

} // namespace modelreg::tools

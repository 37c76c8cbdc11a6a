// A real child process (multi-process tests and benchmarks): spawned with pipes on stdin
// and stdout, read line by line, killed and reaped.
#pragma once

#include <chrono>
#include <csignal>
#include <string>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace modelreg::tools {

class child_process {
public:
  explicit child_process(std::vector<std::string> argv) {
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0)
      return;
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in[0], 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    std::vector<char*> args;
    for (auto& a : argv)
      args.push_back(a.data());
    args.push_back(nullptr);
    if (::posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ) != 0)
      pid_ = -1;
    posix_spawn_file_actions_destroy(&actions);
    ::close(in[0]);
    ::close(out[1]);
    stdin_ = in[1];
    stdout_ = out[0];
  }

  ~child_process() {
    if (pid_ > 0) {
      close_stdin();
      if (!wait_for_exit(std::chrono::seconds{5}))
        kill(SIGKILL);
      wait_for_exit(std::chrono::seconds{5});
    }
    if (stdout_ >= 0)
      ::close(stdout_);
  }

  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  /// The next line of the child's stdout; empty on timeout or EOF.
  std::string read_line(std::chrono::milliseconds timeout = std::chrono::seconds{20}) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        auto line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return {};
      pollfd p{stdout_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0)
        return {};
      char buf[256];
      auto n = ::read(stdout_, buf, sizeof(buf));
      if (n <= 0)
        return {};
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

  /// Writes `line` and a newline to the child's stdin.
  bool write_line(const std::string& line) {
    auto s = line + "\n";
    return stdin_ >= 0 && ::write(stdin_, s.data(), s.size()) == static_cast<ssize_t>(s.size());
  }

  void close_stdin() {
    if (stdin_ >= 0)
      ::close(stdin_);
    stdin_ = -1;
  }

  void kill(int sig) {
    if (pid_ > 0)
      ::kill(pid_, sig);
  }

  /// Reaps the child; false if it is still running after `timeout`.
  bool wait_for_exit(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pid_ > 0) {
      int status = 0;
      auto r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_ || r < 0) {
        pid_ = -1;
        return true;
      }
      if (std::chrono::steady_clock::now() > deadline)
        return false;
      ::usleep(1000);
    }
    return true;
  }

private:
  pid_t pid_ = -1;
  int stdin_ = -1;
  int stdout_ = -1;
  std::string buffer_;
};

} // namespace modelreg::tools

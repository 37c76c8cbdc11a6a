#include "doors/systemd.hpp"

#include <fcntl.h>
#include <systemd/sd-daemon.h>

namespace modelreg::doors {

void notify_ready(const std::string& status) {
  auto text = "READY=1\nSTATUS=" + status;
  sd_notify(0, text.c_str());
}

void notify_stopping() {
  sd_notify(0, "STOPPING=1\nSTATUS=stopping");
}

std::map<std::string, int> activated_sockets() {
  std::map<std::string, int> out;
  char** names = nullptr;
  int n = sd_listen_fds_with_names(1, &names);
  for (int i = 0; i < n; ++i) {
    int fd = SD_LISTEN_FDS_START + i;
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    std::string name = names != nullptr && names[i] != nullptr ? names[i] : "unknown";
    out[name] = fd;
  }
  if (names != nullptr) {
    for (int i = 0; i < n; ++i)
      free(names[i]);
    free(names);
  }
  return out;
}

} // namespace modelreg::doors

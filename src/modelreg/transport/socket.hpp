// Unix SOCK_SEQPACKET sockets: the rendezvous, the liveness signal (EOF when
// the peer dies, kill -9 included) and the way file descriptors travel
// (SCM_RIGHTS). Thin wrappers that turn errno into modelreg errors.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <sys/types.h>

#include <caf/expected.hpp>

namespace modelreg::transport {

/// An owned file descriptor (closed on destruction).
class unique_fd {
public:
  unique_fd() = default;
  explicit unique_fd(int fd) noexcept : fd_(fd) {}
  ~unique_fd();
  unique_fd(unique_fd&& other) noexcept : fd_(other.release()) {}
  unique_fd& operator=(unique_fd&& other) noexcept;
  unique_fd(const unique_fd&) = delete;
  unique_fd& operator=(const unique_fd&) = delete;
  int get() const noexcept { return fd_; }
  int release() noexcept {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  explicit operator bool() const noexcept { return fd_ >= 0; }

private:
  int fd_ = -1;
};

/// Listens on `path`, replacing a stale socket file. A directory it has to
/// create gets mode 0700 (0711 when `others_may_connect`: other users may
/// reach the socket by name but not list the folder); an existing one is
/// never changed, and is refused if others may write to it without the
/// sticky bit (they could replace the socket). The socket file is 0600, or
/// 0666 when `others_may_connect` (who may connect is still checked with
/// SO_PEERCRED at accept).
caf::expected<unique_fd> listen_seqpacket(const std::string& path, bool others_may_connect = false);

/// Connects to `path` (blocking).
caf::expected<unique_fd> connect_seqpacket(const std::string& path);

/// Accepts one pending connection (non-blocking listener); an empty fd if
/// none is pending; `overloaded` if this process is out of descriptors.
caf::expected<unique_fd> accept_seqpacket(int listener);

struct peer_credentials {
  pid_t pid = 0;
  uid_t uid = 0;
  gid_t gid = 0;
};

/// The peer's credentials as the kernel saw them at connect time.
caf::expected<peer_credentials> peer_of(int fd);

/// Sends one datagram carrying `fds` (may be empty) without ever waiting:
/// true if sent, false if the peer's queue is full (nothing sent).
caf::expected<bool> try_send_datagram(int fd, const void* data, size_t size,
                                      const std::vector<int>& fds = {});

/// One received datagram and the fds that came with it (owned).
struct datagram {
  std::vector<std::byte> bytes;
  std::vector<unique_fd> fds;
  bool eof = false;         ///< the peer closed (or died)
  bool would_block = false; ///< nothing to read now
};

/// Receives one datagram (up to `max_size` bytes); honours O_NONBLOCK.
caf::expected<datagram> receive_datagram(int fd, size_t max_size);

/// Waits until `fd` is readable or `timeout_ms` passes; false on timeout.
bool wait_readable(int fd, int timeout_ms);

} // namespace modelreg::transport

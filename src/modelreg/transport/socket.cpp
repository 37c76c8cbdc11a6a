#include "modelreg/transport/socket.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "modelreg/messages/error.hpp"

namespace modelreg::transport {

namespace {

constexpr size_t max_fds_per_datagram = 8;
constexpr int socket_buffer_bytes = 4 << 20;

/// Larger buffers let inline frames stream without a wake-up per datagram.
void widen_buffers(int fd) {
  ::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &socket_buffer_bytes, sizeof(socket_buffer_bytes));
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &socket_buffer_bytes, sizeof(socket_buffer_bytes));
}

caf::error os_error(errc code, const std::string& what) {
  return make_error(code, what + ": " + std::strerror(errno));
}

caf::expected<sockaddr_un> address_of(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    return make_error(errc::invalid_argument, "socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  return addr;
}

} // namespace

unique_fd::~unique_fd() {
  if (fd_ >= 0)
    ::close(fd_);
}

unique_fd& unique_fd::operator=(unique_fd&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0)
      ::close(fd_);
    fd_ = other.release();
  }
  return *this;
}

caf::expected<unique_fd> listen_seqpacket(const std::string& path, bool others_may_connect) {
  auto addr = address_of(path);
  if (!addr)
    return addr.error();
  namespace fs = std::filesystem;
  auto dir = fs::path{path}.parent_path();
  if (dir.empty())
    dir = ".";
  std::error_code ec;
  // Create only what is missing, each new level private to us.
  std::vector<fs::path> missing;
  for (auto p = dir; !p.empty() && !fs::exists(p, ec); p = p.parent_path())
    missing.push_back(p);
  for (auto i = missing.rbegin(); i != missing.rend(); ++i) {
    mode_t mode = others_may_connect ? 0711 : 0700;
    if (::mkdir(i->c_str(), mode) != 0 && errno != EEXIST)
      return os_error(errc::unavailable, "cannot create " + i->string());
    ::chmod(i->c_str(), mode); // exactly that, whatever the umask
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0)
    return os_error(errc::unavailable, "socket folder " + dir.string());
  if (!S_ISDIR(st.st_mode))
    return make_error(errc::invalid_argument, dir.string() + " is not a folder");
  if ((st.st_mode & S_IWOTH) != 0 && (st.st_mode & S_ISVTX) == 0)
    return make_error(errc::invalid_argument,
                      "socket folder " + dir.string() +
                        " is writable by every user without the sticky bit: another user "
                        "could replace the socket; choose a private folder");
  struct stat old {};
  if (::lstat(path.c_str(), &old) == 0) {
    if (!S_ISSOCK(old.st_mode))
      return make_error(errc::invalid_argument, path + " exists and is not a socket");
    fs::remove(path, ec); // a stale socket of an earlier node
  }
  unique_fd fd{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)};
  if (!fd)
    return os_error(errc::unavailable, "socket");
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0)
    return os_error(errc::unavailable, "bind " + path);
  if (::chmod(path.c_str(), others_may_connect ? 0666 : 0600) != 0)
    return os_error(errc::unavailable, "chmod " + path);
  if (::listen(fd.get(), 128) != 0)
    return os_error(errc::unavailable, "listen " + path);
  return fd;
}

caf::expected<unique_fd> connect_seqpacket(const std::string& path) {
  auto addr = address_of(path);
  if (!addr)
    return addr.error();
  unique_fd fd{::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0)};
  if (!fd)
    return os_error(errc::unavailable, "socket");
  widen_buffers(fd.get());
  if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0)
    return os_error(errc::unavailable, "connect " + path);
  return fd;
}

caf::expected<unique_fd> accept_seqpacket(int listener) {
  int fd = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return unique_fd{};
    if (errno == EMFILE || errno == ENFILE)
      return os_error(errc::overloaded, "accept");
    return os_error(errc::unavailable, "accept");
  }
  widen_buffers(fd);
  return unique_fd{fd};
}

caf::expected<peer_credentials> peer_of(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return os_error(errc::unavailable, "SO_PEERCRED");
  return peer_credentials{cred.pid, cred.uid, cred.gid};
}

namespace {

/// One sendmsg: 1 sent, 0 would block, -1 failed (errno set).
int send_once(int fd, const void* data, size_t size, const std::vector<int>& fds) {
  iovec iov{const_cast<void*>(data), size};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_datagram)] = {};
  if (!fds.empty()) {
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
    auto* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
    std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
  }
  for (;;) {
    auto n = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0)
      return 1;
    if (errno == EINTR)
      continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
      return 0;
    return -1;
  }
}

caf::error send_failure() {
  if (errno == EPIPE || errno == ECONNRESET)
    return os_error(errc::peer_disconnected, "send");
  return os_error(errc::unavailable, "send");
}

} // namespace

caf::expected<bool> try_send_datagram(int fd, const void* data, size_t size,
                                      const std::vector<int>& fds) {
  if (fds.size() > max_fds_per_datagram)
    return make_error(errc::invalid_argument, "too many fds in one datagram");
  auto r = send_once(fd, data, size, fds);
  if (r < 0)
    return send_failure();
  return r > 0;
}

caf::expected<datagram> receive_datagram(int fd, size_t max_size) {
  datagram result;
  // Received into a buffer kept per thread, then only what came is copied:
  // most datagrams are 24-byte wake-ups, and many calls find nothing.
  thread_local std::vector<std::byte> scratch;
  if (scratch.size() < max_size)
    scratch.resize(max_size);
  iovec iov{scratch.data(), max_size};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * max_fds_per_datagram)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = ::recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      result.would_block = true;
      return result;
    }
    if (errno == ECONNRESET) {
      result.eof = true;
      return result;
    }
    return os_error(errc::unavailable, "recvmsg");
  }
  for (auto* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
      auto count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int received;
        std::memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
        result.fds.emplace_back(received);
      }
    }
  }
  if (n == 0 && result.fds.empty()) {
    result.eof = true;
    return result;
  }
  if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0)
    return make_error(errc::malformed_frame, "datagram or its fds were truncated");
  result.bytes.assign(scratch.begin(), scratch.begin() + n);
  return result;
}

bool wait_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  int n;
  do {
    n = ::poll(&p, 1, timeout_ms);
  } while (n < 0 && errno == EINTR);
  return n > 0;
}

} // namespace modelreg::transport

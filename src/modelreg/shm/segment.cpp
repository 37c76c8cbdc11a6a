#include "modelreg/shm/segment.hpp"

#include <cerrno>
#include <cstring>
#include <filesystem>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "modelreg/messages/error.hpp"

namespace modelreg::shm {

namespace {

constexpr int required_seals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL | F_SEAL_FUTURE_WRITE;

caf::error os_error(const std::string& what) {
  return make_error(errc::unavailable, what + ": " + std::strerror(errno));
}

} // namespace

size_t page_size() noexcept {
  static const size_t size = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  return size;
}

size_t open_fd_count() {
  size_t n = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator{"/proc/self/fd"})
    ++n;
  return n;
}

segment::~segment() {
  reset();
}

segment::segment(segment&& other) noexcept
  : data_(other.data_), size_(other.size_), fd_(other.fd_), writable_(other.writable_) {
  other.data_ = nullptr;
  other.size_ = 0;
  other.fd_ = -1;
}

segment& segment::operator=(segment&& other) noexcept {
  if (this != &other) {
    reset();
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(fd_, other.fd_);
    std::swap(writable_, other.writable_);
  }
  return *this;
}

void segment::reset() noexcept {
  if (data_ != nullptr)
    ::munmap(data_, size_);
  if (fd_ >= 0)
    ::close(fd_);
  data_ = nullptr;
  size_ = 0;
  fd_ = -1;
}

caf::expected<segment> segment::create(size_t size, const std::string& debug_name) {
  if (size == 0)
    return make_error(errc::invalid_argument, "segment of 0 bytes");
  size = (size + page_size() - 1) / page_size() * page_size();
  segment result;
  result.fd_ = ::memfd_create(("modelreg:" + debug_name).c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (result.fd_ < 0)
    return os_error("memfd_create");
  if (::ftruncate(result.fd_, static_cast<off_t>(size)) != 0)
    return os_error("ftruncate");
  // MAP_POPULATE pre-faults every page now, not on the first tensor.
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, result.fd_, 0);
  if (p == MAP_FAILED)
    return os_error("mmap");
  result.data_ = static_cast<std::byte*>(p);
  result.size_ = size;
  result.writable_ = true;
  // Sealed after mapping: our mapping stays writable, nobody else's can be.
  if (::fcntl(result.fd_, F_ADD_SEALS, required_seals) != 0)
    return os_error("sealing the segment");
  return result;
}

caf::expected<segment> segment::map_readonly(int fd) {
  segment result;
  result.fd_ = fd;
  int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0)
    return make_error(errc::malformed_frame, "received fd is not a memfd");
  if ((seals & required_seals) != required_seals)
    return make_error(errc::malformed_frame, "received segment is not sealed");
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size <= 0)
    return make_error(errc::malformed_frame, "received segment has no size");
  auto size = static_cast<size_t>(st.st_size);
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    return os_error("mmap of a received segment");
  result.data_ = static_cast<std::byte*>(p);
  result.size_ = size;
  result.writable_ = false;
  // The mapping keeps the memory: a received segment costs no descriptor, so
  // a peer announcing many segments cannot exhaust this process's fds.
  ::close(result.fd_);
  result.fd_ = -1;
  return result;
}

bool segment::contains(const void* p, size_t n) const noexcept {
  auto addr = reinterpret_cast<uintptr_t>(p);
  auto base = reinterpret_cast<uintptr_t>(data_);
  return data_ != nullptr && addr >= base && n <= size_ && addr - base <= size_ - n;
}

} // namespace modelreg::shm

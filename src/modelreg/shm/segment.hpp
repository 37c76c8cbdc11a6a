// A shared-memory segment: an anonymous memfd and its mapping.
//
// The creating process (the sender) maps it read-write, touches every page
// once (so first-touch faults are not paid on the hot path) and seals it:
// the size can never change and nobody can map it writable again. Receivers
// map the fd read-only after checking those seals. Nothing is named, so
// nothing can be left behind: the memory goes when the last fd and mapping
// go, whichever process dies.
//
// Move-only RAII: one munmap and one close per segment. Not thread-safe to
// move; the mapped bytes themselves may be read from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <caf/expected.hpp>

namespace modelreg::shm {

class segment {
public:
  segment() = default;
  ~segment();
  segment(segment&& other) noexcept;
  segment& operator=(segment&& other) noexcept;
  segment(const segment&) = delete;
  segment& operator=(const segment&) = delete;

  /// Creates a sealed, pre-faulted, read-write segment of `size` bytes.
  static caf::expected<segment> create(size_t size, const std::string& debug_name);

  /// Maps a segment received from another process read-only. Takes ownership
  /// of `fd` and closes it once mapped (`fd()` is then -1: the mapping holds
  /// the memory). Fails (and closes `fd`) unless it is a memfd sealed against
  /// shrinking, growing and new writable mappings.
  static caf::expected<segment> map_readonly(int fd);

  std::byte* data() const noexcept { return data_; }
  size_t size() const noexcept { return size_; }
  int fd() const noexcept { return fd_; }
  bool writable() const noexcept { return writable_; }
  explicit operator bool() const noexcept { return data_ != nullptr; }

  /// True if [p, p + n) lies inside the mapping.
  bool contains(const void* p, size_t n) const noexcept;

private:
  void reset() noexcept;

  std::byte* data_ = nullptr;
  size_t size_ = 0;
  int fd_ = -1;
  bool writable_ = false;
};

/// Page size of this machine.
size_t page_size() noexcept;

/// Number of open file descriptors of this process (for leak checks).
size_t open_fd_count();

} // namespace modelreg::shm

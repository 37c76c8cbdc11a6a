// A lease: one counted hold on an entry block, shared by all copies of one
// model_handle. Internal to modelreg.
#pragma once

#include <atomic>

#include "modelreg/actors/detail/entry_block.hpp"

namespace modelreg::detail {

class lease {
public:
  /// Adopts a hold already counted in `block->handles`.
  explicit lease(entry_ptr block) noexcept : block_(std::move(block)) {}
  ~lease() { release(); }
  lease(const lease&) = delete;
  lease& operator=(const lease&) = delete;

  /// Returns the hold; false if it was already returned.
  bool release() noexcept {
    if (released_.exchange(true))
      return false;
    block_->release_one();
    return true;
  }

  bool released() const noexcept { return released_.load(); }
  const entry_ptr& block() const noexcept { return block_; }

private:
  entry_ptr block_;
  std::atomic<bool> released_{false};
};

} // namespace modelreg::detail

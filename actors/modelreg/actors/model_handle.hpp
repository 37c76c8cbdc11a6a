// model_handle: a caller's claim on a loaded model.
//
// Copyable and cheap to copy; all copies of one handle share one lease. While
// any lease on a model lives, the registry never evicts it; when the last copy
// of the last handle goes away (or `release()` is called) the supervisor is
// told and the model becomes evictable. A handle may outlive the registry:
// its calls then fail with `unavailable`/`model_crashed`, they never crash.
// Thread-safety: a handle may be used and copied from any thread.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/expected.hpp>
#include <caf/timespan.hpp>

#include "modelreg/actors/model_actor.hpp"
#include "modelreg/messages/timeouts.hpp"

namespace modelreg {

namespace detail {
struct entry_block;
class lease;
} // namespace detail

class model_handle {
public:
  /// An empty handle (`valid()` is false).
  model_handle() = default;

  /// Wraps a lease the supervisor or fast path just took.
  explicit model_handle(std::shared_ptr<detail::lease> lease);

  /// False if empty, released, or its model has left the registry.
  bool valid() const noexcept;
  explicit operator bool() const noexcept { return valid(); }

  const std::string& key() const;
  /// Which load of `key` this handle belongs to (reloads get new numbers).
  uint64_t generation() const;
  /// The model actor; request it directly for the lowest latency.
  model_actor actor() const;
  std::string description() const;
  uint64_t memory_bytes() const;

  /// Runs the model and waits for its outputs (blocking; do not call from
  /// inside an actor: request `actor()` there).
  caf::expected<tensor_map> infer(const tensor_map& inputs,
                                  caf::timespan timeout = timeouts::request) const;

  /// A ticket that counts one request as in flight (see model_actor.hpp).
  request_ticket ticket() const;

  /// Gives the lease back now, for every copy. Returns false if it was
  /// already released. Later calls through any copy fail with
  /// `handle_released`.
  bool release() const;

  /// True if both refer to the same lease.
  friend bool operator==(const model_handle& a, const model_handle& b) noexcept {
    return a.lease_ == b.lease_;
  }

  /// True if both refer to the same loaded model instance (same actor).
  bool same_model(const model_handle& other) const noexcept;

private:
  std::shared_ptr<detail::lease> lease_;
};

} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::model_handle)

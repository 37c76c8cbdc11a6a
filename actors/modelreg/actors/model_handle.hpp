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
#include <optional>
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

class model_session;

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

  /// Opens a streaming session on the model (models that stream, e.g.
  /// pocketsphinx): pins one of its instances until the session is
  /// finished, cancelled, destroyed or idle too long. Waits up to `wait` for
  /// a free instance, then fails with `busy`; `unsupported` for a model that
  /// does not stream. Blocking, like `infer`.
  caf::expected<model_session> open_session(std::chrono::milliseconds wait = {},
                                            caf::timespan timeout = timeouts::request) const;

  /// A ticket that counts one request as in flight (see model_actor.hpp).
  request_ticket ticket() const;

  /// Runs the model on the calling thread, if its backend says it is quick
  /// and thread-safe (model_capabilities::quick) and `inputs` are at most
  /// `quick_max_input_bytes`: its outputs or its error, counted in its
  /// statistics. Nothing otherwise (or for a released handle, or a model
  /// that left the registry): send the request to `actor()`. The node's
  /// transport threads call it for every request on a lease.
  std::optional<caf::expected<tensor_map>> try_infer_here(const tensor_map& inputs,
                                                          tensor_allocator& out) const;

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

/// A streaming session (model_handle::open_session): push chunks, read
/// partial results, finish for the final one. Holds its handle, so the model
/// stays loaded while the session lives. Destroying an unfinished session
/// cancels it. Movable, not copyable; use from one thread at a time.
class model_session {
public:
  model_session() = default;
  model_session(model_session&& other) noexcept;
  model_session& operator=(model_session&& other) noexcept;
  ~model_session();

  /// Sends one chunk (e.g. {"audio": 320 int16 samples}) and waits for the
  /// partial result.
  caf::expected<tensor_map> push(const tensor_map& chunk,
                                 caf::timespan timeout = timeouts::request);
  /// Ends the input and waits for the final result; the session is closed.
  caf::expected<tensor_map> finish(caf::timespan timeout = timeouts::request);
  /// Drops the session without a result (does nothing if it is closed).
  void cancel();

  bool open() const noexcept { return id_ != 0; }
  uint64_t id() const noexcept { return id_; }

private:
  friend class model_handle;
  model_session(model_handle handle, uint64_t id, uint64_t client)
    : handle_(std::move(handle)), id_(id), client_(client) {}
  caf::expected<tensor_map> step(session_op op, tensor_map chunk, caf::timespan timeout);

  model_handle handle_;
  uint64_t id_ = 0;
  uint64_t client_ = 0;
};

} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::model_handle)

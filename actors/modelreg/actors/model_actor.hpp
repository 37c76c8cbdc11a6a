// The model actor: one per loaded model, owning the model object.
//
// It answers an `infer_request` with the model's outputs or an error, as a CAF
// response or through the request's reply sink; an exception thrown
// by the model answers that caller with `infer_failed` and the actor keeps
// serving. Requests are served one at a time unless the model is
// thread-safe, in which case the actor spreads them over lanes that share the
// model. A model that declares itself blocking runs on its own thread(s).
//
// Fair queueing (models served one request at a time): requests wait in one
// queue per client, and the model takes them round-robin across clients, so
// a client with a hundred queued requests delays another client's single
// request by at most one service time, not a hundred. At most `max_queue`
// requests wait; more are answered `busy` at once.
// Instances (a model loaded as an `instance_set`, see instances.hpp): the
// actor is a front with the same fair queue, handing each request to an idle
// instance; each instance has a worker thread of its own, which replaces an
// instance whose process died (its caller gets `model_crashed`). When every
// instance is busy and requests wait, one more starts, up to the set's limit.
// Streaming sessions (models whose capabilities say `streaming`, which are
// always served through that front, with one instance if no more were asked
// for): a session pins an instance until it is finished, cancelled or idle
// for `session_idle_timeout`; other requests use the other instances. Models
// that do not stream answer session requests `unsupported`.
// The model is destroyed when the actor (and its lanes) terminate.
//
// Dynamic batching (models whose capabilities say `batchable`): requests with
// the same input names, dtypes and trailing shapes are queued and run as one
// call with inputs concatenated along dimension 0; each caller gets its own
// rows of every output back (views, no copy). A batch runs when it holds
// `max_batch` requests or `batch_timeout` after its first request arrived.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>

#include <caf/allowed_unsafe_message_type.hpp>
#include <caf/expected.hpp>
#include <caf/typed_actor.hpp>

#include "modelreg/backend/model.hpp"
#include "modelreg/messages/atoms.hpp"
#include "modelreg/tensor/tensor.hpp"

namespace modelreg {

namespace detail {
class in_flight_guard;
struct model_stats;
} // namespace detail

/// Counts a request as in flight (blocking eviction) for as long as the
/// message carrying it lives.
using request_ticket = std::shared_ptr<detail::in_flight_guard>;

/// Where a request wants its outputs (e.g. a remote caller's shared memory).
using allocator_ptr = std::shared_ptr<tensor_allocator>;

/// Where the answer to a request goes when it is not a CAF response: a
/// shared-memory peer's connection, say, whose reply the model's own thread
/// encodes and sends. Answers exactly once: `deliver`, or, if the request
/// dies unanswered (its model actor went down with it in the mailbox),
/// `model_crashed` from the destructor. Thread-safe.
class reply_sink {
public:
  using function = std::function<void(caf::expected<tensor_map>)>;
  /// `wanted`, if given, says whether anyone still waits for the answer (a
  /// peer's connection is open): a request nobody waits for any more is
  /// answered without running the model.
  /// `if_dropped`, if set, is what the answer is when the sink is destroyed
  /// unanswered (by default `model_crashed`: its model actor went down).
  explicit reply_sink(function fn, std::function<bool()> wanted = {},
                      caf::error if_dropped = {})
    : fn_(std::move(fn)), wanted_(std::move(wanted)), if_dropped_(std::move(if_dropped)) {}
  ~reply_sink();
  reply_sink(const reply_sink&) = delete;
  reply_sink& operator=(const reply_sink&) = delete;

  /// The first call answers; later calls do nothing.
  void deliver(caf::expected<tensor_map> result);

  /// True if the caller went away before the model ran the request.
  bool abandoned() const { return wanted_ && !wanted_(); }

private:
  function fn_;
  std::function<bool()> wanted_;
  caf::error if_dropped_;
  std::atomic<bool> answered_{false};
};

using reply_sink_ptr = std::shared_ptr<reply_sink>;

/// Answers `rp` with `out`: its outputs, or its error.
template <class Promise>
void deliver_outputs(Promise& rp, caf::expected<tensor_map> out) {
  if (out)
    rp.deliver(std::move(*out));
  else
    rp.deliver(std::move(out.error()));
}

/// The one message a model actor serves.
struct infer_request {
  tensor_map inputs;
  /// Counts the request against its model's eviction; may be null.
  request_ticket ticket = nullptr;
  /// Where outputs go; null: the heap. Batched outputs always come from
  /// the heap (one block for the whole batch).
  allocator_ptr allocator = nullptr;
  /// Null: the answer is the CAF response to the sender. Set: the answer
  /// goes there and the CAF response is skipped (send the request with
  /// `anon_send`).
  reply_sink_ptr reply = nullptr;
  /// Who asked, for fair queueing (a node's connection id); 0: the CAF
  /// sender is the client.
  uint64_t client = 0;
  /// When it reached the model's front (steady clock, ns), set by the front
  /// that hands it on to an instance, for the queue-time figure; 0: unknown.
  int64_t arrived_ns = 0;
};

/// What a session request asks (streaming sessions, docs/instances.md).
enum class session_op : uint8_t { open, push, finish, cancel };

/// A streaming session's request to its model actor. `open` pins one
/// instance to a new session and answers {"session": u64 [1]}; `push`
/// answers the partial result; `finish` the final one (and frees the
/// instance); `cancel` an empty map (and frees it). Requests of one session
/// are answered in the order they were sent.
struct session_request {
  session_op op = session_op::open;
  /// push, finish, cancel: which session.
  uint64_t session = 0;
  /// push: the chunk.
  tensor_map inputs;
  /// Who: `open` records it, and later requests naming another client are
  /// refused as if the session did not exist (0: no check).
  uint64_t client = 0;
  /// open: how long to wait for a free instance before answering `busy`.
  std::chrono::milliseconds wait{0};
  /// As in infer_request.
  reply_sink_ptr reply = nullptr;
  allocator_ptr allocator = nullptr;
  request_ticket ticket = nullptr;
};

using model_actor = caf::typed_actor<caf::replies_to<infer_request>::with<tensor_map>,
                                     caf::replies_to<session_request>::with<tensor_map>>;

/// How to run one model.
struct model_actor_options {
  /// Lanes for a thread-safe model (ignored otherwise); at least 1.
  size_t lanes = 1;
  /// Dynamic batching for models that declare themselves batchable: up to
  /// `max_batch` queued requests run as one call, concatenated along
  /// dimension 0, or what arrived within `batch_timeout` of the first.
  /// 1 disables batching.
  size_t max_batch = 8;
  std::chrono::milliseconds batch_timeout{10};
  /// Requests that may wait for a model served one at a time (fair queue);
  /// more are answered `busy`. At least 1.
  size_t max_queue = 4096;
  /// A session that receives nothing for this long is cancelled and its
  /// instance freed.
  std::chrono::milliseconds session_idle_timeout{30000};
};

/// A session id no other session of this process has had: a node's
/// clients name their sessions by id alone, whichever model they are on.
uint64_t new_session_id();

/// Spawns the model actor for `m` in `sys`. Stats go to `stats`. Blocking
/// models get detached actors.
model_actor spawn_model_actor(caf::actor_system& sys, model_ptr m,
                              std::shared_ptr<detail::model_stats> stats,
                              model_actor_options options);

} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::tensor_map)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::infer_request)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::session_request)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::request_ticket)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::allocator_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::model_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::loader_fn)

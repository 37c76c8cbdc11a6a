// The model actor: one per loaded model, owning the model object.
//
// It answers `infer` with the model's outputs or an error; an exception thrown
// by the model answers that caller with `infer_failed` and the actor keeps
// serving. Requests are served one at a time unless the model is
// thread-safe, in which case the actor spreads them over lanes that share the
// model. A model that declares itself blocking runs on its own thread(s).
// The model is destroyed when the actor (and its lanes) terminate.
//
// Dynamic batching (models whose capabilities say `batchable`): requests with
// the same input names, dtypes and trailing shapes are queued and run as one
// call with inputs concatenated along dimension 0; each caller gets its own
// rows of every output back (views, no copy). A batch runs when it holds
// `max_batch` requests or `batch_timeout` after its first request arrived.
#pragma once

#include <chrono>
#include <memory>

#include <caf/allowed_unsafe_message_type.hpp>
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

using model_actor = caf::typed_actor<
  caf::replies_to<infer_atom, tensor_map>::with<tensor_map>,
  caf::replies_to<infer_atom, tensor_map, request_ticket>::with<tensor_map>,
  /// Outputs allocated through the given allocator (unless batched).
  caf::replies_to<infer_atom, tensor_map, request_ticket, allocator_ptr>::with<tensor_map>>;

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
};

/// Spawns the model actor for `m` in `sys`. Stats go to `stats`. Blocking
/// models get detached actors.
model_actor spawn_model_actor(caf::actor_system& sys, model_ptr m,
                              std::shared_ptr<detail::model_stats> stats,
                              model_actor_options options);

} // namespace modelreg

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::tensor_map)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::request_ticket)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::allocator_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::model_ptr)
CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::loader_fn)

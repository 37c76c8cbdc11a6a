// blocking_client: inference from a thread that is not an actor's (a
// pipeline node's main loop, Python) against a registry from `connect()`.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>
#include <caf/timespan.hpp>

#include "modelreg/actors/registry_actor.hpp"
#include "modelreg/messages/timeouts.hpp"
#include "modelreg/tensor/tensor.hpp"

namespace modelreg {

namespace detail {
struct direct_link;
} // namespace detail

/// Inference for a synchronous caller (a thread that is not an actor's, e.g.
/// a pipeline node's main loop or Python). On a Unix link the caller writes
/// its request frame itself and is woken by the connection's thread when the
/// answer arrives: two thread hand-offs fewer per round trip than a request
/// to the proxy actor. Over TCP, or for a registry not from connect(), it
/// makes an ordinary request. Thread-safe; copies share the link.
/// A streaming session opened through a blocking_client (a Unix link):
/// push chunks, read partial results, finish for the final one. Requests
/// are answered in order. Destroying an unfinished session cancels it; so
/// does the link closing (the node frees the instance). Movable; use from
/// one thread at a time.
class blocking_session {
public:
  blocking_session() = default;
  blocking_session(blocking_session&& other) noexcept;
  blocking_session& operator=(blocking_session&& other) noexcept;
  ~blocking_session();

  /// Sends one chunk and waits for the partial result.
  caf::expected<tensor_map> push(const tensor_map& chunk, caf::timespan timeout = timeouts::request);
  /// Ends the input and waits for the final result; the session is closed.
  caf::expected<tensor_map> finish(caf::timespan timeout = timeouts::request);
  /// Drops the session (does nothing if it is closed).
  void cancel();

  bool open() const noexcept { return id_ != 0; }
  uint64_t id() const noexcept { return id_; }

private:
  friend class blocking_client;
  blocking_session(std::shared_ptr<detail::direct_link> link, uint64_t id)
    : link_(std::move(link)), id_(id) {}

  std::shared_ptr<detail::direct_link> link_;
  uint64_t id_ = 0;
};

class blocking_client {
public:
  /// Asks `remote`'s proxy for its link (one round trip to the actor).
  blocking_client(caf::actor_system& sys, registry_actor remote);

  /// Runs `key` on `inputs`; fails like a request to the registry would
  /// (`unavailable` at once when the link is down, every waiter too when it
  /// drops), or with `timeout` after `timeout` (the answer, if it comes
  /// later, is dropped and its memory returned). Holding a handle on `key`
  /// (from this registry) makes the node hand the request straight to the
  /// model.
  caf::expected<tensor_map> infer(const std::string& key, const tensor_map& inputs,
                                  caf::timespan timeout) const;

  /// Opens a streaming session on `key` (loaded if it is not, as a load by
  /// catalog name): the node pins one of its instances to it. Waits up to
  /// `wait` for a free instance, then fails with `busy`. Unix links only.
  caf::expected<blocking_session> open_session(const std::string& key,
                                               std::chrono::milliseconds wait = {},
                                               caf::timespan timeout = timeouts::request) const;

  /// Whether calls take the direct path (a Unix link from connect()).
  bool direct() const { return link_ != nullptr; }

private:
  caf::actor_system* sys_;
  registry_actor remote_;
  std::shared_ptr<detail::direct_link> link_;
};

} // namespace modelreg

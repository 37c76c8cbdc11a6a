// The client side's one request/response matcher: numbers requests, matches
// each response to the caller waiting for it, enforces deadlines, and fails
// every waiter when the link drops. The remote registry's proxy actor, its
// `blocking_client` callers and the frame-level `rpc_client` all wait here.
//
// A caller either waits on its own thread (`wait`), or leaves a callback
// that runs once on the thread that has the answer: the connection's loop
// thread (or a thread polling the ring), or whichever thread fails the link.
//
// Thread-safety: every member may be called from any thread. Request ids
// never repeat for the table's lifetime, so an answer that arrives after its
// caller gave up (or from an earlier link) matches nobody and is dropped.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "modelreg/transport/frame.hpp"

namespace modelreg::transport {

class connection;
using frame_ptr = std::shared_ptr<const inbound_frame>;

class call_table {
public:
  /// Runs once with the response frame or the error that ended the call.
  using callback = std::function<void(caf::expected<frame_ptr>)>;

  /// One caller waiting on its own thread (see `wait`).
  class waiter;
  using waiter_ptr = std::shared_ptr<waiter>;

  /// A new request id (never 0, never repeated).
  uint64_t next_id() noexcept { return next_id_.fetch_add(1); }

  /// Registers a callback for the response to `id`; register before
  /// sending (the answer may arrive before `send` returns). If the table is
  /// failed (the link is down), `done` runs at once with that error.
  void expect(uint64_t id, callback done);

  /// Registers a caller that will `wait` for the response to `id`.
  waiter_ptr expect(uint64_t id);

  /// Waits for `w`'s answer until `timeout`: the response frame, the error
  /// that failed the link, or `timeout` (the call is then forgotten and a
  /// late answer dropped). `poll`, if given, is tried first, for `spin`:
  /// it should take what has arrived off the ring on this thread (see
  /// `connection::poll`), which saves this thread's and the loop thread's
  /// wake-ups when the answer comes within microseconds.
  /// `from` names the peer in the timeout's message.
  caf::expected<frame_ptr> wait(uint64_t id, const waiter_ptr& w, std::chrono::nanoseconds timeout,
                                const std::string& from = "the peer",
                                const std::function<bool()>& poll = {},
                                std::chrono::microseconds spin = std::chrono::microseconds{0});

  /// Gives up on `id` (its send failed, say); false if it was answered.
  bool forget(uint64_t id);

  /// On the thread that received `f`: true if it answered a caller.
  bool deliver(const frame_ptr& f);

  /// The link is down: every waiting call fails with `err`, and so does
  /// every `expect` until `reset`.
  void fail_all(const caf::error& err);

  /// A new link is up: calls may be made again.
  void reset();

  /// Calls waiting for an answer.
  size_t in_flight() const;

private:
  struct entry {
    waiter_ptr blocking; // or
    callback done;
  };

  void finish(entry& e, caf::expected<frame_ptr> result);

  std::atomic<uint64_t> next_id_{1};
  mutable std::mutex mutex_;
  std::map<uint64_t, entry> calls_;
  caf::error failed_; // set while the link is down
};

class call_table::waiter {
public:
  void finish(caf::expected<frame_ptr> result);
  bool done() const;

private:
  friend class call_table;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  caf::expected<frame_ptr> result_{caf::error{}};
};

} // namespace modelreg::transport

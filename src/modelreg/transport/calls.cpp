#include "modelreg/transport/calls.hpp"

#include <thread>

#include "modelreg/messages/error.hpp"

namespace modelreg::transport {

void call_table::waiter::finish(caf::expected<frame_ptr> result) {
  {
    std::lock_guard guard{mutex_};
    result_ = std::move(result);
    done_ = true;
  }
  cv_.notify_one();
}

bool call_table::waiter::done() const {
  std::lock_guard guard{mutex_};
  return done_;
}

void call_table::finish(entry& e, caf::expected<frame_ptr> result) {
  if (e.blocking)
    e.blocking->finish(std::move(result));
  else if (e.done)
    e.done(std::move(result));
}

void call_table::expect(uint64_t id, callback done) {
  caf::error failed;
  {
    std::lock_guard guard{mutex_};
    if (!failed_) {
      calls_.emplace(id, entry{nullptr, std::move(done)});
      return;
    }
    failed = failed_;
  }
  done(std::move(failed));
}

call_table::waiter_ptr call_table::expect(uint64_t id) {
  auto w = std::make_shared<waiter>();
  std::lock_guard guard{mutex_};
  if (failed_)
    w->finish(failed_);
  else
    calls_.emplace(id, entry{w, nullptr});
  return w;
}

caf::expected<frame_ptr> call_table::wait(uint64_t id, const waiter_ptr& w,
                                          std::chrono::nanoseconds timeout,
                                          const std::string& from,
                                          const std::function<bool()>& poll,
                                          std::chrono::microseconds spin) {
  if (poll && spin.count() > 0) {
    auto until = std::chrono::steady_clock::now() + spin;
    while (!w->done() && std::chrono::steady_clock::now() < until)
      if (!poll())
        std::this_thread::yield();
  }
  std::unique_lock guard{w->mutex_};
  if (!w->cv_.wait_for(guard, timeout, [&] { return w->done_; })) {
    guard.unlock();
    if (forget(id))
      return make_error(errc::timeout,
                        "no answer from " + from + " within " +
                          std::to_string(
                            std::chrono::duration_cast<std::chrono::milliseconds>(timeout).count()) +
                          " ms (the request may still run on the node)");
    guard.lock(); // answered just now
  }
  return std::move(w->result_);
}

bool call_table::forget(uint64_t id) {
  std::lock_guard guard{mutex_};
  return calls_.erase(id) > 0;
}

bool call_table::deliver(const frame_ptr& f) {
  auto root = f->root();
  if (!root.isResponse())
    return false;
  entry e;
  {
    std::lock_guard guard{mutex_};
    auto i = calls_.find(root.getResponse().getId());
    if (i == calls_.end())
      return false;
    e = std::move(i->second);
    calls_.erase(i);
  }
  finish(e, f);
  return true;
}

void call_table::fail_all(const caf::error& err) {
  std::map<uint64_t, entry> failed;
  {
    std::lock_guard guard{mutex_};
    failed_ = err;
    failed.swap(calls_);
  }
  for (auto& [id, e] : failed)
    finish(e, err);
}

void call_table::reset() {
  std::lock_guard guard{mutex_};
  failed_ = caf::error{};
}

size_t call_table::in_flight() const {
  std::lock_guard guard{mutex_};
  return calls_.size();
}

} // namespace modelreg::transport

// Helpers shared by the actor tests: models that count their instances and
// calls, loaders with knobs, a fixture that owns an actor system and checks
// at the end that nothing leaked (no actors, no models).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <caf/actor_registry.hpp>
#include <caf/actor_system.hpp>

#include "modelreg/backend/model.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"

namespace modelreg::test {

/// A one-shot gate: threads wait until the test opens it.
class gate {
public:
  void open() {
    std::lock_guard guard{mutex_};
    open_ = true;
    cv_.notify_all();
  }
  /// Waits until open; false after `limit`.
  bool wait(std::chrono::milliseconds limit = std::chrono::seconds{10}) {
    std::unique_lock guard{mutex_};
    return cv_.wait_for(guard, limit, [this] { return open_; });
  }

private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool open_ = false;
};

/// A model that counts live instances and concurrent calls, and can be told
/// (through its inputs) to throw or to wait.
class counted_model : public model {
public:
  static inline std::atomic<int> live{0};

  explicit counted_model(uint64_t bytes = 1000, model_capabilities caps = {})
    : bytes_(bytes), caps_(caps) {
    ++live;
  }
  ~counted_model() override { --live; }

  caf::expected<tensor_map> infer(const tensor_map& inputs, tensor_allocator&) override {
    auto now = ++concurrent_;
    auto seen = max_concurrent_.load();
    while (now > seen && !max_concurrent_.compare_exchange_weak(seen, now)) {
    }
    struct leave {
      std::atomic<int>& n;
      ~leave() { --n; }
    } guard{concurrent_};
    if (inputs.count("throw"))
      throw std::runtime_error("asked to throw");
    if (inputs.count("fail"))
      return make_error(errc::invalid_argument, "asked to fail");
    if (hold_)
      hold_->wait();
    if (inputs.count("pair") && rendezvous_) {
      // Waits (bounded) until two calls run at once; a serial model never
      // sees the second call arrive and gives up after the bound.
      ++arrived_;
      auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds{500};
      while (arrived_.load() < 2 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds{1});
    }
    ++calls;
    return inputs;
  }
  uint64_t memory_bytes() const override { return bytes_; }
  model_capabilities capabilities() const override { return caps_; }
  std::string describe() const override { return "counted(" + std::to_string(bytes_) + ")"; }

  /// Makes every infer wait until `g` opens.
  void hold_on(std::shared_ptr<gate> g) { hold_ = std::move(g); }
  void enable_rendezvous() { rendezvous_ = true; }
  int max_concurrent() const { return max_concurrent_.load(); }

  std::atomic<int> calls{0};

private:
  uint64_t bytes_;
  model_capabilities caps_;
  std::shared_ptr<gate> hold_;
  bool rendezvous_ = false;
  std::atomic<int> concurrent_{0};
  std::atomic<int> max_concurrent_{0};
  std::atomic<int> arrived_{0};
};

/// A loader that counts its runs, optionally sleeps first.
inline loader_fn counting_loader(std::shared_ptr<std::atomic<int>> runs, uint64_t bytes = 1000,
                                 std::chrono::milliseconds delay = {}) {
  return [runs, bytes, delay]() -> caf::expected<model_ptr> {
    ++*runs;
    if (delay.count() > 0)
      std::this_thread::sleep_for(delay);
    return std::make_shared<counted_model>(bytes);
  };
}

/// Polls `pred` every millisecond for up to `limit`.
inline bool eventually(const std::function<bool()>& pred,
                       std::chrono::milliseconds limit = std::chrono::seconds{10}) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline)
      return false;
    std::this_thread::sleep_for(std::chrono::milliseconds{1});
  }
  return true;
}

/// True once process `pid` has exited (gone, or a zombie nobody reaped:
/// in a container the adopting init may not reap).
inline bool process_gone(int64_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string stat;
  if (!std::getline(in, stat))
    return true;
  auto paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() &&
         (stat[paren + 2] == 'Z' || stat[paren + 2] == 'X');
}

/// Owns an actor system (2 scheduler threads); every test ends by checking
/// that no actor and no model is left.
class actor_test : public ::testing::Test {
protected:
  actor_test() : sys(cfg) {}

  /// Subclasses stop what they started (registries) before this runs.
  void expect_nothing_left() {
    EXPECT_TRUE(eventually([&] { return sys.registry().running() == 0; }))
      << sys.registry().running() << " actors still running";
    EXPECT_TRUE(eventually([&] { return counted_model::live.load() == 0; }))
      << counted_model::live.load() << " models still alive";
  }

  system_config cfg;
  caf::actor_system sys;
};

} // namespace modelreg::test

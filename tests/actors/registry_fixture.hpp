// A fixture with a facade registry built from a config each test may adjust,
// and a status recorder.
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include <caf/exit_reason.hpp>
#include <caf/send.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "modelreg/registry.hpp"
#include "test_support.hpp"

namespace modelreg::test {

/// Everything a status_listener received, readable from the test thread.
struct status_log {
  std::mutex mutex;
  std::vector<status_event> events;
  size_t snapshots = 0;

  std::vector<std::pair<std::string, model_state>> transitions() {
    std::lock_guard guard{mutex};
    std::vector<std::pair<std::string, model_state>> result;
    for (const auto& e : events)
      result.emplace_back(e.key, e.state);
    return result;
  }
  size_t size() {
    std::lock_guard guard{mutex};
    return events.size();
  }
};

inline status_listener::behavior_type recorder(status_listener::pointer,
                                               std::shared_ptr<status_log> log) {
  return {
    [log](status_atom, const status_event& ev) {
      std::lock_guard guard{log->mutex};
      log->events.push_back(ev);
    },
    [log](snapshot_atom, const registry_snapshot&) {
      std::lock_guard guard{log->mutex};
      ++log->snapshots;
    },
  };
}

class registry_test : public actor_test {
protected:
  /// Builds the registry (call after adjusting `rcfg`).
  registry& start() {
    sut = std::make_unique<registry>(sys, rcfg);
    return *sut;
  }

  /// Subscribes a recorder; returns its log.
  std::shared_ptr<status_log> subscribe() {
    auto log = std::make_shared<status_log>();
    listener = sys.spawn(recorder, log);
    caf::anon_send(sut->actor(), subscribe_atom::value, listener);
    return log;
  }

  /// The status of `key` in the registry's list, if it is there.
  std::optional<model_status> status_of(const std::string& key) {
    for (auto& s : sut->list())
      if (s.key == key)
        return s;
    return std::nullopt;
  }

  registry_snapshot snapshot() {
    auto snap = sut->metrics();
    EXPECT_TRUE(snap) << describe(snap.error());
    return snap ? *snap : registry_snapshot{};
  }

  void TearDown() override {
    sut.reset();
    if (listener)
      caf::anon_send_exit(listener, caf::exit_reason::user_shutdown);
    listener = nullptr;
    expect_nothing_left();
  }

  registry_config rcfg;
  std::unique_ptr<registry> sut;
  status_listener listener;
};

} // namespace modelreg::test

// The registry supervisor's full interface (public verbs plus the messages
// its loaders, handles and timers send it) and the state it shares with the
// facade's fast path. Internal to modelreg.
#pragma once

#include <atomic>
#include <memory>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include <caf/error.hpp>

#include "modelreg/actors/registry_actor.hpp"

namespace modelreg::detail {

struct entry_block;

/// What a loader thread reports back.
struct load_outcome {
  model_ptr model;
  caf::error error;
  int64_t duration_ns = 0;
};

using supervisor_actor = registry_actor::extend<
  caf::reacts_to<loaded_atom, std::string, uint64_t, load_outcome>,
  caf::reacts_to<load_timeout_atom, std::string, uint64_t>,
  caf::reacts_to<handles_zero_atom, std::string, uint64_t>,
  caf::reacts_to<tick_atom>,
  caf::reacts_to<snapshot_atom>>;

/// Ready models, published by the supervisor for lookups that need no
/// mailbox round trip. Writers: the supervisor only. Readers: any thread.
struct registry_shared {
  mutable std::shared_mutex mutex;
  std::unordered_map<std::string, std::shared_ptr<entry_block>> ready;
  std::atomic<uint64_t> fast_hits{0};

  std::shared_ptr<entry_block> find(const std::string& key) const;
  void publish(const std::shared_ptr<entry_block>& block);
  void withdraw(const std::string& key);
  void clear();
};

} // namespace modelreg::detail

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::detail::load_outcome)

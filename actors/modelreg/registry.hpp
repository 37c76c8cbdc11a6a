// modelreg::registry: the model registry for code that has no actors.
//
//   caf::actor_system sys{cfg};                 // cfg: modelreg::system_config
//   modelreg::registry reg{sys};
//   auto h = reg.get_or_load("vad", [] { return load_vad(); });
//   if (!h) { /* h.error(): load_failed, load_timeout, out_of_memory, ... */ }
//   auto out = h->infer({{"audio", audio}});
//
// A hit on a loaded key is answered on the caller's thread from a map the
// supervisor publishes (no mailbox round trip); misses, coalescing and every
// state change go through the supervisor actor (see registry_actor.hpp).
//
// Thread-safety: every member function may be called from any thread, except
// that the blocking calls must not be made from inside an actor (use
// `actor()` there). Lifetime: the destructor stops the supervisor (waiting
// callers get `shutting_down`, model actors stop); handles may outlive it.
#pragma once

#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>

#include "modelreg/actors/registry_actor.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg {

class registry {
public:
  explicit registry(caf::actor_system& sys, registry_config cfg = {});
  ~registry();
  registry(const registry&) = delete;
  registry& operator=(const registry&) = delete;

  /// Returns the model loaded under `key`, running `loader` if it is absent;
  /// concurrent callers of one key share one load. Blocks while loading.
  caf::expected<model_handle> get_or_load(const std::string& key, loader_fn loader);

  /// The same for a model spec (backend + parameters).
  caf::expected<model_handle> get_or_load(const std::string& key, const model_spec& spec);

  /// Non-blocking get_or_load: the future is ready at once on a hit.
  std::future<caf::expected<model_handle>> get_or_load_async(const std::string& key,
                                                              loader_fn loader);

  /// The model under `key` if loaded, without loading (a hit or nothing).
  caf::expected<model_handle> get(const std::string& key);

  /// Runs the model under `key` (routed through the supervisor).
  caf::expected<tensor_map> infer(const std::string& key, const tensor_map& inputs);

  /// Unloads an idle model now; `busy` if it has handles or requests.
  caf::expected<eviction_report> unload(const std::string& key);

  /// Pins or unpins `key`; pinned models are never evicted.
  caf::expected<bool> pin(const std::string& key, bool pinned = true);

  /// Evicts every model idle for longer than the TTL.
  caf::expected<eviction_report> evict_expired();

  /// Models, their counters and the registry totals.
  caf::expected<registry_snapshot> metrics();

  /// The models alone.
  std::vector<model_status> list();

  /// The supervisor, for actors and subscribers.
  const registry_actor& actor() const noexcept { return actor_; }

  caf::actor_system& system() const noexcept { return sys_; }

private:
  /// A lease from the published map, without touching the supervisor.
  std::optional<model_handle> fast_hit(const std::string& key);

  template <class T, class... Ts>
  caf::expected<T> call(Ts&&... xs);
  std::future<caf::expected<model_handle>> request_handle(const std::string& key, loader_fn loader,
                                                          const model_spec* spec);

  caf::actor_system& sys_;
  registry_config cfg_;
  std::shared_ptr<detail::registry_shared> shared_;
  registry_actor actor_;
};

} // namespace modelreg

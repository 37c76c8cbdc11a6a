#include "modelreg/registry.hpp"

#include <caf/event_based_actor.hpp>
#include <caf/exit_reason.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/sec.hpp>
#include <caf/send.hpp>

#include "modelreg/actors/detail/lease.hpp"
#include "modelreg/actors/detail/supervisor.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/timeouts.hpp"

namespace modelreg {

namespace {

/// Callers wait at most this long beyond the load timeout: the supervisor
/// always answers (a load, queued or running, within `load_timeout` of its
/// request), so this only guards against a wedged system.
constexpr auto reply_margin = timeouts::supervisor_margin;

/// The supervisor's answer as callers see it: always a modelreg error, never
/// one of CAF's own codes.
caf::error from_supervisor(caf::error err) {
  if (err == caf::sec::request_receiver_down)
    return make_error(errc::unavailable, "the registry has stopped");
  return as_modelreg_error(std::move(err), errc::unavailable, "the registry (load_timeout + " +
                                                                std::to_string(reply_margin.count()) +
                                                                " s)");
}

std::future<caf::expected<model_handle>> ready_future(caf::expected<model_handle> x) {
  std::promise<caf::expected<model_handle>> p;
  p.set_value(std::move(x));
  return p.get_future();
}

} // namespace

registry::registry(caf::actor_system& sys, registry_config cfg)
  : sys_(sys),
    cfg_(cfg),
    shared_(std::make_shared<detail::registry_shared>()),
    actor_(spawn_registry(sys, std::move(cfg), shared_)) {}

registry::~registry() {
  caf::anon_send_exit(actor_, caf::exit_reason::user_shutdown);
}

template <class T, class... Ts>
caf::expected<T> registry::call(Ts&&... xs) {
  caf::scoped_actor self{sys_};
  caf::expected<T> result{caf::error{}};
  self->request(actor_, cfg_.load_timeout + reply_margin, std::forward<Ts>(xs)...)
    .receive([&](T& x) { result = std::move(x); },
             [&](caf::error& err) { result = from_supervisor(std::move(err)); });
  return result;
}

std::optional<model_handle> registry::fast_hit(const std::string& key) {
  if (auto block = shared_->find(key); block && block->try_acquire()) {
    shared_->fast_hits.fetch_add(1, std::memory_order_relaxed);
    return model_handle{std::make_shared<detail::lease>(std::move(block))};
  }
  return std::nullopt;
}

caf::expected<model_handle> registry::get(const std::string& key) {
  if (auto hit = fast_hit(key))
    return std::move(*hit);
  return make_error(errc::model_not_found, "no model loaded under '" + key + "'");
}

std::future<caf::expected<model_handle>>
registry::request_handle(const std::string& key, loader_fn loader, const model_spec* spec) {
  if (auto hit = fast_hit(key))
    return ready_future(std::move(*hit));
  auto promise = std::make_shared<std::promise<caf::expected<model_handle>>>();
  auto future = promise->get_future();
  auto timeout = cfg_.load_timeout + reply_margin;
  auto on_reply = [promise](model_handle& h) { promise->set_value(std::move(h)); };
  auto on_error = [promise](caf::error& err) {
    promise->set_value(from_supervisor(std::move(err)));
  };
  // A one-shot actor waits for the reply so no thread blocks. (Arguments go
  // through spawn: CAF 0.17 dereferences a null tuple for functions spawned
  // without arguments.)
  if (spec != nullptr)
    sys_.spawn(
      [timeout, on_reply, on_error](caf::event_based_actor* self, const registry_actor& reg,
                                    const std::string& key, const model_spec& spec) {
        self->request(reg, timeout, get_or_load_atom::value, key, spec).then(on_reply, on_error);
      },
      actor_, key, *spec);
  else
    sys_.spawn(
      [timeout, on_reply, on_error](caf::event_based_actor* self, const registry_actor& reg,
                                    const std::string& key, const loader_fn& loader) {
        self->request(reg, timeout, get_or_load_atom::value, key, loader).then(on_reply, on_error);
      },
      actor_, key, std::move(loader));
  return future;
}

std::future<caf::expected<model_handle>> registry::get_or_load_async(const std::string& key,
                                                                      loader_fn loader) {
  return request_handle(key, std::move(loader), nullptr);
}

caf::expected<model_handle> registry::get_or_load(const std::string& key, loader_fn loader) {
  if (auto hit = fast_hit(key))
    return std::move(*hit);
  return request_handle(key, std::move(loader), nullptr).get();
}

caf::expected<model_handle> registry::get_or_load(const std::string& key,
                                                  const model_spec& spec) {
  if (auto hit = fast_hit(key))
    return std::move(*hit);
  return request_handle(key, {}, &spec).get();
}

caf::expected<tensor_map> registry::infer(const std::string& key, const tensor_map& inputs) {
  return call<tensor_map>(infer_atom::value, key, inputs);
}

caf::expected<eviction_report> registry::unload(const std::string& key) {
  return call<eviction_report>(unload_atom::value, key);
}

caf::expected<bool> registry::pin(const std::string& key, bool pinned) {
  return call<bool>(pin_atom::value, key, pinned);
}

caf::expected<eviction_report> registry::evict_expired() {
  return call<eviction_report>(evict_expired_atom::value);
}

caf::expected<registry_snapshot> registry::metrics() {
  return call<registry_snapshot>(list_atom::value);
}

std::vector<model_status> registry::list() {
  auto snap = metrics();
  return snap ? std::move(snap->models) : std::vector<model_status>{};
}

} // namespace modelreg

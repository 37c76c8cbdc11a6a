// The Open Inference Protocol (KServe "v2") onto the registry: what the
// HTTP and gRPC doors (src/doors/) share. Every call enters the same
// registry path as a shared-memory peer: a single-flight get-or-load of the
// model (a catalog name loads on first use), a ticket that keeps it from
// eviction while the request runs, the model actor's fair queue, batching
// and quotas, and the node's metrics.
//
// Calls never block: each takes a callback, called exactly once, from a CAF
// or model thread (or at once, from the caller's thread, for a refusal). A
// call the service cannot run any more (it stopped) is answered
// `shutting_down`.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>
#include <caf/fwd.hpp>

#include "modelreg/actors/gateway.hpp"
#include "modelreg/actors/registry_actor.hpp"
#include "modelreg/metrics/node_metrics.hpp"
#include "modelreg/transport/endpoint.hpp"

namespace modelreg::oip {

/// "FP32", "INT16", "BOOL", ... for a modelreg dtype.
std::string datatype_name(dtype t);
/// The dtype of a protocol datatype; nothing for BYTES or an unknown name.
std::optional<dtype> parse_datatype(std::string_view name);

struct tensor_meta {
  std::string name;     ///< "*": any name
  std::string datatype; ///< "FP32"; alternatives "INT32|INT64"; "ANY"; BYTES for text
  std::vector<int64_t> shape;
  bool optional = false;
};

struct model_meta {
  std::string name;
  std::string platform; ///< "modelreg_<backend>"
  std::vector<tensor_meta> inputs;
  std::vector<tensor_meta> outputs;
};

struct index_entry {
  std::string name;
  std::string state;  ///< READY, LOADING or UNAVAILABLE
  std::string reason; ///< why not ready
};

/// The HTTP status the protocol gives `err` (400, 403, 404, 409, 429, 500,
/// 503, 504).
int http_status(const caf::error& err);
/// The gRPC status code (grpc::StatusCode's value) for `err`.
int grpc_code(const caf::error& err);
/// The text of an error for a protocol answer: "code: context".
std::string error_text(const caf::error& err);

struct service_options {
  std::shared_ptr<const modelreg::catalog> catalog;
  std::shared_ptr<const backend_registry> backends;
  std::shared_ptr<node_metrics> metrics;
  /// The node's shared-memory endpoint, for its figures in /metrics.
  std::weak_ptr<transport::endpoint> endpoint;
  std::string version;
  /// The registry's loaded models, as its supervisor publishes them
  /// (spawn_registry with a `registry_shared`): infer on a loaded model then
  /// goes from the door's thread straight to the model actor. Null: every
  /// infer asks the supervisor.
  std::shared_ptr<detail::registry_shared> ready_models;
};

class service {
public:
  /// Spawns the service's actor in `sys`.
  service(caf::actor_system& sys, registry_actor registry, service_options options);
  ~service();
  service(const service&) = delete;
  service& operator=(const service&) = delete;

  /// Stops the actor; calls from now on answer `shutting_down`. Idempotent.
  void stop();

  /// Ready: the node accepts requests (set by its owner once it serves).
  bool ready() const noexcept { return ready_.load(); }
  void set_ready(bool ready) noexcept { ready_.store(ready); }

  /// What the protocol's server metadata says.
  static constexpr const char* name = "modelreg";
  const std::string& version() const noexcept { return options_.version; }
  static std::vector<std::string> extensions();

  /// A catalog entry's signature; nothing if `model` is not in the catalog.
  std::optional<model_meta> metadata(const std::string& model) const;
  /// True if `model`'s output `output` is text (one UTF-8 string).
  bool text_tensor(const std::string& model, const std::string& tensor, bool output) const;

  void model_ready(const std::string& model, std::function<void(caf::expected<bool>)> done);
  /// Runs `model` (loading a catalog name first if it is not loaded).
  /// `client` names the caller for the model's fair queue.
  void infer(const std::string& model, tensor_map inputs, uint64_t client,
             std::function<void(caf::expected<tensor_map>)> done);
  /// Loads a catalog name (single flight); it stays until evicted like any
  /// other model (idle TTL, budget) or unloaded.
  void load(const std::string& model, peer_role role, std::function<void(caf::error)> done);
  /// Unloads an idle model (admins only): `busy` while it is in use.
  void unload(const std::string& model, peer_role role, std::function<void(caf::error)> done);
  void index(bool ready_only, std::function<void(caf::expected<std::vector<index_entry>>)> done);
  /// The Prometheus exposition of the whole node.
  void metrics_text(std::function<void(caf::expected<std::string>)> done);

  /// A new client id for the fair queue (one per HTTP connection or gRPC
  /// peer); never 0 and never one a shared-memory connection uses.
  uint64_t new_client_id() noexcept;

  const std::shared_ptr<node_metrics>& metrics() const noexcept { return options_.metrics; }

private:
  struct impl;
  void post(std::function<void(caf::event_based_actor*)> job);

  registry_actor registry_;
  service_options options_;
  std::shared_ptr<impl> impl_;
  std::atomic<bool> ready_{false};
  std::atomic<bool> stopped_{false};
  std::atomic<uint64_t> next_client_{0};
};

} // namespace modelreg::oip

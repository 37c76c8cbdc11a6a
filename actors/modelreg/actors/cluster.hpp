// Many nodes, one registry (docs/cluster.md).
//
// A `cluster_node` makes a node's registry one member of a cluster of nodes
// joined over CAF's middleman (with mutual TLS when the node has it):
//
//   * Membership. Each member connects to every other (a node given
//     `join` addresses learns the rest from them), says who it is, and sends
//     a heartbeat with what it holds every `heartbeat_interval`. A member
//     whose connection drops, or that sends nothing for `member_timeout`, is
//     removed.
//   * Ownership. Each key has one owner among the live members: rendezvous
//     hashing over their addresses (cluster/placement.hpp). The owner
//     answers "where is it?" for its keys, and places a model nobody holds
//     on one member (most free budget, then least load). It answers only
//     members that see the same members (their view digests match): while a
//     membership change spreads, callers retry.
//   * Loading. The registry's placement hook runs on its loader thread: it
//     asks the owner; if the holder is this node it reserves the model's
//     bytes and loads it here; otherwise it gets a lease on the holder
//     through `connect()` and returns a model that forwards there
//     (`model::served_by`). The local registry keeps its single flight, its
//     leases and its TTL; a forwarded entry holds one lease on the holder, so
//     the holder keeps the model while any node uses it.
//   * Failover. When a member goes, every forwarded entry to it is dropped
//     (its callers in flight get `unavailable`), and the next request
//     places the model again. The owner of a key with `min_copies` places
//     it again at once.
//   * Copies. A model with `max_copies` > 1 whose requests wait longer than
//     `scale_up_queue` for `scale_up_intervals` heartbeats in a row gets
//     another copy on another member; forwarded entries take a lease on
//     every copy and spread their requests over them (the spare ones only
//     while the first is busy, and they let go of a spare copy unused for a
//     while); copies nobody uses go idle and are evicted, and under budget
//     pressure a spare copy goes before other idle models.
//
// Thread-safety: the placement hook runs on loader threads; status_json on
// any thread. Lifetime: stop() before the actor system ends.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <caf/actor.hpp>

#include "modelreg/actors/registry_actor.hpp"

namespace modelreg {

struct cluster_options {
  /// Members to join ("tcp://HOST:PORT"); retried until they answer.
  std::vector<std::string> join;
  std::chrono::milliseconds heartbeat_interval{500};
  /// A member silent this long is removed.
  std::chrono::milliseconds member_timeout{3000};
  /// Reaching a member (TCP and TLS handshakes).
  std::chrono::milliseconds connect_timeout{2000};
  /// How long a placement and its load may take, retries included.
  std::chrono::milliseconds load_timeout{std::chrono::seconds{120}};
  /// Queue time that asks for another copy (models with max_copies > 1).
  std::chrono::milliseconds scale_up_queue{50};
  int scale_up_intervals = 4;
  std::shared_ptr<const modelreg::catalog> catalog;
  std::shared_ptr<const backend_registry> backends;
  std::shared_ptr<node_metrics> metrics;
  /// The node's client connections now (for status); optional.
  std::function<uint64_t()> connections;
};

namespace detail {
struct cluster_shared;
} // namespace detail

class cluster_node {
public:
  using placement_fn = decltype(registry_config::placement);

  cluster_node(caf::actor_system& sys, cluster_options options);
  ~cluster_node();
  cluster_node(const cluster_node&) = delete;
  cluster_node& operator=(const cluster_node&) = delete;

  /// The hook for `registry_config::placement`.
  placement_fn placement() const;

  /// The hook for `registry_config::spare_copy`: a model held here that
  /// another member also holds ready, and whose copy here is not the one
  /// of highest rendezvous weight (so of k copies, k - 1 are spare).
  std::function<bool(const std::string&)> spare_copy() const;

  /// Spawns the cluster actor for `local`, the registry spawned with
  /// placement(); it waits for announce().
  void start(registry_actor local);

  /// Starts membership: `self_address` is this node's name in the cluster,
  /// "tcp://HOST:PORT", where the others reach its door (known once it
  /// listens). Loads asked for before wait for it.
  void announce(const std::string& self_address);

  /// Where the node's door sends cluster messages (wire_interface).
  caf::actor actor() const;

  /// Every member as the status answer's "cluster" object: {"self",
  /// "members": [{"address", "self", "models", "bytes_in_use", "budget_bytes",
  /// "connections", "requests_per_s", "loads", "last_seen_ms"}]}.
  std::string status_json() const;

  /// Leaves the cluster: no more heartbeats; the members see the node go.
  void stop();

private:
  std::shared_ptr<detail::cluster_shared> shared_;
};

} // namespace modelreg

// What the nodes of a cluster tell each other (docs/cluster.md): who they
// are, what they hold, and where a model goes. Plain values with `inspect`;
// they travel between nodes through CAF's middleman.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <caf/atom.hpp>
#include <caf/message.hpp>
#include <caf/meta/type_name.hpp>

namespace modelreg {

// -- node to node; atoms hold at most 10 characters ---------------------------
/// (join, member_info) -> std::vector<member_info>: "I am here; who is there?"
using join_atom = caf::atom_constant<caf::atom("cjoin")>;
/// (heartbeat, member_info): sent to every member every heartbeat interval.
using heartbeat_atom = caf::atom_constant<caf::atom("cheartbeat")>;
/// (place, key, model_spec asked, requester, view digest, excluded holders)
///   -> placement: the owner of `key` says which node holds (or loads) it.
using place_atom = caf::atom_constant<caf::atom("cplace")>;
/// (load_here, key, bool pin): the owner asks a node to hold a copy.
using load_here_atom = caf::atom_constant<caf::atom("cloadhere")>;
/// (reserve, key, expected bytes, bool may_evict, ticket) -> bool: the
/// owner asks a node to promise room for a model it places there
/// (`out_of_memory` if it has none).
using reserve_atom = caf::atom_constant<caf::atom("creserve")>;
/// (unreserve, key, ticket): the owner gave up on that node (its answer came
/// too late): the promise is void.
using unreserve_atom = caf::atom_constant<caf::atom("cunreserve")>;

/// One model a node runs (not one it forwards).
struct held_model {
  std::string key;
  uint64_t memory_bytes = 0;
  bool ready = false; ///< false: still loading
  uint64_t handles = 0;
  bool pinned = false;
  /// Mean time its requests waited, over the last heartbeat interval.
  uint64_t queue_us = 0;
  /// Another member holds a ready copy with a higher rendezvous weight:
  /// this one is evicted first under budget pressure.
  bool spare = false;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, held_model& x) {
  return f(caf::meta::type_name("modelreg::held_model"), x.key, x.memory_bytes, x.ready,
           x.handles, x.pinned, x.queue_us, x.spare);
}

/// What a node says about itself in every heartbeat.
struct member_info {
  /// "tcp://HOST:PORT": how the others reach it; its name in the cluster.
  std::string address;
  /// When it started (ns since the epoch): a node restarted on the same
  /// address is a new member.
  int64_t incarnation = 0;
  uint64_t budget_bytes = 0; ///< 0: no budget
  uint64_t bytes_in_use = 0;
  uint64_t reserved_bytes = 0; ///< promised to loads in progress
  uint64_t connections = 0;
  uint64_t requests_per_s = 0;
  std::vector<held_model> models;
  /// Loads that finished here since it started, by key.
  std::map<std::string, uint64_t> loads;
  /// The members it sees, itself included, sorted.
  std::vector<std::string> members;
  /// Models it forwards to another member (a new copy does not go there).
  std::vector<std::string> forwarded;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, member_info& x) {
  return f(caf::meta::type_name("modelreg::member_info"), x.address, x.incarnation,
           x.budget_bytes, x.bytes_in_use, x.reserved_bytes, x.connections, x.requests_per_s,
           x.models, x.loads, x.members, x.forwarded);
}

/// The owner's answer to `place`.
struct placement {
  std::string holder;        ///< the node that holds or loads the model
  uint64_t expected_bytes = 0; ///< what the holder should reserve (0: unknown)
  bool may_evict = false;    ///< the holder may evict idle models to fit it
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, placement& x) {
  return f(caf::meta::type_name("modelreg::placement"), x.holder, x.expected_bytes,
           x.may_evict);
}

/// True for a message a node's door passes to its cluster actor (a
/// caf::message or a mailbox element's content).
template <class Tuple>
bool is_cluster_message(const Tuple& m) {
  return m.size() > 0 && (m.template match_element<join_atom>(0) || m.template match_element<heartbeat_atom>(0) ||
                          m.template match_element<place_atom>(0) || m.template match_element<load_here_atom>(0) ||
                          m.template match_element<reserve_atom>(0) ||
                          m.template match_element<unreserve_atom>(0));
}

} // namespace modelreg

// The link a remote registry's proxy shares with synchronous callers
// (blocking_client). Internal to modelreg.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include <caf/atom.hpp>
#include <caf/expected.hpp>
#include <caf/timespan.hpp>

#include "modelreg/tensor/tensor.hpp"
#include "modelreg/transport/calls.hpp"
#include "modelreg/transport/endpoint.hpp"

namespace modelreg::detail {

/// Asks a proxy from connect() for its direct_link.
using direct_atom = caf::atom_constant<caf::atom("direct")>;

/// What the proxy shares with synchronous callers (blocking_client): the
/// link's one call table (every request of both paths waits there, so one
/// place matches answers and fails every waiter when the link drops), the
/// Unix connection they send on themselves, and the leases held on it. The
/// connection's thread hands an answer straight to its caller. The proxy
/// attaches the connection when its link comes up and detaches it when the
/// link goes.
struct direct_link {
  transport::call_table calls;
  std::mutex mutex;
  transport::connection_ptr conn; // null while there is no Unix link
  std::string down_reason = "not connected (reconnecting)";
  std::string uri;
  /// Leases this process holds on the current link, by key: an Infer that
  /// names one goes straight to the model on the node.
  std::multimap<std::string, uint64_t> leases;

  void add_lease(const std::string& key, uint64_t lease) {
    std::lock_guard guard{mutex};
    leases.emplace(key, lease);
  }

  void remove_lease(uint64_t lease) {
    std::lock_guard guard{mutex};
    for (auto i = leases.begin(); i != leases.end(); ++i)
      if (i->second == lease) {
        leases.erase(i);
        return;
      }
  }

  /// A lease held on `key` (0: none).
  uint64_t lease_for(const std::string& key) {
    std::lock_guard guard{mutex};
    auto i = leases.find(key);
    return i == leases.end() ? 0 : i->second;
  }

  /// A link is up (`c`: its connection, null over TCP).
  void attach(transport::connection_ptr c) {
    std::lock_guard guard{mutex};
    conn = std::move(c);
    calls.reset();
  }

  /// No new calls; calls in flight still get their answers (a goodbye).
  void close_to_new_calls(std::string why) {
    std::lock_guard guard{mutex};
    conn = nullptr;
    down_reason = std::move(why);
  }

  /// The link is gone: every waiting call fails with `err`.
  void detach(const caf::error& err, std::string why) {
    {
      std::lock_guard guard{mutex};
      conn = nullptr;
      down_reason = std::move(why);
      leases.clear(); // the node released them with the link
    }
    calls.fail_all(err);
  }

  /// Fills a request (its id is set), sends it on the link and waits for
  /// the answer on this thread.
  caf::expected<transport::frame_ptr>
  call(const std::function<caf::error(transport::outgoing_frame&, wire::Request::Builder)>& fill,
       caf::timespan timeout);

  /// Sends an Infer (naming the lease held on `key`, if any) on the link
  /// and waits for its answer on this thread.
  caf::expected<tensor_map> infer(const std::string& key, const tensor_map& inputs,
                                  caf::timespan timeout);
};


} // namespace modelreg::detail

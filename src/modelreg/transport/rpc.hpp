// Request/response over one transport connection, frame by frame: the
// client the transport's tests and benchmarks (and the helper processes)
// use, on the same call table (`calls.hpp`) as the remote registry. The wire
// helpers both sides share are in `codec.hpp`.
//
// Thread-safety: `call` may be used from many threads at once. When the
// connection dies, every waiting and later call fails with
// `peer_disconnected` at once.
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "modelreg/messages/timeouts.hpp"
#include "modelreg/transport/calls.hpp"
#include "modelreg/transport/codec.hpp"
#include "modelreg/transport/endpoint.hpp"

namespace modelreg::transport {

class rpc_client : public std::enable_shared_from_this<rpc_client> {
public:
  /// Connects `ep` to `path`. Frames that are not responses go to
  /// `on_other` (on the loop thread), if given.
  static caf::expected<std::shared_ptr<rpc_client>>
  connect(const std::shared_ptr<endpoint>& ep, const std::string& path,
          frame_handler on_other = {});

  /// Fills a request (its id is set for you), sends it and waits for the
  /// response frame. Errors: the send's (quota_exceeded, ...),
  /// peer_disconnected, or `timeout` after `timeout`.
  caf::expected<frame_ptr> call(const std::function<caf::error(outgoing_frame&,
                                                               wire::Request::Builder)>& fill,
                                std::chrono::milliseconds timeout = timeouts::request);

  const connection_ptr& connection() const noexcept { return conn_; }

  /// Closes the connection; calls still waiting fail with `shutting_down`.
  void close();

private:
  void on_frame(frame_ptr f);
  void on_error(const caf::error& err);

  connection_ptr conn_;
  frame_handler on_other_;
  call_table calls_;
};

} // namespace modelreg::transport

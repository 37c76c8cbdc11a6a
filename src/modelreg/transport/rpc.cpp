#include "modelreg/transport/rpc.hpp"

#include "modelreg/messages/error.hpp"

namespace modelreg::transport {

caf::expected<std::shared_ptr<rpc_client>>
rpc_client::connect(const std::shared_ptr<endpoint>& ep, const std::string& path,
                    frame_handler on_other) {
  auto client = std::make_shared<rpc_client>();
  client->on_other_ = std::move(on_other);
  std::weak_ptr<rpc_client> weak = client;
  auto conn = ep->connect(
    path,
    [weak](const connection_ptr& c, frame_ptr f) {
      if (auto self = weak.lock())
        self->on_frame(std::move(f));
      else
        (void) c;
    },
    [weak](const connection_ptr&, const caf::error& err) {
      if (auto self = weak.lock())
        self->on_error(err);
    });
  if (!conn)
    return conn.error();
  client->conn_ = std::move(*conn);
  return client;
}

void rpc_client::on_frame(frame_ptr f) {
  if (f->root().isResponse()) {
    calls_.deliver(f); // unmatched: timed out already, dropped (its loans go back)
    return;
  }
  if (on_other_)
    on_other_(conn_, std::move(f));
}

void rpc_client::on_error(const caf::error& err) {
  calls_.fail_all(is(err, errc::peer_disconnected)
                    ? err
                    : make_error(errc::peer_disconnected, "connection failed: " + describe(err)));
}

caf::expected<frame_ptr>
rpc_client::call(const std::function<caf::error(outgoing_frame&, wire::Request::Builder)>& fill,
                 std::chrono::milliseconds timeout) {
  auto frame = conn_->new_frame();
  auto request = frame.root().initRequest();
  auto id = calls_.next_id();
  auto waiting = calls_.expect(id);
  request.setId(id);
  if (auto err = fill(frame, request)) {
    calls_.forget(id);
    return err;
  }
  if (auto err = conn_->send(frame)) {
    calls_.forget(id);
    return err;
  }
  // Spin briefly first, taking the reply off the ring ourselves: against a
  // peer that answers on its loop thread (the transport's echo peer) it
  // often arrives within microseconds, sooner than a sleeping thread could
  // be woken or the loop thread could hand it over.
  return calls_.wait(id, waiting, timeout, "the peer", [this] { return conn_->poll(); },
                     std::chrono::microseconds{50});
}

void rpc_client::close() {
  if (conn_)
    conn_->close();
  // Calls still waiting end now, not at their timeouts.
  calls_.fail_all(make_error(errc::shutting_down, "the connection was closed by this client"));
}

} // namespace modelreg::transport

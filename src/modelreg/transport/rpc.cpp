#include "modelreg/transport/rpc.hpp"

#include "modelreg/messages/error.hpp"

namespace modelreg::transport {

void put_error(wire::Error::Builder e, const caf::error& err) {
  auto mine = as_modelreg_error(err, errc::unavailable, "the node"); // CAF's own, too
  errc code = errc::unavailable;
  to_errc(mine, code);
  e.setCode(static_cast<uint8_t>(code));
  e.setMessage(describe(mine));
}

caf::error error_of(wire::Error::Reader e) {
  return make_error(static_cast<errc>(e.getCode()), e.getMessage());
}

void put_spec(wire::ModelSpec::Builder s, const model_spec& spec) {
  s.setBackend(spec.backend);
  auto params = s.initParams(static_cast<uint32_t>(spec.params.size()));
  uint32_t i = 0;
  for (const auto& [k, v] : spec.params) {
    params[i].setKey(k);
    params[i].setValue(v);
    ++i;
  }
}

model_spec spec_of(wire::ModelSpec::Reader r) {
  model_spec spec;
  spec.backend = r.getBackend();
  for (auto p : r.getParams())
    spec.params[p.getKey()] = p.getValue();
  return spec;
}

void respond_error(const connection_ptr& conn, uint64_t id, const caf::error& err) {
  auto frame = conn->new_frame();
  auto resp = frame.root().initResponse();
  resp.setId(id);
  put_error(resp.initError(), err);
  conn->send(frame);
}

void respond_outputs(const connection_ptr& conn, uint64_t id, const tensor_map& outputs) {
  auto frame = conn->new_frame();
  auto resp = frame.root().initResponse();
  resp.setId(id);
  if (auto err = frame.put_tensors(resp.initOutputs(static_cast<uint32_t>(outputs.size())), outputs))
    return respond_error(conn, id, err);
  if (auto err = conn->send(frame))
    respond_error(conn, id, err); // e.g. quota_exceeded: the connection stays usable
}

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
}

} // namespace modelreg::transport

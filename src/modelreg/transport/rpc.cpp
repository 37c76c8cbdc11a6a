#include "modelreg/transport/rpc.hpp"

#include <thread>

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
  auto root = f->root();
  if (!root.isResponse()) {
    if (on_other_)
      on_other_(conn_, std::move(f));
    return;
  }
  auto id = root.getResponse().getId();
  std::shared_ptr<pending> p;
  {
    std::lock_guard guard{mutex_};
    auto i = pending_.find(id);
    if (i == pending_.end())
      return; // timed out already: drop it (its loans go back)
    p = i->second;
    pending_.erase(i);
    p->frame = std::move(f);
    p->done = true;
  }
  p->cv.notify_all();
}

void rpc_client::on_error(const caf::error& err) {
  std::map<uint64_t, std::shared_ptr<pending>> failed;
  {
    std::lock_guard guard{mutex_};
    dead_ = is(err, errc::peer_disconnected)
              ? err
              : make_error(errc::peer_disconnected, "connection failed: " + describe(err));
    failed.swap(pending_);
    for (auto& [id, p] : failed) {
      p->error = dead_;
      p->done = true;
    }
  }
  for (auto& [id, p] : failed)
    p->cv.notify_all();
}

caf::expected<frame_ptr>
rpc_client::call(const std::function<caf::error(outgoing_frame&, wire::Request::Builder)>& fill,
                 std::chrono::milliseconds timeout) {
  auto frame = conn_->new_frame();
  auto request = frame.root().initRequest();
  auto p = std::make_shared<pending>();
  uint64_t id;
  {
    std::lock_guard guard{mutex_};
    if (dead_)
      return dead_;
    id = next_id_++;
    pending_[id] = p;
  }
  request.setId(id);
  auto forget = [&] {
    std::lock_guard guard{mutex_};
    pending_.erase(id);
  };
  if (auto err = fill(frame, request)) {
    forget();
    return err;
  }
  if (auto err = conn_->send(frame)) {
    forget();
    return err;
  }
  // Spin briefly first, taking the reply off the ring ourselves: it often
  // arrives within microseconds, sooner than a sleeping thread could be woken
  // or the loop thread could hand it over.
  auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds{50};
  while (!p->done.load(std::memory_order_acquire) && std::chrono::steady_clock::now() < spin_until)
    if (!conn_->poll())
      std::this_thread::yield();
  std::unique_lock guard{mutex_};
  if (!p->cv.wait_for(guard, timeout, [&] { return p->done.load(); })) {
    pending_.erase(id);
    return make_error(errc::timeout, "no response within " + std::to_string(timeout.count()) +
                                       " ms");
  }
  if (p->error)
    return p->error;
  return p->frame;
}

void rpc_client::close() {
  if (conn_)
    conn_->close();
}

} // namespace modelreg::transport

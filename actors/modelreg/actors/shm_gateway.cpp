#include "modelreg/actors/shm_gateway.hpp"

#include <map>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>
#include <caf/typed_event_based_actor.hpp>

#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/transport/rpc.hpp"

namespace modelreg {

namespace {

using transport::connection_ptr;
using transport::frame_ptr;

struct gateway_state {
  static inline const char* name = "modelreg.gateway";
  // Not an aggregate: CAF would otherwise try to build it from the self pointer.
  gateway_state() = default;
  registry_actor registry;
  std::shared_ptr<transport::endpoint> endpoint;
  gateway_options options;
  // Leases per connection: lease id -> handle.
  std::map<uint64_t, std::map<uint64_t, model_handle>> leases;
  uint64_t next_lease = 1;
};

using gateway_ptr = gateway_actor::stateful_pointer<gateway_state>;

void reply_ok(const connection_ptr& conn, uint64_t id) {
  auto frame = conn->new_frame();
  auto resp = frame.root().initResponse();
  resp.setId(id);
  resp.setOk();
  conn->send(frame);
}

model_spec spec_of(wire::ModelSpec::Reader r) {
  model_spec spec;
  spec.backend = r.getBackend();
  for (auto p : r.getParams())
    spec.params[p.getKey()] = p.getValue();
  return spec;
}

void handle_request(gateway_ptr self, const connection_ptr& conn, const frame_ptr& frame) {
  auto& st = self->state;
  auto request = frame->root().getRequest();
  auto id = request.getId();
  auto timeout = st.options.request_timeout;
  auto on_error = [conn, id](caf::error& err) { transport::respond_error(conn, id, err); };
  switch (request.which()) {
    case wire::Request::GET_OR_LOAD: {
      auto r = request.getGetOrLoad();
      std::string key = r.getKey();
      self->request(st.registry, timeout, get_or_load_atom::value, key, spec_of(r.getSpec()))
        .then(
          [self, conn, id](model_handle& h) {
            auto lease = self->state.next_lease++;
            self->state.leases[conn->id()][lease] = h;
            auto out = conn->new_frame();
            auto resp = out.root().initResponse();
            resp.setId(id);
            auto w = resp.initHandle();
            w.setLease(lease);
            w.setKey(h.key());
            w.setGeneration(h.generation());
            w.setMemoryBytes(h.memory_bytes());
            w.setDescription(h.description());
            conn->send(out);
          },
          on_error);
      return;
    }
    case wire::Request::INFER: {
      auto r = request.getInfer();
      // Views of the sender's memory: the model reads its inputs in place.
      auto inputs = frame->tensors(r.getInputs());
      if (!inputs)
        return transport::respond_error(conn, id, inputs.error());
      self->request(st.registry, timeout, infer_atom::value, std::string{r.getKey()}, *inputs)
        .then([conn, id](tensor_map& out) { transport::respond_outputs(conn, id, out); }, on_error);
      return;
    }
    case wire::Request::RELEASE: {
      auto& held = st.leases[conn->id()];
      if (held.erase(request.getRelease()) == 0)
        return transport::respond_error(conn, id, make_error(errc::invalid_argument, "no such lease"));
      return reply_ok(conn, id);
    }
    case wire::Request::UNLOAD:
      self->request(st.registry, timeout, unload_atom::value, std::string{request.getUnload()})
        .then([conn, id](const eviction_report&) { reply_ok(conn, id); }, on_error);
      return;
    case wire::Request::STATUS:
      self->request(st.registry, timeout, list_atom::value)
        .then(
          [conn, id](const registry_snapshot& snap) {
            auto out = conn->new_frame();
            auto resp = out.root().initResponse();
            resp.setId(id);
            resp.setStatusJson(to_json(snap));
            conn->send(out);
          },
          on_error);
      return;
    case wire::Request::ECHO: {
      auto tensors = frame->tensors(request.getEcho());
      if (!tensors)
        return transport::respond_error(conn, id, tensors.error());
      return transport::respond_outputs(conn, id, *tensors);
    }
    default:
      return transport::respond_error(conn, id, make_error(errc::unsupported, "request not supported"));
  }
}

gateway_actor::behavior_type gateway(gateway_ptr self, registry_actor registry,
                                     std::shared_ptr<transport::endpoint> ep,
                                     gateway_options options) {
  self->state.registry = std::move(registry);
  self->state.endpoint = std::move(ep);
  self->state.options = options;
  return {
    [self](inbound_atom, const connection_ptr& conn, const frame_ptr& frame) {
      if (frame->root().isRequest())
        handle_request(self, conn, frame);
    },
    [self](closed_atom, const connection_ptr& conn) {
      auto n = self->state.leases[conn->id()].size();
      self->state.leases.erase(conn->id());
      if (n > 0)
        log::get("modelreg.gateway")->info("connection {} closed: released {} leases", conn->id(), n);
    },
    [self](shutdown_atom) {
      self->state.leases.clear();
      self->quit();
    },
  };
}

} // namespace

caf::expected<gateway_actor> spawn_shm_gateway(caf::actor_system& sys, registry_actor registry,
                                               std::shared_ptr<transport::endpoint> ep,
                                               const std::string& path,
                                               gateway_options options) {
  auto gw = sys.spawn(gateway, std::move(registry), ep, options);
  // The loop thread only forwards: everything else happens in the actor.
  caf::weak_actor_ptr weak = caf::actor_cast<caf::weak_actor_ptr>(gw);
  auto err = ep->listen(
    path,
    [weak](const connection_ptr& conn, frame_ptr frame) {
      if (auto strong = weak.lock())
        caf::anon_send(caf::actor_cast<gateway_actor>(strong), inbound_atom::value, conn,
                       std::move(frame));
    },
    [weak](const connection_ptr& conn, const caf::error&) {
      if (auto strong = weak.lock())
        caf::anon_send(caf::actor_cast<gateway_actor>(strong), closed_atom::value, conn);
    });
  if (err) {
    caf::anon_send(gw, shutdown_atom::value);
    return err;
  }
  return gw;
}

} // namespace modelreg

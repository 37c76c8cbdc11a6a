#include "modelreg/transport/codec.hpp"

#include <cstring>

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
  s.setInstances(spec.instances);
  s.setMaxInstances(spec.max_instances);
}

model_spec spec_of(wire::ModelSpec::Reader r) {
  model_spec spec;
  spec.backend = r.getBackend();
  for (auto p : r.getParams())
    spec.params[p.getKey()] = p.getValue();
  spec.instances = r.getInstances();
  spec.max_instances = r.getMaxInstances();
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

caf::error put_infer(outgoing_frame& frame, wire::Request::Builder r, const std::string& key,
                     uint64_t lease, const tensor_map& inputs) {
  auto in = r.initInfer();
  in.setKey(key);
  in.setLease(lease);
  return frame.put_tensors(in.initInputs(static_cast<uint32_t>(inputs.size())), inputs);
}

caf::expected<tensor_map> outputs_of(caf::expected<frame_ptr> answer) {
  if (!answer)
    return std::move(answer.error());
  auto resp = (*answer)->root().getResponse();
  if (resp.isError())
    return error_of(resp.getError());
  if (!resp.isOutputs())
    return make_error(errc::malformed_frame, "expected outputs");
  return (*answer)->tensors(resp.getOutputs());
}

std::vector<char> to_bytes(outgoing_frame& frame) {
  auto flat = frame.finish_flat();
  auto bytes = flat.asChars();
  return {bytes.begin(), bytes.end()};
}

caf::expected<frame_ptr> from_bytes(const std::vector<char>& bytes, copy_counters& counters) {
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0 ||
      bytes.size() > max_inline_frame_bytes)
    return make_error(errc::malformed_frame,
                      "frame of " + std::to_string(bytes.size()) + " bytes is not whole words");
  auto words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  auto decoded = inbound_frame::decode(
    std::move(words), [](uint32_t) { return std::shared_ptr<const shm::segment>{}; }, {},
    counters);
  if (!decoded)
    return decoded.error();
  return frame_ptr{std::move(*decoded)};
}

} // namespace modelreg::transport

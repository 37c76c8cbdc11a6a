// The wire's encode/decode pairs, in one place: errors, model specs, whole
// frames as bytes (for peers reached through CAF's middleman), and the two
// answers a serving side sends (outputs, or an error). Both sides of every
// link use these; wire.capnp is the schema.
//
// Thread-safety: pure functions; the `respond_*` helpers send on a
// connection, which any thread may do.
#pragma once

#include <vector>

#include <caf/error.hpp>
#include <caf/expected.hpp>

#include "modelreg/messages/model_spec.hpp"
#include "modelreg/transport/endpoint.hpp"

namespace modelreg::transport {

/// Writes `err` into `e`: its modelreg code (CAF's own errors, such as
/// timeouts and dead actors, mapped by `as_modelreg_error`) and its text.
void put_error(wire::Error::Builder e, const caf::error& err);

/// The error a peer sent.
caf::error error_of(wire::Error::Reader e);

/// A model spec in and out of its wire form.
void put_spec(wire::ModelSpec::Builder s, const model_spec& spec);
model_spec spec_of(wire::ModelSpec::Reader r);

/// Fills `r` as an Infer of `key` on `inputs`, naming `lease` (0: none):
/// tensors by reference where `frame` can, else copied into it once.
caf::error put_infer(outgoing_frame& frame, wire::Request::Builder r, const std::string& key,
                     uint64_t lease, const tensor_map& inputs);

/// The outputs an Infer's answer carries, or why there are none (the call
/// failed, the node answered an error, or it answered something else).
caf::expected<tensor_map> outputs_of(caf::expected<frame_ptr> answer);

/// The finished frame as one flat byte string (tensors inline).
std::vector<char> to_bytes(outgoing_frame& frame);

/// Decodes bytes from a peer on another host, with the same checks and
/// limits as frames from this host (references into shared memory are
/// rejected: such a peer has none).
caf::expected<frame_ptr> from_bytes(const std::vector<char>& bytes, copy_counters& counters);

/// Answers request `id` on `conn` with `err` (its modelreg code and text).
void respond_error(const connection_ptr& conn, uint64_t id, const caf::error& err);

/// Answers request `id` with `outputs` (by reference when they live in this
/// connection's shared memory, else copied there once); if they cannot be
/// sent (a quota), answers with that error instead.
void respond_outputs(const connection_ptr& conn, uint64_t id, const tensor_map& outputs);

} // namespace modelreg::transport

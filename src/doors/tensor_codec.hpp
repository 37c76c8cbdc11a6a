// Tensors in the Open Inference Protocol's forms: JSON `data` arrays, the
// binary tensor data extension (raw little-endian bytes after the JSON), and
// the gRPC contents and raw bytes. Every input is checked (datatype, shape,
// element count, value range) and refused with `invalid_argument` naming
// the tensor.
//
// Text: a modelreg tensor the backend declares text (u8 bytes of one UTF-8
// string) is BYTES of shape [1] in the protocol; a BYTES input of one
// element becomes such a u8 tensor.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <caf/expected.hpp>
#include <nlohmann/json_fwd.hpp>

#include "modelreg/actors/oip.hpp"
#include "modelreg/tensor/tensor.hpp"

namespace modelreg::doors {

/// Says whether the tensor called `name` is text.
using text_test = std::function<bool(const std::string& name)>;

struct requested_output {
  std::string name;
  bool binary = false;
};

/// A decoded inference request.
struct infer_call {
  std::string id;
  tensor_map inputs;
  std::vector<requested_output> outputs; ///< empty: every output
  bool binary_outputs = false;           ///< parameters.binary_data_output
};

/// The JSON request `header`, with `binary` the bytes after it (the binary
/// extension; empty if none).
caf::expected<infer_call> decode_infer_request(std::string_view header, std::string_view binary);

struct encoded_response {
  std::string body;
  size_t json_length = 0; ///< == body.size() unless binary outputs follow
};

caf::expected<encoded_response> encode_infer_response(const std::string& model,
                                                      const infer_call& call,
                                                      const tensor_map& outputs,
                                                      const text_test& is_text);

nlohmann::json metadata_json(const oip::model_meta& meta);

/// Elements of `shape`, checked (no negative dimension, no overflow, at
/// most 2^31 elements).
caf::expected<size_t> element_count(const std::string& name, const std::vector<int64_t>& shape);

/// A tensor from raw little-endian bytes (copied): `bytes` must hold
/// exactly the shape's elements. BYTES: 4-byte little-endian length, then
/// the string, per element; one element only.
caf::expected<tensor> tensor_from_raw(const std::string& name, const std::string& datatype,
                                      const std::vector<int64_t>& shape, std::string_view bytes);

/// The protocol datatype and shape a tensor goes out as.
std::pair<std::string, std::vector<int64_t>> wire_form(const tensor& t, bool text);

/// The raw bytes of an output (BYTES: length-prefixed string for text).
std::string raw_of(const tensor& t, bool text);

} // namespace modelreg::doors

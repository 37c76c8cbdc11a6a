// Minimal Open Inference Protocol clients for `modelreg bench serve
// --protocol http|grpc`: one connection each, one call at a time, f32
// tensors in the binary form (HTTP's binary extension, gRPC's raw contents).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>

namespace modelreg::doors {

class oip_client {
public:
  virtual ~oip_client() = default;
  /// Runs `model` on one f32 input; answers the first output's raw bytes.
  virtual caf::expected<std::string> infer_f32(const std::string& model, const std::string& input,
                                               const std::vector<float>& values) = 0;
};

/// `protocol` "http" or "grpc"; `address` HOST:PORT.
caf::expected<std::unique_ptr<oip_client>> make_oip_client(const std::string& protocol,
                                                           const std::string& address);

} // namespace modelreg::doors

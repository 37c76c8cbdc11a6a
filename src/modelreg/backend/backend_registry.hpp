// Backends by name: how a model spec ({backend, params}) becomes a model.
//
// Build a registry once (with_builtins() plus your own `add`s), then share it
// as `std::shared_ptr<const backend_registry>`: after construction it is only
// read, so it may be used from any thread.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "modelreg/backend/model.hpp"
#include "modelreg/messages/model_spec.hpp"

namespace modelreg {

/// Builds a model from a spec's parameters. Runs on a loader thread.
using backend_factory = std::function<caf::expected<model_ptr>(const model_spec&)>;

class backend_registry {
public:
  /// A registry holding the built-in backends (see builtin.hpp).
  static std::shared_ptr<backend_registry> with_builtins();

  /// Registers `factory` under `name`, replacing an earlier one.
  void add(std::string name, backend_factory factory);

  bool contains(const std::string& name) const;
  std::vector<std::string> names() const;

  /// A loader that builds `spec` when called; `backend_not_found` if no
  /// backend has that name.
  caf::expected<loader_fn> loader_for(const model_spec& spec) const;

private:
  std::map<std::string, backend_factory> factories_;
};

/// Reads a parameter of `spec`, or `fallback` if absent; `invalid_argument`
/// if present but not a number.
caf::expected<double> param_double(const model_spec& spec, const std::string& name,
                                   double fallback);
caf::expected<uint64_t> param_u64(const model_spec& spec, const std::string& name,
                                  uint64_t fallback);
caf::expected<bool> param_bool(const model_spec& spec, const std::string& name, bool fallback);
std::string param_string(const model_spec& spec, const std::string& name,
                         const std::string& fallback);

} // namespace modelreg

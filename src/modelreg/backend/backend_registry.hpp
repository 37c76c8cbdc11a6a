// Backends by name: how a model spec ({backend, params}) becomes a model.
//
// Build a registry once (with_builtins() plus your own `add`s), then share it
// as `std::shared_ptr<const backend_registry>`: after construction it is only
// read, so it may be used from any thread.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "modelreg/backend/model.hpp"
#include "modelreg/messages/model_spec.hpp"

namespace modelreg {

/// Builds a model from a spec's parameters. Runs on a loader thread.
using backend_factory = std::function<caf::expected<model_ptr>(const model_spec&)>;

/// One parameter a backend reads from its spec.
struct param_info {
  enum class kind { number, count, boolean, text };
  std::string name;
  kind type = kind::text;
  std::string fallback; ///< its value when absent, as text
  std::string doc;
};

/// One input or output tensor of a backend's models.
struct tensor_info {
  std::string name;  ///< "*": any name (every input comes back, say)
  std::string dtype; ///< "f32", "i16", ...; alternatives "i32|i64"; "*": any
  /// Dimensions, -1 for any size; nothing: any shape.
  std::optional<std::vector<int64_t>> shape;
  std::string doc;
  bool optional = false;
  /// A u8 tensor holding one UTF-8 string: protocols with a string type
  /// (the Open Inference Protocol's BYTES) show it as one string.
  bool text = false;
};

/// What a backend declares about itself: `serve` checks catalog entries
/// against the parameters, and `modelreg describe` shows all of it.
struct backend_info {
  std::string doc;
  std::vector<param_info> params;
  std::vector<tensor_info> inputs;
  std::vector<tensor_info> outputs;
  /// Parameters are not declared: any are accepted (a backend added
  /// without an info).
  bool open = false;
  /// A loaded model may be copied by fork(): its instances are forked from
  /// one loaded copy by a zygote process (docs/instances.md). The backend
  /// must then be built into modelreg-zygote (the built-in ones are).
  bool forkable = false;
};

/// The most instances one model may have.
constexpr uint32_t max_instances = 64;
/// The most copies of one model a cluster may keep (catalog `max_copies`).
constexpr uint32_t max_copies = 64;

std::string to_string(param_info::kind k);

class backend_registry {
public:
  /// A registry holding the built-in backends (see builtin.hpp).
  static std::shared_ptr<backend_registry> with_builtins();

  /// Registers `factory` under `name`, replacing an earlier one. Without
  /// `info`, its parameters are not checked before a load.
  void add(std::string name, backend_factory factory);
  void add(std::string name, backend_factory factory, backend_info info);

  bool contains(const std::string& name) const;
  std::vector<std::string> names() const;

  /// What backend `name` declares, or null if there is no such backend.
  const backend_info* info(const std::string& name) const;

  /// Whether `spec` can be loaded as far as can be told without loading
  /// it: the backend exists, every parameter is one it declares (a
  /// misspelt one names the nearest), every value has the declared type.
  /// `backend_not_found` or `invalid_argument`, naming the parameter.
  caf::error check(const model_spec& spec) const;

  /// A loader that builds `spec` when called; `backend_not_found` if no
  /// backend has that name.
  caf::expected<loader_fn> loader_for(const model_spec& spec) const;

private:
  std::map<std::string, backend_factory> factories_;
  std::map<std::string, backend_info> infos_;
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

/// Resident bytes of this process (/proc/self/statm), for backends that
/// measure what a load adds.
uint64_t process_resident_bytes();

} // namespace modelreg

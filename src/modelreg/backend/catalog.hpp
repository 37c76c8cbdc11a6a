// The model catalog: names a node's operators give to model specs, so remote
// callers ask for "asr-en-us" instead of sending a backend and its parameters.
//
// The file format is JSON (see docs/serve.md):
//
//   { "models": {
//       "echo":  { "backend": "identity" },
//       "half":  { "backend": "gain", "params": { "gain": 0.5 } } } }
//
// Parameter values may be strings, numbers or booleans; they reach the backend
// as strings. A catalog is immutable once parsed: share it as
// `std::shared_ptr<const catalog>` between threads.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "modelreg/messages/model_spec.hpp"

namespace modelreg {

class backend_registry;

class catalog {
public:
  /// Parses catalog JSON; `invalid_argument` naming the offending entry.
  static caf::expected<catalog> parse(const std::string& json);

  /// Reads and parses the file at `path`.
  static caf::expected<catalog> load_file(const std::string& path);

  /// Adds (or replaces) an entry.
  void add(std::string name, model_spec spec);

  /// The spec named `name`, or null.
  const model_spec* find(const std::string& name) const;

  std::vector<std::string> names() const;
  size_t size() const noexcept { return entries_.size(); }

  /// Every entry checked against what `backends` declare, without loading
  /// anything: the backend exists, each parameter is one it has (a misspelt
  /// one names the nearest), each value has its type. One line per
  /// problem, "FILE:LINE:COLUMN: catalog entry 'x': ..."; empty if none.
  std::vector<std::string> check(const backend_registry& backends) const;

  /// Each entry with its backend's declaration, as JSON: {"NAME": {"backend",
  /// "params" (as given), "doc", "parameters": [{"name", "type", "default",
  /// "doc"}], "inputs"/"outputs": [{"name", "dtype", "shape" (null: any),
  /// "doc", "optional"}]}}. What `modelreg describe` shows.
  std::string describe_json(const backend_registry& backends) const;

private:
  std::map<std::string, model_spec> entries_;
  std::string source_ = "catalog"; ///< the file, for positions
  std::string text_;               ///< the JSON it was parsed from
  /// "FILE:LINE:COLUMN" of `entry` (and of its parameter `param`).
  std::string where(const std::string& entry, const std::string& param = {}) const;
};

} // namespace modelreg

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

private:
  std::map<std::string, model_spec> entries_;
};

} // namespace modelreg

// A model spec: how to build a model without sending code. A remote caller
// (or a catalog entry) names a backend and its parameters; the registry looks
// the backend up by name and runs its factory.
#pragma once

#include <map>
#include <string>

#include <caf/meta/type_name.hpp>

namespace modelreg {

/// Backend name plus string parameters, e.g. {"gain", {{"gain", "0.5"}}}.
struct model_spec {
  std::string backend;
  std::map<std::string, std::string> params;

  friend bool operator==(const model_spec&, const model_spec&) = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, model_spec& x) {
  return f(caf::meta::type_name("modelreg::model_spec"), x.backend, x.params);
}

} // namespace modelreg

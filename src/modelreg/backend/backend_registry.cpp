#include "modelreg/backend/backend_registry.hpp"

#include <charconv>

#include "modelreg/backend/builtin.hpp"
#include "modelreg/backend/pocketsphinx.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg {

std::shared_ptr<backend_registry> backend_registry::with_builtins() {
  auto result = std::make_shared<backend_registry>();
  add_builtin_backends(*result);
  add_pocketsphinx_backend(*result);
  return result;
}

void backend_registry::add(std::string name, backend_factory factory) {
  factories_[std::move(name)] = std::move(factory);
}

bool backend_registry::contains(const std::string& name) const {
  return factories_.count(name) > 0;
}

std::vector<std::string> backend_registry::names() const {
  std::vector<std::string> result;
  for (const auto& kvp : factories_)
    result.push_back(kvp.first);
  return result;
}

caf::expected<loader_fn> backend_registry::loader_for(const model_spec& spec) const {
  auto i = factories_.find(spec.backend);
  if (i == factories_.end())
    return make_error(errc::backend_not_found, "no backend named '" + spec.backend + "'");
  auto factory = i->second;
  return loader_fn{[factory, spec]() { return factory(spec); }};
}

caf::expected<double> param_double(const model_spec& spec, const std::string& name,
                                   double fallback) {
  auto i = spec.params.find(name);
  if (i == spec.params.end())
    return fallback;
  try {
    size_t used = 0;
    auto v = std::stod(i->second, &used);
    if (used == i->second.size())
      return v;
  } catch (const std::exception&) {
  }
  return make_error(errc::invalid_argument,
                    "parameter " + name + "='" + i->second + "' is not a number");
}

caf::expected<uint64_t> param_u64(const model_spec& spec, const std::string& name,
                                  uint64_t fallback) {
  auto i = spec.params.find(name);
  if (i == spec.params.end())
    return fallback;
  uint64_t v = 0;
  const auto& s = i->second;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || end != s.data() + s.size())
    return make_error(errc::invalid_argument,
                      "parameter " + name + "='" + s + "' is not an unsigned integer");
  return v;
}

caf::expected<bool> param_bool(const model_spec& spec, const std::string& name, bool fallback) {
  auto i = spec.params.find(name);
  if (i == spec.params.end())
    return fallback;
  if (i->second == "true" || i->second == "1")
    return true;
  if (i->second == "false" || i->second == "0")
    return false;
  return make_error(errc::invalid_argument,
                    "parameter " + name + "='" + i->second + "' is not true/false");
}

std::string param_string(const model_spec& spec, const std::string& name,
                         const std::string& fallback) {
  auto i = spec.params.find(name);
  return i == spec.params.end() ? fallback : i->second;
}

} // namespace modelreg

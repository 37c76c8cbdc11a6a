#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/backend/instances.hpp"

#include <algorithm>
#include <charconv>
#include <fstream>

#include <unistd.h>

#include "modelreg/backend/builtin.hpp"
#include "modelreg/backend/flite.hpp"
#include "modelreg/backend/pocketsphinx.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/nearest.hpp"

namespace modelreg {

std::shared_ptr<backend_registry> backend_registry::with_builtins() {
  auto result = std::make_shared<backend_registry>();
  add_builtin_backends(*result);
  add_pocketsphinx_backend(*result);
  add_flite_backend(*result);
  return result;
}

void backend_registry::add(std::string name, backend_factory factory) {
  backend_info open;
  open.open = true;
  add(std::move(name), std::move(factory), std::move(open));
}

void backend_registry::add(std::string name, backend_factory factory, backend_info info) {
  infos_[name] = std::move(info);
  factories_[std::move(name)] = std::move(factory);
}

const backend_info* backend_registry::info(const std::string& name) const {
  auto i = infos_.find(name);
  return i == infos_.end() ? nullptr : &i->second;
}

std::string to_string(param_info::kind k) {
  switch (k) {
    case param_info::kind::number:
      return "number";
    case param_info::kind::count:
      return "count";
    case param_info::kind::boolean:
      return "boolean";
    default:
      return "text";
  }
}


caf::error backend_registry::check(const model_spec& spec) const {
  auto i = infos_.find(spec.backend);
  if (i == infos_.end()) {
    std::string known;
    for (const auto& [name, f] : factories_)
      known += (known.empty() ? "" : ", ") + name;
    return make_error(errc::backend_not_found,
                      "no backend named '" + spec.backend + "' (this node has: " + known + ")");
  }
  const auto& info = i->second;
  if (spec.initial_instances() > max_instances || spec.max_instances > max_instances)
    return make_error(errc::invalid_argument, "instances: at most " +
                                                std::to_string(max_instances) + " per model");
  if (spec.max_instances != 0 && spec.max_instances < spec.initial_instances())
    return make_error(errc::invalid_argument,
                      "max_instances (" + std::to_string(spec.max_instances) +
                        ") is below instances (" + std::to_string(spec.instances) + ")");
  if (info.open)
    return {};
  for (const auto& kv : spec.params) {
    const auto& name = kv.first; // (clang 14 cannot capture a structured binding)
    auto p = std::find_if(info.params.begin(), info.params.end(),
                          [&](const param_info& x) { return x.name == name; });
    if (p == info.params.end()) {
      std::string known;
      std::vector<std::string> names;
      for (const auto& x : info.params) {
        known += (known.empty() ? "" : ", ") + x.name;
        names.push_back(x.name);
      }
      auto near = nearest_name(name, names);
      auto hint = near.empty() ? std::string{} : " (did you mean '" + near + "'?)";
      return make_error(errc::invalid_argument, "backend '" + spec.backend +
                                                  "' has no parameter '" + name + "'" + hint +
                                                  "; it has: " + (known.empty() ? "none" : known));
    }
    caf::error bad;
    switch (p->type) {
      case param_info::kind::number:
        if (auto v = param_double(spec, name, 0); !v)
          bad = v.error();
        break;
      case param_info::kind::count:
        if (auto v = param_u64(spec, name, 0); !v)
          bad = v.error();
        break;
      case param_info::kind::boolean:
        if (auto v = param_bool(spec, name, false); !v)
          bad = v.error();
        break;
      default:
        break;
    }
    if (bad)
      return bad;
  }
  return {};
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
  if (auto err = check(spec))
    return err;
  auto factory = factories_.at(spec.backend);
  if (spec.instance_limit() > 1) {
    auto info = infos_.at(spec.backend);
    return loader_fn{[factory, info, spec]() { return load_instances(factory, info, spec); }};
  }
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

uint64_t process_resident_bytes() {
  std::ifstream statm{"/proc/self/statm"};
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
}

} // namespace modelreg

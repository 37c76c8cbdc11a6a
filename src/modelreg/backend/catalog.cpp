#include "modelreg/backend/catalog.hpp"

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "modelreg/messages/error.hpp"

namespace modelreg {

caf::expected<catalog> catalog::parse(const std::string& text) {
  auto doc = nlohmann::json::parse(text, nullptr, false);
  if (doc.is_discarded())
    return make_error(errc::invalid_argument, "catalog: not valid JSON");
  if (!doc.is_object() || !doc.contains("models") || !doc["models"].is_object())
    return make_error(errc::invalid_argument, "catalog: expected an object with a \"models\" object");
  catalog out;
  for (auto& [name, entry] : doc["models"].items()) {
    auto where = "catalog entry '" + name + "': ";
    if (name.empty())
      return make_error(errc::invalid_argument, "catalog: an entry has an empty name");
    if (!entry.is_object() || !entry.contains("backend") || !entry["backend"].is_string())
      return make_error(errc::invalid_argument, where + "needs a \"backend\" string");
    model_spec spec;
    spec.backend = entry["backend"].get<std::string>();
    if (spec.backend.empty())
      return make_error(errc::invalid_argument, where + "\"backend\" is empty");
    if (entry.contains("params")) {
      if (!entry["params"].is_object())
        return make_error(errc::invalid_argument, where + "\"params\" must be an object");
      for (auto& [key, value] : entry["params"].items()) {
        if (value.is_string())
          spec.params[key] = value.get<std::string>();
        else if (value.is_boolean())
          spec.params[key] = value.get<bool>() ? "true" : "false";
        else if (value.is_number())
          spec.params[key] = value.dump();
        else
          return make_error(errc::invalid_argument,
                            where + "parameter '" + key + "' must be a string, number or boolean");
      }
    }
    for (auto& [key, value] : entry.items())
      if (key != "backend" && key != "params")
        return make_error(errc::invalid_argument, where + "unknown field '" + key + "'");
    out.add(name, std::move(spec));
  }
  return out;
}

caf::expected<catalog> catalog::load_file(const std::string& path) {
  std::ifstream in{path};
  if (!in)
    return make_error(errc::invalid_argument, "catalog: cannot read '" + path + "'");
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = parse(text.str());
  if (!parsed)
    return make_error(errc::invalid_argument, path + ": " + describe(parsed.error()));
  return parsed;
}

void catalog::add(std::string name, model_spec spec) {
  entries_[std::move(name)] = std::move(spec);
}

const model_spec* catalog::find(const std::string& name) const {
  auto i = entries_.find(name);
  return i == entries_.end() ? nullptr : &i->second;
}

std::vector<std::string> catalog::names() const {
  std::vector<std::string> out;
  for (auto& [name, spec] : entries_)
    out.push_back(name);
  return out;
}

} // namespace modelreg

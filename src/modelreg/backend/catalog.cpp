#include "modelreg/backend/catalog.hpp"

#include <fstream>
#include <set>
#include <string_view>
#include <sstream>

#include <nlohmann/json.hpp>

#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

/// "LINE:COLUMN" (from 1) of byte `offset` in `text`.
std::string line_col(const std::string& text, size_t offset) {
  size_t line = 1, col = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      col = 1;
    } else {
      ++col;
    }
  }
  return std::to_string(line) + ":" + std::to_string(col);
}

/// Where the key `"name"` (followed by a colon) is in `text` from `from`.
size_t find_key(const std::string& text, const std::string& name, size_t from) {
  auto quoted = "\"" + name + "\"";
  for (auto at = text.find(quoted, from); at != std::string::npos;
       at = text.find(quoted, at + 1)) {
    auto after = text.find_first_not_of(" \t\r\n", at + quoted.size());
    if (after != std::string::npos && text[after] == ':')
      return at;
  }
  return std::string::npos;
}

} // namespace

std::string catalog::where(const std::string& entry, const std::string& param) const {
  auto models = find_key(text_, "models", 0);
  auto at = find_key(text_, entry, models == std::string::npos ? 0 : models);
  if (at != std::string::npos && !param.empty()) {
    auto p = find_key(text_, param, at);
    if (p != std::string::npos)
      at = p;
  }
  return source_ + (at == std::string::npos ? "" : ":" + line_col(text_, at));
}

std::vector<std::string> catalog::check(const backend_registry& backends) const {
  std::vector<std::string> problems;
  for (const auto& [name, spec] : entries_) {
    auto err = backends.check(spec);
    if (!err)
      continue;
    // The parameter it names, if any, for the position.
    auto text = describe(err);
    std::string param;
    for (const auto& [key, value] : spec.params)
      if (text.find("'" + key + "'") != std::string::npos ||
          text.find(" " + key + "=") != std::string::npos)
        param = key;
    problems.push_back(where(name, param) + ": catalog entry '" + name + "': " + text);
  }
  return problems;
}

std::string catalog::describe_json(const backend_registry& backends) const {
  auto tensors = [](const std::vector<tensor_info>& xs) {
    auto out = nlohmann::json::array();
    for (const auto& t : xs)
      out.push_back({{"name", t.name},
                     {"dtype", t.dtype},
                     {"shape", t.shape ? nlohmann::json(*t.shape) : nlohmann::json(nullptr)},
                     {"doc", t.doc},
                     {"optional", t.optional}});
    return out;
  };
  auto out = nlohmann::json::object();
  for (const auto& [name, spec] : entries_) {
    nlohmann::json e = {{"backend", spec.backend},
                        {"params", spec.params},
                        {"instances", spec.initial_instances()},
                        {"max_instances", spec.instance_limit()},
                        {"expected_bytes", spec.expected_bytes},
                        {"min_copies", spec.min_copies},
                        {"max_copies", spec.copy_limit()}};
    if (const auto* info = backends.info(spec.backend)) {
      e["doc"] = info->doc;
      auto params = nlohmann::json::array();
      for (const auto& p : info->params)
        params.push_back(
          {{"name", p.name}, {"type", to_string(p.type)}, {"default", p.fallback}, {"doc", p.doc}});
      e["parameters"] = params;
      e["inputs"] = tensors(info->inputs);
      e["outputs"] = tensors(info->outputs);
    }
    out[name] = e;
  }
  return out.dump();
}

caf::expected<catalog> catalog::parse(const std::string& text) {
  nlohmann::json doc;
  try {
    doc = nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() is "[json.exception.parse_error.101] parse error at line 3,
    // column 5: syntax error ...": keep what follows the tag.
    std::string what = e.what();
    auto tag = what.find("] ");
    return make_error(errc::invalid_argument,
                      "catalog: not valid JSON: " +
                        (tag == std::string::npos ? what : what.substr(tag + 2)));
  }
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
    for (const char* field : {"instances", "max_instances"}) {
      if (!entry.contains(field))
        continue;
      const auto& v = entry[field];
      if (!v.is_number_unsigned() || v.get<uint64_t>() < 1 || v.get<uint64_t>() > max_instances)
        return make_error(errc::invalid_argument, where + "\"" + field +
                                                    "\" must be a whole number from 1 to " +
                                                    std::to_string(max_instances));
      (std::string_view{field} == "instances" ? spec.instances : spec.max_instances) =
        v.get<uint32_t>();
    }
    // Cluster placement (docs/cluster.md).
    if (entry.contains("expected_bytes")) {
      const auto& v = entry["expected_bytes"];
      if (!v.is_number_unsigned())
        return make_error(errc::invalid_argument,
                          where + "\"expected_bytes\" must be a whole number of bytes");
      spec.expected_bytes = v.get<uint64_t>();
    }
    for (const char* field : {"min_copies", "max_copies"}) {
      if (!entry.contains(field))
        continue;
      const auto& v = entry[field];
      if (!v.is_number_unsigned() || v.get<uint64_t>() > max_copies)
        return make_error(errc::invalid_argument, where + "\"" + field +
                                                    "\" must be a whole number from 0 to " +
                                                    std::to_string(max_copies));
      (std::string_view{field} == "min_copies" ? spec.min_copies : spec.max_copies) =
        v.get<uint32_t>();
    }
    if (spec.max_copies != 0 && spec.min_copies > spec.max_copies)
      return make_error(errc::invalid_argument,
                        where + "\"min_copies\" (" + std::to_string(spec.min_copies) +
                          ") is more than \"max_copies\" (" + std::to_string(spec.max_copies) +
                          ")");
    static const std::set<std::string> fields = {"backend",        "params",     "instances",
                                                  "max_instances", "expected_bytes",
                                                  "min_copies",     "max_copies"};
    for (auto& [key, value] : entry.items())
      if (fields.count(key) == 0)
        return make_error(errc::invalid_argument,
                          where + "unknown field '" + key +
                            "' (an entry has backend, params, instances, max_instances, "
                            "expected_bytes, min_copies, max_copies)");
    out.add(name, std::move(spec));
  }
  out.text_ = text;
  return out;
}

caf::expected<catalog> catalog::load_file(const std::string& path) {
  std::ifstream in{path};
  if (!in)
    return make_error(errc::invalid_argument,
                      "catalog: cannot read '" + path + "': " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = parse(text.str());
  if (!parsed)
    return make_error(errc::invalid_argument, path + ": " + describe(parsed.error()));
  parsed->source_ = path;
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

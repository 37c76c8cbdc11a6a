#include "modelreg/log.hpp"

#include <atomic>
#include <cstdlib>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace modelreg::log {

namespace {

std::atomic<int> current_level{static_cast<int>(spdlog::level::warn)};

} // namespace

std::shared_ptr<spdlog::logger> get(const std::string& name) {
  if (auto existing = spdlog::get(name))
    return existing;
  try {
    auto created = spdlog::stderr_color_mt(name);
    created->set_level(static_cast<spdlog::level::level_enum>(current_level.load()));
    created->set_pattern("%Y-%m-%dT%H:%M:%S.%e [%n] %^%l%$ %v");
    return created;
  } catch (const spdlog::spdlog_ex&) {
    return spdlog::get(name); // another thread created it first
  }
}

bool set_level(std::string_view level) {
  auto parsed = spdlog::level::from_str(std::string{level});
  // from_str maps unknown names to "off"; accept "off" only when asked for.
  if (parsed == spdlog::level::off && level != "off")
    return false;
  current_level = static_cast<int>(parsed);
  spdlog::apply_all([parsed](const std::shared_ptr<spdlog::logger>& l) {
    if (l->name().rfind("modelreg", 0) == 0)
      l->set_level(parsed);
  });
  return true;
}

bool init(std::optional<std::string> cli_level) {
  if (cli_level)
    return set_level(*cli_level);
  if (const char* env = std::getenv("MODELREG_LOG"); env != nullptr && *env != '\0')
    return set_level(env);
  return set_level("warn");
}

} // namespace modelreg::log

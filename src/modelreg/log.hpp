// Named spdlog loggers ("modelreg.registry", "modelreg.model", ...) writing
// to stderr. The level comes from a CLI flag, else MODELREG_LOG, else "warn".
// Thread-safe (spdlog's registry is).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <spdlog/logger.h>

namespace modelreg::log {

/// The logger named `name` (created on first use, at the current level).
std::shared_ptr<spdlog::logger> get(const std::string& name);

/// Sets the level of every modelreg logger: trace, debug, info, warn, error,
/// critical, off. Returns false (and changes nothing) for an unknown name.
bool set_level(std::string_view level);

/// Applies `cli_level` if given, else $MODELREG_LOG if set, else "warn".
/// Returns false if the chosen level name is unknown.
bool init(std::optional<std::string> cli_level = std::nullopt);

} // namespace modelreg::log

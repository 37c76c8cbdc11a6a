// Command-line values as operators write them, parsed strictly, and the
// CLI11 glue every `modelreg` command shares.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

namespace modelreg::cli {

/// Bytes: "2G", "512M", "1.5GiB", "64KB", "4096" (binary units: K = 1024).
/// Nothing unless the whole text is exactly that.
std::optional<uint64_t> parse_size(std::string_view text);

/// A duration: "1.5" (seconds), "500ms", "30s", "5m", "1h", "250us".
/// Nothing unless the whole text is exactly that and not negative.
std::optional<std::chrono::nanoseconds> parse_duration(std::string_view text);

/// "567 ms", "1.2 s", "85 us": a duration in the unit that reads best.
std::string human_duration(std::chrono::nanoseconds d);

/// "1.5 MiB".
std::string human_bytes(uint64_t bytes);


// -- options with a strict value ------------------------------------------
// Each throws CLI::ValidationError naming the option and the value.

CLI::Option* add_size(CLI::App* app, const std::string& name, uint64_t& target,
                      const std::string& description, uint64_t min = 0,
                      uint64_t max = UINT64_MAX);

template <class Duration>
CLI::Option* add_duration(CLI::App* app, const std::string& name, Duration& target,
                          const std::string& description,
                          std::chrono::nanoseconds max = std::chrono::hours{24 * 365},
                          std::chrono::nanoseconds min = std::chrono::nanoseconds{0}) {
  return app
    ->add_option_function<std::string>(
      name,
      [name, &target, max, min](const std::string& v) {
        auto d = parse_duration(v);
        if (!d)
          throw CLI::ValidationError(name, "takes a duration such as 1.5, 500ms, 30s or 5m, not '" +
                                             v + "'");
        if (*d > max)
          throw CLI::ValidationError(
            name, "must be at most " +
                    (max % std::chrono::seconds{1} == std::chrono::nanoseconds{0}
                       ? std::to_string(std::chrono::duration_cast<std::chrono::seconds>(max).count()) + "s"
                       : std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(max).count()) + "ms") +
                    ", not '" + v + "'");
        if (*d < min)
          throw CLI::ValidationError(
            name, "must be at least " +
                    std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(min).count()) +
                    "ms, not '" + v + "'");
        target = std::chrono::duration_cast<Duration>(*d);
      },
      description)
    ->type_name("DURATION");
}

CLI::Option* add_count(CLI::App* app, const std::string& name, size_t& target,
                       const std::string& description, size_t min = 0, size_t max = SIZE_MAX);

/// Applies the exit code conventions: 0 success, 1 the command failed,
/// 2 usage error, 3 no node reachable.
inline constexpr int exit_ok = 0;
inline constexpr int exit_failed = 1;
inline constexpr int exit_usage = 2;
inline constexpr int exit_unreachable = 3;

/// Prints "modelreg: WHAT" and where to find the usage; returns exit_usage.
int usage_error(const std::string& what);

/// A leaf command: its CLI11 app and what runs it once parsed.
struct command {
  CLI::App* app;
  std::function<int()> run;
};

} // namespace modelreg::cli

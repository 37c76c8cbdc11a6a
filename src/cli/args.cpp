#include "cli/args.hpp"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace modelreg::cli {

namespace {

/// A non-negative decimal number at the start of `text` ("1.5", "30");
/// the rest (the unit) in `unit`.
std::optional<double> leading_number(std::string_view text, std::string& unit) {
  size_t i = 0;
  bool digits = false, dot = false;
  for (; i < text.size(); ++i) {
    char c = text[i];
    if (c >= '0' && c <= '9')
      digits = true;
    else if (c == '.' && !dot)
      dot = true;
    else
      break;
  }
  if (!digits)
    return std::nullopt;
  std::string number{text.substr(0, i)};
  unit = std::string{text.substr(i)};
  return std::strtod(number.c_str(), nullptr);
}

} // namespace

std::optional<uint64_t> parse_size(std::string_view text) {
  std::string unit;
  auto value = leading_number(text, unit);
  if (!value)
    return std::nullopt;
  for (auto& c : unit)
    c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  static const std::pair<const char*, double> units[] = {
    {"", 1}, {"B", 1}, {"K", 1024.0}, {"M", 1024.0 * 1024}, {"G", 1024.0 * 1024 * 1024},
    {"T", 1024.0 * 1024 * 1024 * 1024}};
  for (const auto& [name, scale] : units) {
    std::string n{name};
    bool match = unit == n || (n.size() == 1 && n != "B" && (unit == n + "IB" || unit == n + "B"));
    if (!match)
      continue;
    auto bytes = *value * scale;
    if (bytes >= 18446744073709551615.0 || (scale == 1 && *value != std::floor(*value)))
      return std::nullopt; // too large, or a fraction of a byte
    return static_cast<uint64_t>(std::llround(bytes));
  }
  return std::nullopt;
}

std::optional<std::chrono::nanoseconds> parse_duration(std::string_view text) {
  std::string unit;
  auto value = leading_number(text, unit);
  if (!value)
    return std::nullopt;
  static const std::pair<const char*, double> units[] = {
    {"", 1e9}, {"s", 1e9}, {"ms", 1e6}, {"us", 1e3}, {"m", 60e9}, {"min", 60e9}, {"h", 3600e9}};
  for (const auto& [name, ns] : units)
    if (unit == name) {
      auto total = *value * ns;
      if (total > 9.2e18)
        return std::nullopt;
      return std::chrono::nanoseconds{static_cast<int64_t>(std::llround(total))};
    }
  return std::nullopt;
}

std::string human_duration(std::chrono::nanoseconds d) {
  auto ns = static_cast<double>(d.count());
  char buf[32];
  if (ns < 1e3)
    std::snprintf(buf, sizeof(buf), "%.0f ns", ns);
  else if (ns < 1e6)
    std::snprintf(buf, sizeof(buf), "%.0f us", ns / 1e3);
  else if (ns < 1e9)
    std::snprintf(buf, sizeof(buf), "%.0f ms", ns / 1e6);
  else if (ns < 60e9)
    std::snprintf(buf, sizeof(buf), "%.1f s", ns / 1e9);
  else
    std::snprintf(buf, sizeof(buf), "%.1f min", ns / 60e9);
  return buf;
}

std::string human_bytes(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(b);
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

CLI::Option* add_size(CLI::App* app, const std::string& name, uint64_t& target,
                      const std::string& description, uint64_t min, uint64_t max) {
  return app
    ->add_option_function<std::string>(
      name,
      [name, &target, min, max](const std::string& v) {
        auto b = parse_size(v);
        if (!b)
          throw CLI::ValidationError(name, "takes a size such as 2G, 512M, 1.5GiB or bytes, not '" +
                                             v + "'");
        if (*b < min || *b > max)
          throw CLI::ValidationError(name, "takes a size from " + human_bytes(min) + " to " +
                                             human_bytes(max) + ", not '" + v + "'");
        target = *b;
      },
      description)
    ->type_name("SIZE");
}

CLI::Option* add_count(CLI::App* app, const std::string& name, size_t& target,
                       const std::string& description, size_t min, size_t max) {
  return app
    ->add_option_function<std::string>(
      name,
      [name, &target, min, max](const std::string& v) {
        char* end = nullptr;
        errno = 0;
        auto n = std::strtoull(v.c_str(), &end, 10);
        if (v.empty() || *end != '\0' || v.front() == '-' || errno != 0 || n < min || n > max)
          throw CLI::ValidationError(name, "takes a whole number from " + std::to_string(min) +
                                             (max == SIZE_MAX ? " up" : " to " + std::to_string(max)) +
                                             ", not '" + v + "'");
        target = n;
      },
      description)
    ->type_name("N");
}

int usage_error(const std::string& what) {
  std::fprintf(stderr, "modelreg: %s\n(run 'modelreg help' or 'modelreg COMMAND --help' for usage)\n",
               what.c_str());
  return exit_usage;
}

} // namespace modelreg::cli

#include "modelreg/metrics/prometheus.hpp"

#include <algorithm>
#include <cmath>
#include <charconv>

namespace modelreg::prom {

histogram::histogram(std::vector<double> bounds)
  : bounds_(std::move(bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i)
    counts_[i].store(0, std::memory_order_relaxed);
}

void histogram::observe(double value) noexcept {
  auto i = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();
  counts_[static_cast<size_t>(i)].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

histogram::reading histogram::read() const {
  reading r;
  r.cumulative.reserve(bounds_.size() + 1);
  uint64_t running = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    running += counts_[i].load(std::memory_order_relaxed);
    r.cumulative.push_back(running);
  }
  r.count = running;
  r.sum = sum_.load(std::memory_order_relaxed);
  return r;
}

std::vector<double> seconds_buckets() {
  return {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
          0.1,    0.25,    0.5,    1,     2.5,    5,     10,   30,    60};
}

std::vector<double> size_buckets() {
  std::vector<double> out;
  for (double b = 1; b <= 4096; b *= 2)
    out.push_back(b);
  return out;
}

std::string escape_label_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '"': out += "\\\""; break;
      case '\n': out += "\\n"; break;
      default: out += c;
    }
  }
  return out;
}

std::string format_value(double v) {
  if (std::isnan(v))
    return "NaN";
  if (std::isinf(v))
    return v > 0 ? "+Inf" : "-Inf";
  // The shortest text that reads back as the same double.
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  std::string out = ec == std::errc{} ? std::string(buf, end) : std::string{"NaN"};
  // 0.0001, not 1e-04: bucket bounds are matched as text in queries.
  if (out.find('e') != std::string::npos && std::fabs(v) >= 1e-9 && std::fabs(v) < 1e15) {
    auto [fend, fec] = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed);
    if (fec == std::errc{})
      out.assign(buf, fend);
  }
  return out;
}

void writer::family(std::string_view name, std::string_view type, std::string_view help) {
  out_.append("# HELP ").append(name).append(" ");
  // Help text escapes backslash and newline only.
  for (char c : help) {
    if (c == '\\')
      out_ += "\\\\";
    else if (c == '\n')
      out_ += "\\n";
    else
      out_ += c;
  }
  out_.append("\n# TYPE ").append(name).append(" ").append(type).append("\n");
}

void writer::put_labels(const labels& l, std::string_view extra_name,
                        std::string_view extra_value) {
  if (l.empty() && extra_name.empty())
    return;
  out_ += '{';
  bool first = true;
  for (const auto& [k, v] : l) {
    if (!first)
      out_ += ',';
    first = false;
    out_.append(k).append("=\"").append(escape_label_value(v)).append("\"");
  }
  if (!extra_name.empty()) {
    if (!first)
      out_ += ',';
    out_.append(extra_name).append("=\"").append(extra_value).append("\"");
  }
  out_ += '}';
}

void writer::sample(std::string_view name, const labels& l, double value) {
  out_.append(name);
  put_labels(l);
  out_.append(" ").append(format_value(value)).append("\n");
}

void writer::histogram(std::string_view name, const labels& l, const prom::histogram& h) {
  auto r = h.read();
  std::string bucket = std::string{name} + "_bucket";
  for (size_t i = 0; i < r.cumulative.size(); ++i) {
    auto le = i < h.bounds().size() ? format_value(h.bounds()[i]) : std::string{"+Inf"};
    out_.append(bucket);
    put_labels(l, "le", le);
    out_.append(" ").append(format_value(static_cast<double>(r.cumulative[i]))).append("\n");
  }
  sample(std::string{name} + "_sum", l, r.sum);
  sample(std::string{name} + "_count", l, static_cast<double>(r.count));
}

} // namespace modelreg::prom

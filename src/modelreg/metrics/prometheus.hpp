// Prometheus primitives: a counter, a histogram with fixed bucket bounds, and
// a writer for the text exposition format (version 0.0.4).
//
// Recording is lock-free (relaxed atomics) from any thread; a scrape reads
// the values while they move, so one scrape's figures are each right but
// not taken at one instant, as in every Prometheus client library.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace modelreg::prom {

/// A monotonic count.
class counter {
public:
  void add(uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

private:
  std::atomic<uint64_t> value_{0};
};

/// Observations counted into buckets with fixed upper bounds (`le`), plus
/// their count and sum.
class histogram {
public:
  /// `bounds`: strictly increasing upper bounds; +Inf is implied.
  explicit histogram(std::vector<double> bounds);

  void observe(double value) noexcept;

  struct reading {
    std::vector<uint64_t> cumulative; ///< one per bound, then +Inf
    uint64_t count = 0;
    double sum = 0;
  };
  reading read() const;
  const std::vector<double>& bounds() const noexcept { return bounds_; }

private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> counts_; ///< bounds_.size() + 1
  std::atomic<double> sum_{0};
};

/// 100 µs to 60 s, roughly 2.5x apart: loads, inferences, queueing.
std::vector<double> seconds_buckets();
/// 1, 2, 4, ... 4096: batch sizes.
std::vector<double> size_buckets();

using labels = std::vector<std::pair<std::string_view, std::string>>;

/// Writes the text exposition format. Each family's samples must be written
/// together, right after its `family` line.
class writer {
public:
  /// `# HELP` and `# TYPE` lines; type is counter, gauge or histogram.
  void family(std::string_view name, std::string_view type, std::string_view help);
  void sample(std::string_view name, const labels& l, double value);
  void sample(std::string_view name, double value) { sample(name, {}, value); }
  /// `name_bucket{...,le=...}`, `name_sum`, `name_count`.
  void histogram(std::string_view name, const labels& l, const prom::histogram& h);

  const std::string& text() const noexcept { return out_; }

private:
  void put_labels(const labels& l, std::string_view extra_name = {},
                  std::string_view extra_value = {});
  std::string out_;
};

/// A label value with backslash, double quote and newline escaped.
std::string escape_label_value(std::string_view v);

/// A number as the format writes it: integers without a fraction, +Inf, NaN.
std::string format_value(double v);

} // namespace modelreg::prom

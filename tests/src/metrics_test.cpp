#include <limits>

#include <gtest/gtest.h>

#include "modelreg/messages/error.hpp"
#include "modelreg/metrics/histogram.hpp"
#include "modelreg/metrics/node_metrics.hpp"
#include "modelreg/metrics/prometheus.hpp"

namespace modelreg {
namespace {

TEST(latency_histogram, EmptyHistogramReportsZero) {
  latency_histogram sut;
  EXPECT_EQ(sut.quantile(0.5), 0u);
}

TEST(latency_histogram, QuantilesAreWithinABucketOfTheTruth) {
  latency_histogram sut;
  for (uint64_t v = 1; v <= 10000; ++v)
    sut.record(v * 1000);
  auto p50 = static_cast<double>(sut.quantile(0.5));
  auto p99 = static_cast<double>(sut.quantile(0.99));
  EXPECT_NEAR(p50, 5e6, 5e6 * 0.13);
  EXPECT_NEAR(p99, 9.9e6, 9.9e6 * 0.13);
  EXPECT_GE(p99, p50);
  EXPECT_EQ(sut.count(), 10000u);
}

TEST(latency_histogram, SmallValuesAreExact) {
  latency_histogram sut;
  sut.record(3);
  EXPECT_EQ(sut.quantile(1.0), 3u);
}

TEST(prometheus, HistogramBucketsAreCumulativeWithCountAndSum) {
  prom::histogram h{{0.1, 1}};
  h.observe(0.05);
  h.observe(0.1); // on the bound: counted in it (le)
  h.observe(0.5);
  h.observe(7);
  prom::writer w;
  w.family("x_seconds", "histogram", "help");
  w.histogram("x_seconds", {{"model", "m"}}, h);
  EXPECT_EQ(w.text(), "# HELP x_seconds help\n# TYPE x_seconds histogram\n"
                      "x_seconds_bucket{model=\"m\",le=\"0.1\"} 2\n"
                      "x_seconds_bucket{model=\"m\",le=\"1\"} 3\n"
                      "x_seconds_bucket{model=\"m\",le=\"+Inf\"} 4\n"
                      "x_seconds_sum{model=\"m\"} 7.65\n"
                      "x_seconds_count{model=\"m\"} 4\n");
}

TEST(prometheus, LabelValuesAreEscapedAndNumbersReadBack) {
  // Model keys come from admins: quotes, backslashes and newlines stay inside
  // the label.
  EXPECT_EQ(prom::escape_label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
  EXPECT_EQ(prom::format_value(0.0001), "0.0001");
  EXPECT_EQ(prom::format_value(2.5), "2.5");
  EXPECT_EQ(prom::format_value(1e20), "1e+20");
  EXPECT_EQ(prom::format_value(std::numeric_limits<double>::infinity()), "+Inf");
}

TEST(prometheus, ModelFiguresCountErrorsByCodeAndOnlySuccessesInTheHistograms) {
  node_metrics m;
  auto gain = m.model("gain");
  gain->record(1000, 2'000'000, 0);
  gain->record(0, 5, static_cast<int>(errc::invalid_argument));
  gain->record(0, 5, -1);
  EXPECT_EQ(m.model("gain"), gain); // one per key, kept
  registry_snapshot snap;
  auto text = render_prometheus(m, snap, nullptr);
  EXPECT_NE(text.find("modelreg_inference_requests_total{model=\"gain\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("modelreg_inference_errors_total{model=\"gain\",code=\"invalid_argument\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("modelreg_inference_errors_total{model=\"gain\",code=\"other\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("modelreg_inference_seconds_count{model=\"gain\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("modelreg_inference_seconds_bucket{model=\"gain\",le=\"0.0025\"} 1\n"),
            std::string::npos);
  EXPECT_EQ(text.find("protocol=\"shm\""), std::string::npos); // no transport given
}

} // namespace
} // namespace modelreg

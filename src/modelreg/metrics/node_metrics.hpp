// What a node counts for Prometheus (docs/serve.md, "Metrics"): per-model
// counters and histograms the registry and model actors record as they
// work, and the rendering of those, with a registry snapshot's gauges, as
// the text exposition format served at /metrics.
//
// A model's figures are kept by key for the life of the node, across
// evictions and reloads, so its counters never go back.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "modelreg/messages/status.hpp"
#include "modelreg/metrics/prometheus.hpp"

namespace modelreg {

struct model_metrics {
  prom::counter loads;
  prom::counter load_failures;
  /// Callers that joined a load in progress instead of starting one.
  prom::counter coalesced;
  prom::histogram load_seconds{prom::seconds_buckets()};
  /// Requests answered, with or without an error.
  prom::counter requests;
  /// Failed requests by error code (`errc` value; 0: an error of another
  /// category).
  std::array<prom::counter, 64> errors;
  /// Successful requests only: time in the model, time waiting for it.
  prom::histogram infer_seconds{prom::seconds_buckets()};
  prom::histogram queue_seconds{prom::seconds_buckets()};
  /// Requests per model call (1 unless dynamic batching joined several).
  prom::histogram batch_size{prom::size_buckets()};
  /// By `eviction_reason`.
  std::array<prom::counter, 5> evictions;

  /// One answered request: `queued_ns` waiting, `run_ns` in the model;
  /// `code` 0 on success, else the modelreg error code (-1: another kind).
  void record(int64_t queued_ns, int64_t run_ns, int code) noexcept;
};

/// A door for clients (HTTP, gRPC): its connections and answers.
struct door_metrics {
  std::atomic<int64_t> connections{0}; ///< HTTP only (gRPC keeps its own)
  /// Answers by status class: [2] 2xx, [4] 4xx, [5] 5xx (gRPC: OK is 2xx,
  /// client errors 4xx, the rest 5xx).
  std::array<prom::counter, 6> answers;
  /// Connections closed for breaking a limit (deadline, size, count).
  prom::counter refused;
};

class node_metrics {
public:
  /// The figures of `key`, made on first use.
  std::shared_ptr<model_metrics> model(const std::string& key);
  std::map<std::string, std::shared_ptr<model_metrics>> models() const;

  door_metrics http;
  door_metrics grpc;

private:
  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<model_metrics>> models_;
};

/// The shared-memory transport's figures, when the node has one.
struct transport_figures {
  uint64_t connections = 0;
  uint64_t zero_copy_tensors = 0;
  uint64_t copied_bytes = 0;
  uint64_t bytes_lent = 0;
  uint64_t bytes_mapped = 0;
  uint64_t rejected_frames = 0;
};

/// The whole exposition: `metrics`, the snapshot's gauges and totals, the
/// transport's figures (if given) and the process's resident memory.
std::string render_prometheus(const node_metrics& metrics, const registry_snapshot& snapshot,
                              const transport_figures* transport);

/// The content type of that text.
inline constexpr const char* prometheus_content_type = "text/plain; version=0.0.4; charset=utf-8";

} // namespace modelreg

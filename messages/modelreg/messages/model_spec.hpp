// A model spec: how to build a model without sending code. A remote caller
// (or a catalog entry) names a backend and its parameters; the registry looks
// the backend up by name and runs its factory.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>

#include <caf/meta/type_name.hpp>

namespace modelreg {

/// Backend name plus string parameters, e.g. {"gain", {{"gain", "0.5"}}},
/// and how many instances serve the model (docs/instances.md).
struct model_spec {
  std::string backend;
  std::map<std::string, std::string> params;
  /// Instances started at load, each serving one request at a time. More
  /// than 1: forked from one loaded copy when the backend is forkable
  /// (pocketsphinx), else loaded that many times. 0 counts as 1.
  uint32_t instances = 1;
  /// Instances the model may grow to when every one is busy and requests
  /// wait; 0: `instances` (no growth).
  uint32_t max_instances = 0;
  /// Cluster placement (docs/cluster.md). The bytes a load is expected to
  /// take, for placing it before it ever loaded (0: unknown; the budget
  /// decides after the load); copies kept loaded in the cluster at all
  /// times (pinned); copies it may grow to when requests queue (0: 1).
  uint64_t expected_bytes = 0;
  uint32_t min_copies = 0;
  uint32_t max_copies = 0;

  /// The instances to start and the most to grow to (both at least 1).
  uint32_t initial_instances() const { return instances == 0 ? 1 : instances; }
  uint32_t instance_limit() const {
    return max_instances > initial_instances() ? max_instances : initial_instances();
  }

  uint32_t copy_limit() const { return std::max<uint32_t>({max_copies, min_copies, 1}); }

  friend bool operator==(const model_spec&, const model_spec&) = default;
};

template <class Inspector>
typename Inspector::result_type inspect(Inspector& f, model_spec& x) {
  return f(caf::meta::type_name("modelreg::model_spec"), x.backend, x.params, x.instances,
           x.max_instances, x.expected_bytes, x.min_copies, x.max_copies);
}

} // namespace modelreg

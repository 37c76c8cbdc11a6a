// Instances: one model served by several copies at once, each taking one
// request at a time (docs/instances.md).
//
// A model spec asking for more than one instance (`instances`, or
// `max_instances` for growth on demand) loads as an `instance_set`. Its
// instances come from one of two places:
//
//  * forked (backends whose info says `forkable`, e.g. pocketsphinx): a
//    zygote process (modelreg-zygote, started with posix_spawn, never a
//    fork of the multi-threaded node) loads and warms the model once, then
//    forks one process per instance. The instances share the loaded copy's
//    pages copy-on-write; each serves the node over the shared-memory
//    transport, and dies with the zygote, which dies with the node.
//  * loaded again (any other backend): each instance is another load, as
//    Triton's instance groups do. Costs a full copy each.
//
// The model actor schedules requests over the instances (model_actor.hpp).
// Thread-safety: every member of an instance_set may be called from any
// thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/backend/model.hpp"

namespace modelreg {

/// One instance as the registry's status shows it.
struct instance_report {
  int64_t pid = 0;            ///< its process (0: in this process)
  uint64_t private_bytes = 0; ///< memory it does not share with the loaded copy
};

/// A model with several instances. As a `model` it stands for the whole
/// set (memory, description); requests go to its instances.
class instance_set : public model {
public:
  /// The instances made at load; the model actor takes them once.
  virtual std::vector<model_ptr> take_initial() = 0;

  /// One more instance (a fork, or a load): blocks until it serves.
  virtual caf::expected<model_ptr> make_instance() = 0;

  /// The most instances this set may have (at least the initial number).
  virtual size_t limit() const = 0;

  /// True if instances are processes forked from one loaded copy.
  virtual bool forked() const = 0;

  /// False if `instance` (one of this set's) can serve no more: its
  /// process died. The model actor then replaces it before using it.
  virtual bool serving(const model& instance) const {
    (void) instance;
    return true;
  }

  /// The zygote's process id (0: instances are loaded in this process).
  virtual int64_t zygote_pid() const { return 0; }

  /// The instance processes alive now, with their private memory
  /// (forked sets; empty otherwise).
  virtual std::vector<instance_report> processes() const { return {}; }

  /// Not called: the model actor sends requests to the instances.
  caf::expected<tensor_map> infer(const tensor_map&, tensor_allocator&) override;
};

using instance_set_ptr = std::shared_ptr<instance_set>;

/// Loads `spec` as an instance set with `spec.initial_instances()`
/// instances: forked by a zygote if `info.forkable`, else loaded by
/// calling `factory` once per instance.
caf::expected<model_ptr> load_instances(const backend_factory& factory, const backend_info& info,
                                        const model_spec& spec);

/// A set of one: `m` itself (a streaming model without more instances; its
/// sessions pin it like an instance).
instance_set_ptr single_instance(model_ptr m);

/// The zygote executable: $MODELREG_ZYGOTE if set, else modelreg-zygote
/// where it was installed, else where it was built.
std::string zygote_executable();

/// The zygote's main (modelreg-zygote): loads the model named by its
/// arguments, then forks instances on request. See instances.cpp.
int zygote_main(int argc, char** argv);

/// Private memory (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup)
/// and proportional set size of a process, in bytes; zeros if unreadable.
struct process_memory {
  uint64_t private_bytes = 0;
  uint64_t pss_bytes = 0;
};
process_memory memory_of_process(int64_t pid);

} // namespace modelreg

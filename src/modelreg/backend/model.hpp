// The model interface every backend implements, and the loader type callers
// pass to the registry.
//
// A model is owned by exactly one model actor. Unless `capabilities()` says
// `thread_safe`, the registry calls `infer` from one thread at a time; a model
// that is thread-safe is called concurrently from several lanes. `infer` may
// return an error or throw: either way that one caller gets an error and the
// model keeps serving.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <caf/actor.hpp>
#include <caf/expected.hpp>

#include "modelreg/messages/error.hpp"
#include "modelreg/tensor/tensor.hpp"

namespace modelreg {

/// What a model promises about itself.
struct model_capabilities {
  /// `infer` may run concurrently on several threads.
  bool thread_safe = false;
  /// `infer` blocks or computes for long (milliseconds): the model actor gets
  /// its own thread so it never stalls the shared scheduler.
  bool blocking = false;
  /// `infer` accepts a batch along dimension 0 (dynamic batching): every
  /// input's first dimension counts rows, and every output has one row per
  /// input row.
  bool batchable = false;
  /// `open_stream` works: the model takes input in chunks with partial
  /// results (sessions; docs/instances.md). A stream holds the model object
  /// until it is finished, so such a model is never shared between threads.
  bool streaming = false;
  /// `infer` takes microseconds (a copy, a scale: no I/O, no waiting, work
  /// in proportion to small inputs). With `thread_safe` (and neither
  /// `blocking`, `batchable` nor `streaming`), the node's transport thread
  /// that decoded a request runs such a model itself on inputs of at most
  /// `quick_max_input_bytes`, instead of handing it to the model actor and
  /// back: two thread hand-offs fewer.
  bool quick = false;
};

/// The most input bytes a quick model runs on a transport thread with.
inline constexpr uint64_t quick_max_input_bytes = 64 * 1024;

/// One streaming session on a model object: input arrives in chunks; each
/// push answers what the model has so far (a partial result), and finish
/// the final one. A stream holds its model object until it is finished or
/// destroyed (destroying an unfinished stream cancels it). Used from one
/// thread at a time.
class model_stream {
public:
  virtual ~model_stream() = default;
  /// Takes one chunk; answers the partial result. A chunk the model cannot
  /// take is refused with an error and the stream goes on.
  virtual caf::expected<tensor_map> push(const tensor_map& chunk, tensor_allocator& out) = 0;
  /// Ends the input; answers the final result. The stream is done after.
  virtual caf::expected<tensor_map> finish(tensor_allocator& out) = 0;
};

class model {
public:
  virtual ~model() = default;

  /// Runs the model. Outputs are allocated through `out`, so a remote caller's
  /// results can be written straight into memory it maps.
  virtual caf::expected<tensor_map> infer(const tensor_map& inputs, tensor_allocator& out) = 0;

  /// Bytes this model holds (weights, buffers, decoder state): measured by
  /// the backend, used for the registry's byte budget.
  virtual uint64_t memory_bytes() const = 0;

  virtual model_capabilities capabilities() const { return {}; }

  /// Starts a streaming session (models whose capabilities say `streaming`);
  /// `unsupported` otherwise.
  virtual caf::expected<std::unique_ptr<model_stream>> open_stream() {
    auto what = describe();
    what.append(" does not stream (no sessions)");
    return make_error(errc::unsupported, std::move(what));
  }

  /// One line for status output, e.g. "gain(x0.5)".
  virtual std::string describe() const = 0;

  /// Runs the model once on made-up input, so state it builds lazily exists
  /// before a zygote forks instances from it (docs/instances.md). Optional.
  virtual void warm_up() {}

  /// A model that runs elsewhere (on another node of a cluster,
  /// docs/cluster.md): the actor that takes its requests, a `model_actor`.
  /// The registry then spawns no actor of its own and never calls `infer`;
  /// when that actor goes down the entry is dropped and the next request
  /// loads again. Null (the default): the model runs here.
  virtual caf::actor served_by() const { return {}; }

  /// Where a model that runs elsewhere runs (e.g. "tcp://10.0.0.2:7447");
  /// empty for a model that runs here.
  virtual std::string location() const { return {}; }
};

using model_ptr = std::shared_ptr<model>;

/// Builds a model. Runs on a loader thread, never on the supervisor; may block
/// for as long as loading takes, may return an error, may throw.
using loader_fn = std::function<caf::expected<model_ptr>()>;

} // namespace modelreg

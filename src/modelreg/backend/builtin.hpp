// Built-in backends that do real work, for tests, demos and benchmarks.
//
//   identity  outputs = inputs, sharing their storage (no copy)
//   gain      output "audio" = input "audio" (f32) * gain
//
// Parameters common to both:
//   reserve_bytes  allocate and touch this many bytes (a stand-in for
//                  weights; counted in memory_bytes)            default 0
//   load_delay_ms  sleep this long while loading (a slow load)  default 0
//   fail_load      "true": loading fails with load_failed       default false
//   batchable      "true": declare dynamic batching (dimension 0) default false
// identity also takes thread_safe (default false), infer_delay_ms (sleep
// in every infer, a slow model; it then declares itself blocking) and
// with_pid (extra outputs "pid": the process that served the request, and
// "span": when the call ran, monotonic clock in ns, comparable across
// processes) and streaming (sessions: each chunk answers {count, total},
// the chunks and elements pushed so far); it
// is forkable, so its instances come from a zygote as pocketsphinx's do
// (docs/instances.md). gain is thread-safe.
#pragma once

namespace modelreg {

class backend_registry;

void add_builtin_backends(backend_registry& registry);

} // namespace modelreg

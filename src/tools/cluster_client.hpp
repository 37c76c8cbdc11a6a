// A client process of the cluster tests and of `modelreg bench cluster`
// (`modelreg __cluster-client`): one pipeline node that talks to its own
// node, which places and forwards for it (docs/cluster.md).
#pragma once

#include <string>
#include <vector>

namespace modelreg::tools {

/// Connects to `uri`, prints "ready", waits for a line on stdin, then gets
/// every model in `models` at once (one thread each) and runs each once with
/// a tensor of its own ({"x": f32 [8]}); an identity model must answer it
/// back. Prints one JSON line per model ({"model", "ok", "error",
/// "code", "ms"}) and "done", then holds its handles until stdin closes.
int run_cluster_client(const std::string& uri, const std::vector<std::string>& models);

/// Connects to `uri`, prints "ready", waits for a line on stdin, then runs
/// `model` over and over (getting it again after an error) until stdin
/// closes, printing "ok NS" or "error CODE NS" per request (NS: the
/// monotonic clock when it ended; CODE: the modelreg error's name).
int run_cluster_loop_client(const std::string& uri, const std::string& model);

/// Connects to `uri` (a Unix socket), opens a streaming session on `model`,
/// pushes `chunks` chunks ({"x": f32 [3]}) and finishes it, printing
/// "session ID", "push COUNT TOTAL" per chunk and "final COUNT", or "error
/// CODE WHY" (exit 1).
int run_cluster_stream_client(const std::string& uri, const std::string& model, int chunks);

} // namespace modelreg::tools

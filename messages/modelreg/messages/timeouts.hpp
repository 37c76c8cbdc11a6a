// How long modelreg waits when a caller does not say: every default deadline
// in one place. Each is overridable per call (a `timeout` argument) or per
// configuration (registry_config, connect_options, serve's options).
#pragma once

#include <chrono>

namespace modelreg::timeouts {

/// A request to a node, a model or a remote registry that names no deadline
/// of its own (infer, status, stats, the direct-link handshake).
inline constexpr std::chrono::seconds request{30};

/// Reaching a node: TCP connect plus CAF's handshake (connect_options).
inline constexpr std::chrono::seconds connect{10};

/// How long the in-process facade waits beyond `load_timeout` for its
/// supervisor, which always answers before: only a wedged system reaches it.
inline constexpr std::chrono::seconds supervisor_margin{30};

} // namespace modelreg::timeouts

// Actor-system configuration for programs that use modelreg.
//
// `configure(cfg)` registers modelreg's error category and message types and
// sets the scheduler defaults modelreg is tuned for; `system_config` is a
// ready-made config that does it in its constructor. Command-line options and
// INI files still override the defaults (CAF: CLI > INI > set()).
#pragma once

#include <caf/actor_system_config.hpp>

namespace modelreg {

/// Number of scheduler threads modelreg asks for unless told otherwise: these
/// machines have 2 cores and CAF's default is max(cores, 4).
constexpr size_t default_scheduler_threads = 2;

/// Registers modelreg's error category and message types, and sets
/// `scheduler.max-threads` to `default_scheduler_threads`.
void configure(caf::actor_system_config& cfg);

/// A CAF config with `configure` applied.
class system_config : public caf::actor_system_config {
public:
  system_config();
};

} // namespace modelreg

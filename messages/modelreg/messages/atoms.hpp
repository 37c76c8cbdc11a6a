// The verbs of modelreg's actor interfaces. Atoms hold at most 10 characters.
#pragma once

#include <caf/atom.hpp>

namespace modelreg {

// -- public verbs -----------------------------------------------------------
using get_or_load_atom = caf::atom_constant<caf::atom("getorload")>;
using infer_atom = caf::atom_constant<caf::atom("infer")>;
using release_atom = caf::atom_constant<caf::atom("release")>;
using unload_atom = caf::atom_constant<caf::atom("unload")>;
using pin_atom = caf::atom_constant<caf::atom("pin")>;
using list_atom = caf::atom_constant<caf::atom("list")>;
using subscribe_atom = caf::atom_constant<caf::atom("subscribe")>;
using unsubscribe_atom = caf::atom_constant<caf::atom("unsubscr")>;
using evict_expired_atom = caf::atom_constant<caf::atom("evictexp")>;
using status_atom = caf::atom_constant<caf::atom("status")>;
using snapshot_atom = caf::atom_constant<caf::atom("snapshot")>;
using shutdown_atom = caf::atom_constant<caf::atom("shutdown")>;

// -- internal to the registry supervisor -----------------------------------
using loaded_atom = caf::atom_constant<caf::atom("loaded")>;
using load_timeout_atom = caf::atom_constant<caf::atom("loadtmo")>;
using handles_zero_atom = caf::atom_constant<caf::atom("handles0")>;
using tick_atom = caf::atom_constant<caf::atom("tick")>;

} // namespace modelreg

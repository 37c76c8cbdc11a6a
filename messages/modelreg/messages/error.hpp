// modelreg's one error enum and its bridge into caf::error.
//
// Codes are grouped by what the caller should do about them (see
// docs/errors.md): do not retry, back off, reconnect, or fall back. The same
// value travels unchanged from src/ (caf::expected) through actors
// (caf::result) to a remote caller. Thread-safe: everything here is pure.
#pragma once

#include <cstdint>
#include <string>

#include <caf/atom.hpp>
#include <caf/error.hpp>

namespace modelreg {

/// Every failure modelreg reports. Values are stable: they travel on the wire.
enum class errc : uint8_t {
  // -- do not retry: the request itself is wrong -------------------------
  model_not_found = 1,   ///< no such key (or catalog name) is loaded or known
  invalid_argument = 2,  ///< bad input: wrong dtype, shape, missing tensor, ...
  malformed_frame = 3,   ///< a peer sent bytes that do not decode
  backend_not_found = 4, ///< a model spec names a backend nobody registered
  load_failed = 5,       ///< the loader returned an error or threw
  infer_failed = 6,      ///< the model's infer returned an error or threw
  handle_released = 7,   ///< the handle was released before this call
  permission_denied = 8, ///< this peer's role does not allow the request
  // -- back off: try again later ------------------------------------------
  overloaded = 20,       ///< too many models or requests (max_models, queues)
  out_of_memory = 21,    ///< the byte budget cannot fit the model
  quota_exceeded = 22,   ///< a per-connection quota is exhausted
  busy = 23,             ///< the model is in use (handles or requests)
  load_timeout = 24,     ///< the loader did not finish within load_timeout
  timeout = 25,          ///< no answer within the request's deadline (it may still run)
  // -- reconnect or reload ------------------------------------------------
  peer_disconnected = 40, ///< the other process went away
  unavailable = 41,      ///< the registry or worker is not reachable
  model_crashed = 42,    ///< the model actor died; the next request reloads
  shutting_down = 43,    ///< the registry is stopping
  // -- fall back ----------------------------------------------------------
  unsupported = 60,      ///< the peer or backend lacks a capability
};

/// What a caller should do about an error.
enum class error_advice : uint8_t { do_not_retry, back_off, reconnect, fall_back, unknown };

/// The category atom under which modelreg errors travel inside caf::error.
constexpr caf::atom_value error_category = caf::atom("modelreg");

/// Stable lower-case name of `code`, e.g. "out_of_memory".
std::string to_string(errc code);

/// Builds a caf::error in modelreg's category with a human-readable context.
caf::error make_error(errc code, std::string context);

/// Overload found through ADL so handlers can `return errc::busy;`.
caf::error make_error(errc code);

/// True if `err` is the modelreg error `code` (context is ignored).
bool is(const caf::error& err, errc code);

/// The modelreg code inside `err`, or nothing if it is another category.
bool to_errc(const caf::error& err, errc& out);

/// What the caller should do: grouped as in the enum above.
error_advice advice(const caf::error& err);

/// Readable rendering without an actor system: "out_of_memory: needs ...".
std::string describe(const caf::error& err);

/// The one mapping of foreign errors to modelreg's. A modelreg error keeps its
/// code (a loader's `invalid_argument` for a bad parameter, a model's for a
/// bad input: the request is wrong either way); CAF's `request_timeout`
/// becomes `timeout`; any other error (another `sec`, another category)
/// becomes `fallback` (`load_failed`, `infer_failed`, `unavailable`) with the
/// original rendered after `who`. No other category ever reaches a caller.
/// (A dead receiver means different things to different callers, a crashed
/// model or a stopped registry: they check `request_receiver_down` first.)
caf::error as_modelreg_error(caf::error err, errc fallback, const std::string& who);

} // namespace modelreg

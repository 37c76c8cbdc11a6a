// One blocking request from a thread that is not an actor: the answer, or a
// modelreg error, never one of CAF's own codes. Do not call it from inside
// an actor (request there, and handle the answer in a callback).
#pragma once

#include <string>
#include <utility>

#include <caf/actor_system.hpp>
#include <caf/expected.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/timespan.hpp>

#include "modelreg/messages/error.hpp"

namespace modelreg {

/// Sends `xs...` to `whom` and waits at most `timeout` for a `T`. A failure
/// goes through `as_modelreg_error`: CAF's `request_timeout` is `timeout`,
/// any other CAF code `unavailable` naming `who` (a dead receiver included:
/// callers for whom that means more, e.g. a crashed model, check first with
/// their own request).
template <class T, class Handle, class... Ts>
caf::expected<T> ask(caf::actor_system& sys, const Handle& whom, caf::timespan timeout,
                     const std::string& who, Ts&&... xs) {
  caf::scoped_actor self{sys};
  caf::expected<T> out{caf::error{}};
  self->request(whom, timeout, std::forward<Ts>(xs)...)
    .receive([&](T& x) { out = std::move(x); },
             [&](caf::error& err) { out = as_modelreg_error(std::move(err), errc::unavailable, who); });
  return out;
}

} // namespace modelreg

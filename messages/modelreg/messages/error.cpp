#include "modelreg/messages/error.hpp"

#include <caf/deep_to_string.hpp>
#include <caf/message.hpp>
#include <caf/sec.hpp>

namespace modelreg {

std::string to_string(errc code) {
  switch (code) {
    case errc::model_not_found: return "model_not_found";
    case errc::invalid_argument: return "invalid_argument";
    case errc::malformed_frame: return "malformed_frame";
    case errc::backend_not_found: return "backend_not_found";
    case errc::load_failed: return "load_failed";
    case errc::infer_failed: return "infer_failed";
    case errc::handle_released: return "handle_released";
    case errc::permission_denied: return "permission_denied";
    case errc::overloaded: return "overloaded";
    case errc::out_of_memory: return "out_of_memory";
    case errc::quota_exceeded: return "quota_exceeded";
    case errc::busy: return "busy";
    case errc::load_timeout: return "load_timeout";
    case errc::timeout: return "timeout";
    case errc::peer_disconnected: return "peer_disconnected";
    case errc::unavailable: return "unavailable";
    case errc::model_crashed: return "model_crashed";
    case errc::shutting_down: return "shutting_down";
    case errc::unsupported: return "unsupported";
  }
  return "errc(" + std::to_string(static_cast<int>(code)) + ")";
}

caf::error make_error(errc code, std::string context) {
  return {static_cast<uint8_t>(code), error_category, caf::make_message(std::move(context))};
}

caf::error make_error(errc code) {
  return {static_cast<uint8_t>(code), error_category};
}

bool to_errc(const caf::error& err, errc& out) {
  if (!err || err.category() != error_category)
    return false;
  out = static_cast<errc>(err.code());
  return true;
}

bool is(const caf::error& err, errc code) {
  errc x;
  return to_errc(err, x) && x == code;
}

error_advice advice(const caf::error& err) {
  errc code;
  if (!to_errc(err, code)) {
    // CAF's own errors that callers meet in practice.
    if (err.category() == caf::atom("system")) {
      auto s = static_cast<caf::sec>(err.code());
      if (s == caf::sec::request_receiver_down || s == caf::sec::request_timeout)
        return error_advice::reconnect;
    }
    return error_advice::unknown;
  }
  auto v = static_cast<int>(code);
  if (v < 20)
    return error_advice::do_not_retry;
  if (v < 40)
    return error_advice::back_off;
  if (v < 60)
    return error_advice::reconnect;
  return error_advice::fall_back;
}

std::string describe(const caf::error& err) {
  if (!err)
    return "no error";
  errc code;
  if (!to_errc(err, code))
    return caf::to_string(err);
  auto result = to_string(code);
  const auto& ctx = err.context();
  if (ctx.size() == 1 && ctx.match_element<std::string>(0)) {
    // Contexts often quote an inner error of the same code ("gain: input
    // 'audio': invalid_argument: expected f32"): say the code once.
    auto s = ctx.get_as<std::string>(0);
    auto prefix = result + ": ";
    for (auto at = s.find(prefix); at != std::string::npos; at = s.find(prefix, at))
      s.erase(at, prefix.size());
    if (!s.empty())
      result += ": " + s;
  } else if (!ctx.empty()) {
    result += ": " + caf::deep_to_string(ctx);
  }
  return result;
}

caf::error as_modelreg_error(caf::error err, errc fallback, const std::string& who) {
  errc code;
  if (!err || to_errc(err, code))
    return err;
  if (err == caf::sec::request_timeout)
    return make_error(errc::timeout, who + ": no answer within the request's deadline");
  return make_error(fallback, who + " failed: " + caf::to_string(err));
}

} // namespace modelreg

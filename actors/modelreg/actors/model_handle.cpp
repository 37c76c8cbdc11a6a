#include "modelreg/actors/model_handle.hpp"

#include <atomic>

#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "modelreg/actors/detail/lease.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

const std::string empty_key;

} // namespace

model_handle::model_handle(std::shared_ptr<detail::lease> lease) : lease_(std::move(lease)) {}

bool model_handle::valid() const noexcept {
  return lease_ && !lease_->released() && !lease_->block()->retired.load();
}

const std::string& model_handle::key() const {
  return lease_ ? lease_->block()->key : empty_key;
}

uint64_t model_handle::generation() const {
  return lease_ ? lease_->block()->generation : 0;
}

model_actor model_handle::actor() const {
  return lease_ ? lease_->block()->actor : model_actor{};
}

std::string model_handle::description() const {
  return lease_ ? lease_->block()->description : std::string{};
}

uint64_t model_handle::memory_bytes() const {
  return lease_ ? lease_->block()->memory_bytes : 0;
}

request_ticket model_handle::ticket() const {
  return lease_ ? detail::make_ticket(lease_->block()) : nullptr;
}

std::optional<caf::expected<tensor_map>>
model_handle::try_infer_here(const tensor_map& inputs, tensor_allocator& out) const {
  if (!lease_ || lease_->released())
    return std::nullopt;
  const auto& block = lease_->block();
  if (!block->quick || block->retired.load())
    return std::nullopt;
  uint64_t bytes = 0;
  for (const auto& [name, t] : inputs)
    bytes += t.nbytes();
  if (bytes > quick_max_input_bytes)
    return std::nullopt;
  // The handle keeps the model from eviction; the ticket counts the request
  // as in flight (an unload waits for it) and marks the model used.
  auto in_flight = detail::make_ticket(block);
  return detail::run_quick(*block, inputs, out);
}

bool model_handle::release() const {
  return lease_ && lease_->release();
}

bool model_handle::same_model(const model_handle& other) const noexcept {
  return lease_ && other.lease_ && lease_->block() == other.lease_->block();
}

caf::expected<tensor_map> model_handle::infer(const tensor_map& inputs,
                                              caf::timespan timeout) const {
  if (!lease_)
    return make_error(errc::invalid_argument, "infer on an empty model_handle");
  if (lease_->released())
    return make_error(errc::handle_released, "handle for '" + key() + "' was released");
  const auto& block = *lease_->block();
  if (block.retired.load())
    return make_error(errc::model_crashed, "model '" + key() + "' is no longer loaded");
  caf::scoped_actor self{block.actor->home_system()};
  caf::expected<tensor_map> result{tensor_map{}};
  self->request(block.actor, timeout, infer_request{inputs, ticket()})
    .receive([&](tensor_map& out) { result = std::move(out); },
             [&](caf::error& err) {
               if (err == caf::sec::request_receiver_down)
                 result = make_error(errc::model_crashed, "model actor of '" + key() + "' is down");
               else
                 result = as_modelreg_error(std::move(err), errc::infer_failed, "model '" + key() + "'");
             });
  return result;
}

namespace {

/// Sends `req` to `actor` and waits for the answer.
caf::expected<tensor_map> ask_model(const model_actor& actor, session_request req,
                                    caf::timespan timeout, const std::string& key) {
  caf::scoped_actor self{actor->home_system()};
  caf::expected<tensor_map> result{tensor_map{}};
  self->request(actor, timeout, std::move(req))
    .receive([&](tensor_map& out) { result = std::move(out); },
             [&](caf::error& err) {
               if (err == caf::sec::request_receiver_down)
                 result = make_error(errc::model_crashed, "model actor of '" + key + "' is down");
               else
                 result = as_modelreg_error(std::move(err), errc::infer_failed, "model '" + key + "'");
             });
  return result;
}

/// Distinct clients for the model's session checks.
std::atomic<uint64_t> next_session_client{uint64_t{1} << 62};

} // namespace

caf::expected<model_session> model_handle::open_session(std::chrono::milliseconds wait,
                                                        caf::timespan timeout) const {
  if (!valid())
    return make_error(errc::handle_released, "open_session on a handle that is not valid");
  session_request req;
  req.op = session_op::open;
  req.wait = wait;
  req.client = next_session_client.fetch_add(1);
  req.ticket = ticket();
  auto client = req.client;
  auto out = ask_model(actor(), std::move(req), timeout + wait, key());
  if (!out)
    return std::move(out.error());
  auto s = out->find("session");
  if (s == out->end() || s->second.type() != dtype::u64 || s->second.element_count() != 1)
    return make_error(errc::malformed_frame, "the model answered an open without a session");
  return model_session{*this, (*s->second.values<uint64_t>())[0], client};
}

model_session::model_session(model_session&& other) noexcept
  : handle_(std::move(other.handle_)),
    id_(std::exchange(other.id_, 0)),
    client_(other.client_) {}

model_session& model_session::operator=(model_session&& other) noexcept {
  if (this != &other) {
    cancel();
    handle_ = std::move(other.handle_);
    id_ = std::exchange(other.id_, 0);
    client_ = other.client_;
  }
  return *this;
}

model_session::~model_session() {
  cancel();
}

caf::expected<tensor_map> model_session::step(session_op op, tensor_map chunk,
                                              caf::timespan timeout) {
  if (id_ == 0)
    return make_error(errc::invalid_argument, "the session is closed");
  session_request req;
  req.op = op;
  req.session = id_;
  req.inputs = std::move(chunk);
  req.client = client_;
  req.ticket = handle_.ticket();
  if (op != session_op::push)
    id_ = 0;
  return ask_model(handle_.actor(), std::move(req), timeout, handle_.key());
}

caf::expected<tensor_map> model_session::push(const tensor_map& chunk, caf::timespan timeout) {
  return step(session_op::push, chunk, timeout);
}

caf::expected<tensor_map> model_session::finish(caf::timespan timeout) {
  return step(session_op::finish, {}, timeout);
}

void model_session::cancel() {
  if (id_ == 0 || !handle_.actor())
    return;
  session_request req;
  req.op = session_op::cancel;
  req.session = std::exchange(id_, 0);
  req.client = client_;
  caf::anon_send(handle_.actor(), std::move(req));
}

} // namespace modelreg

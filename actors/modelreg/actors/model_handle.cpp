#include "modelreg/actors/model_handle.hpp"

#include <caf/scoped_actor.hpp>

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

} // namespace modelreg

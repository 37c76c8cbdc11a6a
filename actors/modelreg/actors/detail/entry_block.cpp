#include "modelreg/actors/detail/entry_block.hpp"

#include <caf/actor_cast.hpp>
#include <caf/send.hpp>

#include "modelreg/actors/detail/supervisor.hpp"

namespace modelreg::detail {

entry_block::entry_block(std::string key, uint64_t generation, model_actor actor,
                         caf::weak_actor_ptr supervisor, std::string description,
                         uint64_t memory_bytes, std::shared_ptr<model_stats> stats,
                         int64_t load_time_us, uint64_t lease_id, model_ptr quick)
  : key(std::move(key)),
    generation(generation),
    lease_id(lease_id),
    actor(std::move(actor)),
    supervisor(std::move(supervisor)),
    description(std::move(description)),
    memory_bytes(memory_bytes),
    stats(std::move(stats)),
    load_time_us(load_time_us),
    quick(std::move(quick)) {}

bool entry_block::try_acquire() noexcept {
  handles.fetch_add(1);
  if (closed.load()) {
    handles.fetch_sub(1);
    return false;
  }
  touch();
  return true;
}

void entry_block::release_one() noexcept {
  touch();
  if (handles.fetch_sub(1) == 1 && !closed.load()) {
    // A supervisor knows a load by its generation; a remote registry's proxy
    // knows a handle by its lease.
    if (auto sup = supervisor.lock())
      caf::anon_send(caf::actor_cast<supervisor_actor>(sup), handles_zero_atom::value, key,
                     lease_id != 0 ? lease_id : generation);
  }
}

bool entry_block::try_close() noexcept {
  closed.store(true);
  if (handles.load() == 0 && in_flight.load() == 0)
    return true;
  closed.store(false);
  return false;
}

in_flight_guard::in_flight_guard(entry_ptr block) noexcept : block_(std::move(block)) {
  block_->in_flight.fetch_add(1);
}

in_flight_guard::~in_flight_guard() {
  block_->touch();
  block_->in_flight.fetch_sub(1);
}

request_ticket make_ticket(const entry_ptr& block) {
  return std::make_shared<in_flight_guard>(block);
}

request_ticket try_ticket(const entry_ptr& block) noexcept {
  block->in_flight.fetch_add(1);
  if (block->closed.load()) {
    block->in_flight.fetch_sub(1);
    return nullptr;
  }
  block->touch();
  try {
    return std::make_shared<in_flight_guard>(block, std::adopt_lock);
  } catch (...) {
    block->in_flight.fetch_sub(1);
    return nullptr;
  }
}

} // namespace modelreg::detail

#include "modelreg/messages/system_config.hpp"

#include "modelreg/messages/cluster.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/model_spec.hpp"
#include "modelreg/messages/status.hpp"

#include <caf/message.hpp>

namespace modelreg {

void configure(caf::actor_system_config& cfg) {
  cfg.set("scheduler.max-threads", default_scheduler_threads);
  // A blocked scoped_actor or a loader thread should not make idle workers
  // spin: poll briefly, then sleep.
  cfg.set("work-stealing.moderate-poll-attempts", 0);
  cfg.add_error_category(error_category, [](uint8_t code, caf::atom_value, const caf::message& ctx) {
    return describe(make_error(static_cast<errc>(code))) +
           (ctx.empty() ? std::string{} : " (" + caf::deep_to_string(ctx) + ")");
  });
  cfg.add_message_type<model_spec>("modelreg::model_spec");
  cfg.add_message_type<status_event>("modelreg::status_event");
  cfg.add_message_type<model_status>("modelreg::model_status");
  cfg.add_message_type<registry_totals>("modelreg::registry_totals");
  cfg.add_message_type<registry_snapshot>("modelreg::registry_snapshot");
  cfg.add_message_type<eviction_report>("modelreg::eviction_report");
  cfg.add_message_type<held_model>("modelreg::held_model");
  cfg.add_message_type<member_info>("modelreg::member_info");
  cfg.add_message_type<std::vector<member_info>>("std::vector<modelreg::member_info>");
  cfg.add_message_type<placement>("modelreg::placement");
}

system_config::system_config() {
  configure(*this);
}

} // namespace modelreg

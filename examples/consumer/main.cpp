// Uses an installed modelreg through find_package(modelreg).
#include <cstdio>

#include <caf/actor_system.hpp>

#include <modelreg/messages/system_config.hpp>
#include <modelreg/registry.hpp>

int main() {
  modelreg::system_config cfg;
  caf::actor_system sys{cfg};
  modelreg::registry reg{sys};
  auto h = reg.get_or_load("id", modelreg::model_spec{"identity", {}});
  auto again = reg.get_or_load("id", modelreg::model_spec{"identity", {}});
  if (!h || !again || !h->same_model(*again)) {
    std::puts("consumer: FAILED");
    return 1;
  }
  std::puts("consumer: one model, two handles");
  return 0;
}

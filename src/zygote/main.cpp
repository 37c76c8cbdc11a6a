// modelreg-zygote: loads one model and forks its instances for a node
// (see modelreg/backend/instances.hpp and docs/instances.md).
#include "modelreg/backend/instances.hpp"

int main(int argc, char** argv) {
  return modelreg::zygote_main(argc, argv);
}

// `modelreg bench placement`: a simulation of cluster placement and failover
// at sizes these machines cannot run (100 and 1 000 members), with the
// placement code the members run (cluster/placement.hpp): owners by
// rendezvous hashing, holders by free budget, holders that refuse what they
// cannot fit, heartbeats that are a round late. Not a model of the network:
// what it measures is what the rules decide.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace modelreg::bench {

/// One result per member count: models (log-normal sizes, median about
/// 300 MiB) until they ask for 85% of the budget (16 GiB a member), each
/// placed once; then loads per model, budget utilisation, models left
/// unplaced, holders asked per model, how evenly keys are owned, keys
/// whose owner moves when a member joins or leaves, and the fullest member
/// dying: its models placed again. JSON.
std::string run_placement_sim(const std::vector<size_t>& members, uint64_t seed);

} // namespace modelreg::bench

#include "bench/placement_sim.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelreg/cluster/placement.hpp"

namespace modelreg::bench {

namespace {

using modelreg::cluster::choose_holder;
using modelreg::cluster::node_load;
using modelreg::cluster::owner_of;

struct sim_node {
  std::string name;
  uint64_t budget = 0;
  uint64_t used = 0;     ///< held, as its last heartbeat said
  uint64_t promised = 0; ///< reserved for loads placed since
  std::set<size_t> held; ///< model indices
  bool alive = true;
};

/// The cluster as an owner sees it: every live member's word.
std::vector<node_load> view(const std::vector<sim_node>& nodes, const std::set<size_t>& skip,
                            std::vector<size_t>& index) {
  std::vector<node_load> out;
  index.clear();
  for (size_t i = 0; i < nodes.size(); ++i) {
    if (!nodes[i].alive || skip.count(i) > 0)
      continue;
    out.push_back({nodes[i].name, nodes[i].budget, nodes[i].used, 0, 0});
    index.push_back(i);
  }
  return out;
}

/// The owner places model `m` of `bytes`: chooses with the members' last
/// heartbeats (stale within a round), the holder reserves against what it
/// really has, a refusal sends the owner to the next member. Returns the
/// holder, or -1; counts the holders asked.
long place(std::vector<sim_node>& nodes, size_t m, uint64_t bytes, int& asked) {
  std::set<size_t> skip;
  std::vector<size_t> index;
  for (;;) {
    auto candidates = view(nodes, skip, index);
    auto choice = choose_holder("model-" + std::to_string(m), bytes, candidates);
    if (!choice)
      return -1;
    auto h = index[choice->index];
    ++asked;
    auto& n = nodes[h];
    // The holder's reservation: its real bytes and promises.
    if (n.used + n.promised + bytes <= n.budget) {
      n.promised += bytes;
      n.held.insert(m);
      return static_cast<long>(h);
    }
    skip.insert(h);
  }
}

/// A heartbeat round: what each member holds reaches every owner.
void heartbeat(std::vector<sim_node>& nodes) {
  for (auto& n : nodes) {
    n.used += n.promised;
    n.promised = 0;
  }
}

std::vector<std::string> live_names(const std::vector<sim_node>& nodes) {
  std::vector<std::string> out;
  for (const auto& n : nodes)
    if (n.alive)
      out.push_back(n.name);
  return out;
}

nlohmann::json simulate(size_t n_nodes, uint64_t seed) {
  std::mt19937_64 rng{seed};
  constexpr uint64_t mib = 1 << 20;
  // Model sizes: log-normal around 300 MiB (small VAD/ASR/TTS models to
  // multi-GiB ones), clipped to 5 MiB .. 12 GiB.
  std::lognormal_distribution<double> size_of{std::log(300.0), 1.3};
  std::vector<sim_node> nodes(n_nodes);
  uint64_t total_budget = 0;
  for (size_t i = 0; i < n_nodes; ++i) {
    nodes[i].name = "tcp://10." + std::to_string(i / 250) + "." + std::to_string(i % 250) +
                    ".1:7447";
    nodes[i].budget = uint64_t{16} << 30; // 16 GiB each
    total_budget += nodes[i].budget;
  }
  // Models until they would take 85% of the cluster's budget.
  std::vector<uint64_t> sizes;
  uint64_t asked_bytes = 0;
  while (asked_bytes < total_budget / 100 * 85) {
    auto mb = std::clamp(size_of(rng), 5.0, 12288.0);
    sizes.push_back(static_cast<uint64_t>(mb * static_cast<double>(mib)));
    asked_bytes += sizes.back();
  }
  // First requests arrive in rounds of concurrent ones (one heartbeat
  // apart); every model is asked for at several members at once, and the
  // owner's single flight answers them all with one placement.
  std::vector<size_t> order(sizes.size());
  for (size_t i = 0; i < order.size(); ++i)
    order[i] = i;
  std::shuffle(order.begin(), order.end(), rng);
  std::vector<int> loads(sizes.size(), 0);
  std::vector<long> holder(sizes.size(), -1);
  size_t per_round = std::max<size_t>(n_nodes, 1);
  int asked = 0, unplaced = 0;
  uint64_t unplaced_bytes = 0;
  auto names = live_names(nodes);
  std::map<std::string, size_t> owned;
  for (size_t k = 0; k < order.size(); ++k) {
    auto m = order[k];
    ++owned[owner_of("model-" + std::to_string(m), names)];
    auto h = place(nodes, m, sizes[m], asked);
    if (h < 0) {
      ++unplaced;
      unplaced_bytes += sizes[m];
    } else {
      ++loads[m];
      holder[m] = h;
    }
    if ((k + 1) % per_round == 0)
      heartbeat(nodes);
  }
  heartbeat(nodes);
  uint64_t placed = 0;
  for (const auto& n : nodes)
    placed += n.used;
  int max_loads = 0;
  for (auto l : loads)
    max_loads = std::max(max_loads, l);
  size_t max_owned = 0;
  for (const auto& [name, count] : owned)
    max_owned = std::max(max_owned, count);

  // Membership changes: the keys whose owner moves.
  auto moved_fraction = [&](const std::vector<std::string>& before,
                            const std::vector<std::string>& after) {
    size_t moved = 0;
    for (size_t m = 0; m < sizes.size(); ++m) {
      auto key = "model-" + std::to_string(m);
      moved += owner_of(key, before) != owner_of(key, after) ? 1 : 0;
    }
    return static_cast<double>(moved) / static_cast<double>(sizes.size());
  };
  auto joined = names;
  joined.push_back("tcp://10.250.0.1:7447");
  auto left = std::vector<std::string>(names.begin() + 1, names.end());
  auto moved_join = moved_fraction(names, joined);
  auto moved_leave = moved_fraction(names, left);

  // Failover: the fullest member dies; its models are placed again.
  size_t victim = 0;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (nodes[i].used > nodes[victim].used)
      victim = i;
  nodes[victim].alive = false;
  auto lost = nodes[victim].held;
  int replaced = 0, lost_unplaced = 0, failover_asked = 0;
  for (auto m : lost) {
    if (place(nodes, m, sizes[m], failover_asked) >= 0)
      ++replaced;
    else
      ++lost_unplaced;
  }
  heartbeat(nodes);
  uint64_t placed_after = 0, budget_after = 0;
  for (const auto& n : nodes)
    if (n.alive) {
      placed_after += n.used;
      budget_after += n.budget;
    }

  // What an owner lookup costs at this size.
  auto t0 = std::chrono::steady_clock::now();
  volatile size_t sink = 0; // (keeps the loop)
  for (int i = 0; i < 1000; ++i)
    sink += owner_of("model-" + std::to_string(i), names).size();
  auto owner_us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0)
                    .count() /
                  1000.0;

  return {{"nodes", n_nodes},
          {"models", sizes.size()},
          {"model_mib_median", [&] {
             auto s = sizes;
             std::sort(s.begin(), s.end());
             return s[s.size() / 2] / mib;
           }()},
          {"model_mib_max", *std::max_element(sizes.begin(), sizes.end()) / mib},
          {"loads_per_model_max", max_loads},
          {"unplaced_models", unplaced},
          {"unplaced_gib", static_cast<double>(unplaced_bytes) / (1 << 30)},
          {"budget_utilisation", static_cast<double>(placed) / static_cast<double>(total_budget)},
          {"holders_asked_per_model", static_cast<double>(asked) / static_cast<double>(sizes.size())},
          {"keys_owned_max_over_mean",
           static_cast<double>(max_owned) * static_cast<double>(n_nodes) /
             static_cast<double>(sizes.size())},
          {"keys_moved_on_join", moved_join},
          {"keys_moved_on_leave", moved_leave},
          {"keys_moved_ideal", 1.0 / static_cast<double>(n_nodes + 1)},
          {"failover_models_lost", lost.size()},
          {"failover_replaced", replaced},
          {"failover_unplaced", lost_unplaced},
          {"budget_utilisation_after_failover",
           static_cast<double>(placed_after) / static_cast<double>(budget_after)},
          {"owner_lookup_us", owner_us}};
}

} // namespace

std::string run_placement_sim(const std::vector<size_t>& sizes, uint64_t seed) {
  auto out = nlohmann::json::array();
  for (auto n : sizes)
    out.push_back(simulate(n, seed));
  return nlohmann::json{{"seed", seed}, {"results", out}}.dump();
}

} // namespace modelreg::bench

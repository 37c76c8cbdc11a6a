#include "tools/cluster_client.hpp"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "modelreg/actors/ask.hpp"
#include "modelreg/actors/blocking_client.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"

namespace modelreg::tools {

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

/// A tensor of this process's own: the answer must be it again.
std::vector<float> own_values(uint64_t salt) {
  std::vector<float> v(8);
  for (size_t i = 0; i < v.size(); ++i)
    v[i] = static_cast<float>((::getpid() % 10007) * 8 + i) + static_cast<float>(salt) * 0.5f;
  return v;
}

/// Runs `h` once on `values`; empty if the answer is right, else why not.
std::optional<caf::error> check(const model_handle& h, const std::vector<float>& values) {
  auto in = tensor::from_values(values);
  if (!in)
    return in.error();
  auto out = h.infer({{"x", *in}}, std::chrono::seconds{30});
  if (!out)
    return out.error();
  auto i = out->find("x");
  if (i == out->end() || i->second.type() != dtype::f32 ||
      i->second.element_count() != values.size() ||
      std::memcmp(i->second.data(), values.data(), values.size() * sizeof(float)) != 0)
    return make_error(errc::infer_failed, "a wrong answer");
  return std::nullopt;
}

std::string code_of(const caf::error& err) {
  errc code;
  return to_errc(err, code) ? to_string(code) : "other";
}

bool wait_for_go() {
  std::string line;
  return static_cast<bool>(std::getline(std::cin, line));
}

} // namespace

int run_cluster_client(const std::string& uri, const std::vector<std::string>& models) {
  system_config cfg;
  caf::actor_system sys{cfg};
  auto reg = connect(sys, uri);
  if (!reg) {
    std::cerr << "cluster client: " << describe(reg.error()) << "\n";
    return 3;
  }
  std::cout << "ready" << std::endl;
  if (!wait_for_go())
    return 0;
  std::mutex out_mutex;
  std::vector<model_handle> held(models.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < models.size(); ++i)
    threads.emplace_back([&, i] {
      auto started = now_ns();
      auto h = ask<model_handle>(sys, *reg, std::chrono::seconds{60}, "the node",
                                 get_or_load_atom::value, models[i], model_spec{});
      std::optional<caf::error> err;
      if (!h)
        err = h.error();
      else
        err = check(*h, own_values(i));
      nlohmann::json line = {{"model", models[i]},
                             {"ok", !err},
                             {"ms", static_cast<double>(now_ns() - started) / 1e6}};
      if (err) {
        line["code"] = code_of(*err);
        line["error"] = describe(*err);
      } else {
        held[i] = *h;
      }
      std::lock_guard<std::mutex> guard{out_mutex};
      std::cout << line.dump() << std::endl;
    });
  for (auto& t : threads)
    t.join();
  std::cout << "done" << std::endl;
  wait_for_go(); // hold the handles until told (or stdin closes)
  held.clear();
  caf::anon_send(*reg, shutdown_atom::value);
  return 0;
}

int run_cluster_loop_client(const std::string& uri, const std::string& model) {
  system_config cfg;
  caf::actor_system sys{cfg};
  auto reg = connect(sys, uri);
  if (!reg) {
    std::cerr << "cluster client: " << describe(reg.error()) << "\n";
    return 3;
  }
  std::cout << "ready" << std::endl;
  if (!wait_for_go())
    return 0;
  std::atomic<bool> stop{false};
  std::thread watch{[&] {
    wait_for_go();
    stop = true;
  }};
  std::optional<model_handle> h;
  uint64_t n = 0;
  while (!stop) {
    std::optional<caf::error> err;
    if (!h || !h->valid()) {
      auto got = ask<model_handle>(sys, *reg, std::chrono::seconds{30}, "the node",
                                   get_or_load_atom::value, model, model_spec{});
      if (got)
        h = *got;
      else
        err = got.error();
    }
    if (!err)
      err = check(*h, own_values(n++));
    if (err) {
      h.reset(); // get it again: it may have moved
      std::printf("error %s %lld %s\n", code_of(*err).c_str(), static_cast<long long>(now_ns()),
                  describe(*err).c_str());
    } else {
      std::printf("ok %lld\n", static_cast<long long>(now_ns()));
    }
    std::fflush(stdout);
  }
  watch.join();
  h.reset();
  caf::anon_send(*reg, shutdown_atom::value);
  return 0;
}

int run_cluster_stream_client(const std::string& uri, const std::string& model, int chunks) {
  system_config cfg;
  caf::actor_system sys{cfg};
  auto reg = connect(sys, uri);
  if (!reg) {
    std::cerr << "cluster stream: " << describe(reg.error()) << "\n";
    return 3;
  }
  int rc = 0;
  {
    blocking_client caller{sys, *reg};
    auto count = [](const tensor_map& m, const char* name) {
      auto i = m.find(name);
      return i == m.end() || i->second.type() != dtype::i64 ? -1
                                                            : (*i->second.values<int64_t>())[0];
    };
    auto session = caller.open_session(model, std::chrono::seconds{10});
    if (!session) {
      std::printf("error %s %s\n", code_of(session.error()).c_str(),
                  describe(session.error()).c_str());
      rc = 1;
    } else {
      std::printf("session %llu\n", static_cast<unsigned long long>(session->id()));
      auto chunk = *tensor::from_values<float>({1.f, 2.f, 3.f});
      for (int i = 0; i < chunks && rc == 0; ++i) {
        auto partial = session->push({{"x", chunk}});
        if (partial) {
          std::printf("push %lld %lld\n", static_cast<long long>(count(*partial, "count")),
                      static_cast<long long>(count(*partial, "total")));
        } else {
          std::printf("error %s %s\n", code_of(partial.error()).c_str(),
                      describe(partial.error()).c_str());
          rc = 1;
        }
        std::fflush(stdout);
      }
      if (rc == 0) {
        auto final = session->finish();
        if (final)
          std::printf("final %lld\n", static_cast<long long>(count(*final, "count")));
        else
          std::printf("error %s %s\n", code_of(final.error()).c_str(),
                      describe(final.error()).c_str());
        rc = final ? 0 : 1;
      }
    }
  }
  std::fflush(stdout);
  caf::anon_send(*reg, shutdown_atom::value);
  return rc;
}

} // namespace modelreg::tools

// `modelreg serve` and connect() with real processes: many clients on one
// model, a worker killed mid-request, a client killed while it holds leases,
// TLS, graceful stop, and the operator's CLI against a live node.
#include <csignal>
#include <filesystem>
#include <fstream>
#include <future>
#include <regex>

#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/scoped_actor.hpp>

#include <nlohmann/json.hpp>

#include "serve/serve_fixture.hpp"
#include "modelreg/tensor/npy.hpp"

namespace modelreg::test {
namespace {

TEST_F(serve_test, RemoteRegistryAnswersLikeALocalOne) {
  ASSERT_TRUE(start_node()) << ready_line;
  client c;
  auto reg = c.connect(uri());
  ASSERT_TRUE(reg) << describe(reg.error());
  // By catalog name (a spec without a backend).
  auto h = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"gain"}, model_spec{});
  ASSERT_TRUE(h) << describe(h.error());
  EXPECT_EQ(h->key(), "gain");
  EXPECT_EQ(h->description(), "gain(x2)");
  // Its generation is the node's load of "gain", as the header says (it used
  // to be the lease id, different for every handle).
  {
    auto second = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"gain"},
                                      model_spec{});
    ASSERT_TRUE(second) << describe(second.error());
    EXPECT_EQ(second->generation(), h->generation());
    auto loaded = c.ask<registry_snapshot>(*reg, list_atom::value);
    ASSERT_TRUE(loaded);
    ASSERT_EQ(loaded->models.size(), 1u);
    EXPECT_EQ(h->generation(), loaded->models[0].generation);
  }
  // Input written straight into shared memory: it crosses by reference.
  auto in = allocate_input(*c.sys, *reg, dtype::f32, {4});
  ASSERT_TRUE(in) << describe(in.error());
  auto v = in->mutable_values<float>();
  ASSERT_TRUE(v);
  for (int i = 0; i < 4; ++i)
    (*v)[static_cast<size_t>(i)] = static_cast<float>(i);
  auto before = stats_of(*c.sys, *reg);
  ASSERT_TRUE(before);
  auto out = c.ask<tensor_map>(*reg, infer_atom::value, std::string{"gain"}, tensor_map{{"audio", *in}});
  ASSERT_TRUE(out) << describe(out.error());
  auto values = out->at("audio").values<float>();
  ASSERT_TRUE(values);
  EXPECT_EQ(std::vector<float>(values->begin(), values->end()), (std::vector<float>{0, 2, 4, 6}));
  // Outputs are views of the worker's memory: read-only, no copy either way.
  EXPECT_FALSE(out->at("audio").writable());
  auto after = stats_of(*c.sys, *reg);
  ASSERT_TRUE(after);
  EXPECT_TRUE(after->shared_memory);
  EXPECT_EQ(after->copied_bytes, before->copied_bytes);
  EXPECT_GE(after->zero_copy_tensors, before->zero_copy_tensors + 2);
  // The handle's own infer goes the same way.
  auto again = h->infer({{"audio", *in}});
  ASSERT_TRUE(again) << describe(again.error());
  // Errors keep their codes across the hop.
  auto bad = c.ask<tensor_map>(*reg, infer_atom::value, std::string{"gain"},
                               tensor_map{{"audio", *tensor::from_values<int16_t>({1, 2})}});
  ASSERT_FALSE(bad);
  EXPECT_TRUE(is(bad.error(), errc::invalid_argument)) << describe(bad.error());
  auto unknown = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"nope"}, model_spec{});
  ASSERT_FALSE(unknown);
  EXPECT_TRUE(is(unknown.error(), errc::model_not_found)) << describe(unknown.error());
  auto failing = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"broken"}, model_spec{});
  ASSERT_FALSE(failing);
  EXPECT_TRUE(is(failing.error(), errc::load_failed)) << describe(failing.error());
  loader_fn loader = []() -> caf::expected<model_ptr> { return make_error(errc::unsupported); };
  auto local_loader = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"x"}, loader);
  ASSERT_FALSE(local_loader);
  EXPECT_TRUE(is(local_loader.error(), errc::unsupported));
  // Releasing the handle shows on the worker.
  EXPECT_EQ(handles_of(c.status(*reg), "gain"), 1u);
  h->release();
  EXPECT_TRUE(eventually([&] { return handles_of(c.status(*reg), "gain") == 0; }));
  auto unloaded = c.ask<eviction_report>(*reg, unload_atom::value, std::string{"gain"});
  ASSERT_TRUE(unloaded) << describe(unloaded.error());
  EXPECT_EQ(unloaded->count, 1u);
  auto snap = c.ask<registry_snapshot>(*reg, list_atom::value);
  ASSERT_TRUE(snap);
  EXPECT_TRUE(snap->models.empty());
  EXPECT_EQ(snap->totals.unloads, 1u);
}

TEST_F(serve_test, SubscribersReceiveTheWorkersTransitions) {
  ASSERT_TRUE(start_node()) << ready_line;
  client c;
  auto reg = c.connect(uri());
  ASSERT_TRUE(reg);
  auto log = std::make_shared<status_log>();
  auto listener = c.sys->spawn(recorder, log);
  caf::anon_send(*reg, subscribe_atom::value, listener);
  // The subscription is a request of its own: wait for the first snapshot
  // round trip before causing transitions.
  ASSERT_TRUE(c.status(*reg).is_object());
  auto h = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"echo"}, model_spec{});
  ASSERT_TRUE(h);
  EXPECT_TRUE(eventually([&] { return log->size() >= 2; }));
  auto t = log->transitions();
  ASSERT_GE(t.size(), 2u);
  EXPECT_EQ(t[0], std::make_pair(std::string{"echo"}, model_state::loading));
  EXPECT_EQ(t[1], std::make_pair(std::string{"echo"}, model_state::ready));
  caf::anon_send_exit(listener, caf::exit_reason::user_shutdown);
}

TEST_F(serve_test, EightClientProcessesKeepOverAHundredRequestsInFlight) {
  ASSERT_TRUE(start_node()) << ready_line;
  // 8 processes x 13 in flight = 104 requests outstanding at once.
  std::vector<std::unique_ptr<child_process>> clients;
  for (int i = 0; i < 8; ++i)
    clients.push_back(std::make_unique<child_process>(std::vector<std::string>{
      MODELREG_CLI, "__bench-serve-client", uri(), "echo", "400", "13", "64",
      dir + "/lat" + std::to_string(i)}));
  for (auto& cl : clients)
    ASSERT_EQ(cl->read_line(60s), "ready");
  for (auto& cl : clients)
    cl->close_stdin();
  for (auto& cl : clients) {
    auto j = nlohmann::json::parse(cl->read_line(120s), nullptr, false);
    ASSERT_FALSE(j.is_discarded());
    EXPECT_EQ(j["requests"], 400);
    EXPECT_EQ(j["errors"], 0) << j["first_error"];
    EXPECT_EQ(j["wrong"], 0);
  }
  client c;
  auto reg = c.connect(uri());
  ASSERT_TRUE(reg);
  auto s = c.status(*reg);
  EXPECT_EQ(s["totals"]["loads"], 1) << s.dump();
  EXPECT_EQ(s["totals"]["load_failures"], 0);
}

TEST_F(serve_test, KilledWorkerFailsEveryCallerAtOnceAndIsReconnectedWhenBack) {
  ASSERT_TRUE(start_node()) << ready_line;
  client c;
  auto reg = c.connect(uri());
  ASSERT_TRUE(reg);
  auto h = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"slow-infer"}, model_spec{});
  ASSERT_TRUE(h) << describe(h.error());
  // Requests in flight in the worker when it dies.
  auto x = *tensor::from_values<float>({1.f});
  std::vector<std::future<caf::expected<tensor_map>>> calls;
  for (int i = 0; i < 6; ++i)
    calls.push_back(std::async(std::launch::async, [&] {
      return c.ask<tensor_map>(*reg, infer_atom::value, std::string{"slow-infer"}, tensor_map{{"x", x}});
    }));
  std::this_thread::sleep_for(100ms); // let them reach the worker
  auto killed = std::chrono::steady_clock::now();
  node->kill(SIGKILL);
  for (auto& f : calls) {
    // A hang would show here (the bound only keeps the test finite).
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    auto r = f.get();
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), errc::unavailable)) << describe(r.error());
  }
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - killed);
  std::cout << "[ measured ] all in-flight requests failed " << ms.count() << " ms after kill -9\n";
  EXPECT_FALSE(h->valid());
  // New requests fail at once while the worker is gone.
  auto refused = c.ask<tensor_map>(*reg, infer_atom::value, std::string{"echo"}, tensor_map{{"x", x}});
  ASSERT_FALSE(refused);
  EXPECT_TRUE(is(refused.error(), errc::unavailable)) << describe(refused.error());
  node->wait_for_exit(5s);
  // A restarted worker on the same socket: the proxy reconnects by itself.
  ASSERT_TRUE(start_node()) << ready_line;
  EXPECT_TRUE(eventually([&] {
    auto r = c.ask<tensor_map>(*reg, infer_atom::value, std::string{"echo"}, tensor_map{{"x", x}});
    if (r)
      return true;
    // Not loaded yet on the new worker: load it (routed infer needs a model).
    (void) c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"echo"}, model_spec{});
    return false;
  }));
  auto st = stats_of(*c.sys, *reg);
  ASSERT_TRUE(st);
  EXPECT_GE(st->reconnects, 1u);
}

TEST_F(serve_test, KilledNodeLeavesNoZygoteOrInstanceBehind) {
  ASSERT_TRUE(start_node()) << ready_line;
  client c;
  auto reg = c.connect(uri());
  ASSERT_TRUE(reg);
  auto h = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"forked"}, model_spec{});
  ASSERT_TRUE(h) << describe(h.error());
  auto r = c.ask<tensor_map>(*reg, infer_atom::value, std::string{"forked"},
                             tensor_map{{"x", *tensor::from_values<float>({1.f})}});
  ASSERT_TRUE(r) << describe(r.error());
  std::vector<int64_t> pids;
  auto status = c.status(*reg);
  for (const auto& m : status["models"])
    if (m["key"] == "forked") {
      pids.push_back(m["zygote_pid"].get<int64_t>());
      for (const auto& p : m["processes"])
        pids.push_back(p["pid"].get<int64_t>());
    }
  ASSERT_EQ(pids.size(), 3u) << status.dump();
  EXPECT_NE(std::find(pids.begin(), pids.end(), (*r->at("pid").values<int64_t>())[0]), pids.end());
  node->kill(SIGKILL);
  node->wait_for_exit(5s);
  for (auto pid : pids)
    EXPECT_TRUE(eventually([pid] { return process_gone(pid); })) << "process " << pid << " outlived the node";
}

TEST_F(serve_test, SessionsThroughTheNodeAnswerInOrderAndEndWithTheirConnection) {
  ASSERT_TRUE(start_node()) << ready_line;
  auto value = [](const tensor_map& m, const char* name) {
    return (*m.at(name).values<int64_t>())[0];
  };
  auto chunk = *tensor::from_values<float>({1.f, 2.f, 3.f});
  auto sessions_open = [&](client& c, const registry_actor& reg) {
    auto status = c.status(reg);
    for (const auto& m : status["models"])
      if (m["key"] == "stream")
        return m["sessions"].get<int>();
    return -1;
  };
  {
    client c;
    auto reg = c.connect(uri());
    ASSERT_TRUE(reg);
    blocking_client caller{*c.sys, *reg};
    ASSERT_TRUE(caller.direct());
    // Loaded on first open, as a load by name is.
    auto a = caller.open_session("stream");
    ASSERT_TRUE(a) << describe(a.error());
    auto b = caller.open_session("stream");
    ASSERT_TRUE(b) << describe(b.error());
    auto busy = caller.open_session("stream");
    ASSERT_FALSE(busy);
    EXPECT_TRUE(is(busy.error(), errc::busy)) << describe(busy.error());
    for (int i = 1; i <= 3; ++i) {
      auto p = a->push({{"x", chunk}});
      ASSERT_TRUE(p) << describe(p.error());
      EXPECT_EQ(value(*p, "count"), i);
      EXPECT_EQ(value(*p, "total"), 3 * i);
    }
    auto pa = value(*a->push({{"x", chunk}}), "pid");
    auto pb = value(*b->push({{"x", chunk}}), "pid");
    EXPECT_NE(pa, pb);
    auto final = a->finish();
    ASSERT_TRUE(final) << describe(final.error());
    EXPECT_EQ(value(*final, "count"), 4);
    auto again = a->push({{"x", chunk}});
    ASSERT_FALSE(again);
    EXPECT_TRUE(is(again.error(), errc::invalid_argument));
    EXPECT_EQ(sessions_open(c, *reg), 1);
    // b is cancelled as it goes out of scope (a client killed with its
    // sessions open: python/tests/test_client.py).
  }
  client c;
  auto reg = c.connect(uri());
  ASSERT_TRUE(reg);
  EXPECT_TRUE(eventually([&] { return sessions_open(c, *reg) == 0; }));
  blocking_client caller{*c.sys, *reg};
  auto x = caller.open_session("stream");
  auto y = caller.open_session("stream");
  EXPECT_TRUE(x && y);
}

TEST_F(serve_test, OneClientsSessionsOnTwoModelsHaveTheirOwnIdsAndModels) {
  ASSERT_TRUE(start_node()) << ready_line;
  client c;
  auto reg = c.connect(uri());
  ASSERT_TRUE(reg);
  blocking_client caller{*c.sys, *reg};
  auto count = [](const caf::expected<tensor_map>& m) {
    return m ? (*m->at("count").values<int64_t>())[0] : -1;
  };
  auto chunk = tensor_map{{"x", *tensor::from_values<float>({1.f})}};
  auto a = caller.open_session("stream");
  ASSERT_TRUE(a) << describe(a.error());
  auto b = caller.open_session("stream-too");
  ASSERT_TRUE(b) << describe(b.error());
  // Session ids are the node's, not each model's: two models' first
  // sessions do not share an id, and each chunk reaches its own model.
  EXPECT_NE(a->id(), b->id());
  EXPECT_EQ(count(a->push(chunk)), 1);
  EXPECT_EQ(count(a->push(chunk)), 2);
  EXPECT_EQ(count(b->push(chunk)), 1);
  EXPECT_EQ(count(a->finish()), 2);
  EXPECT_EQ(count(b->finish()), 1);
}

TEST_F(serve_test, BlockingClientTakesTheDirectPathAndFailsLikeTheProxy) {
  ASSERT_TRUE(start_node()) << ready_line;
  client c;
  auto reg = c.connect(uri());
  ASSERT_TRUE(reg);
  // Holding handles: both paths name their lease, and the node hands each
  // request straight to the model.
  auto gain = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"gain"}, model_spec{});
  ASSERT_TRUE(gain) << describe(gain.error());
  auto h = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"slow-infer"}, model_spec{});
  ASSERT_TRUE(h) << describe(h.error());
  blocking_client caller{*c.sys, *reg};
  ASSERT_TRUE(caller.direct());
  auto on_lease = [&] {
    auto json = remote_status_json(*c.sys, *reg);
    EXPECT_TRUE(json) << describe(json.error());
    return json ? nlohmann::json::parse(*json)["gateway"]["requests_on_lease"].get<uint64_t>() : 0;
  };
  auto before = on_lease();
  // Threads on the direct path and requests through the proxy at once: every
  // answer is its own caller's.
  std::vector<std::future<int>> workers;
  for (int t = 0; t < 4; ++t)
    workers.push_back(std::async(std::launch::async, [&, t] {
      int wrong = 0;
      for (int i = 0; i < 200; ++i) {
        auto v = static_cast<float>(t * 1000 + i);
        auto x = *tensor::from_values<float>({v, v + 0.5f});
        auto out = t % 2 == 0
                     ? caller.infer("gain", tensor_map{{"audio", x}}, 30s)
                     : c.ask<tensor_map>(*reg, infer_atom::value, std::string{"gain"},
                                         tensor_map{{"audio", x}});
        if (!out || out->count("audio") == 0)
          ++wrong;
        else if (auto y = out->at("audio").values<float>(); !y || (*y)[0] != 2 * v || (*y)[1] != 2 * v + 1)
          ++wrong;
      }
      return wrong;
    }));
  for (auto& w : workers)
    EXPECT_EQ(w.get(), 0);
  EXPECT_EQ(on_lease() - before, 800u) << "every request of both paths went on its lease";
  // Bad input gets the node's error; a short timeout, modelreg's timeout.
  auto bad = caller.infer("gain", tensor_map{{"audio", *tensor::from_values<int32_t>({1})}}, 30s);
  ASSERT_FALSE(bad);
  EXPECT_TRUE(is(bad.error(), errc::invalid_argument)) << describe(bad.error());
  auto x = *tensor::from_values<float>({1.f});
  auto late = caller.infer("slow-infer", tensor_map{{"x", x}}, 50ms);
  ASSERT_FALSE(late);
  EXPECT_TRUE(is(late.error(), errc::timeout)) << describe(late.error());
  // Callers waiting when the worker dies fail at once; new calls too.
  std::vector<std::future<caf::expected<tensor_map>>> calls;
  for (int i = 0; i < 4; ++i)
    calls.push_back(std::async(std::launch::async, [&] {
      return caller.infer("slow-infer", tensor_map{{"x", x}}, 60s);
    }));
  ASSERT_TRUE(eventually([&] {
    auto st = stats_of(*c.sys, *reg);
    return st && st->requests_in_flight == 4;
  }));
  node->kill(SIGKILL);
  for (auto& f : calls) {
    ASSERT_EQ(f.wait_for(10s), std::future_status::ready);
    auto r = f.get();
    ASSERT_FALSE(r);
    EXPECT_TRUE(is(r.error(), errc::unavailable)) << describe(r.error());
  }
  auto refused = caller.infer("gain", tensor_map{{"audio", x}}, 30s);
  ASSERT_FALSE(refused);
  EXPECT_TRUE(is(refused.error(), errc::unavailable)) << describe(refused.error());
  node->wait_for_exit(5s);
  // The proxy reconnects; the same blocking client works again.
  ASSERT_TRUE(start_node()) << ready_line;
  EXPECT_TRUE(eventually([&] {
    (void) c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"gain"}, model_spec{});
    return static_cast<bool>(caller.infer("gain", tensor_map{{"audio", x}}, 30s));
  }));
  // Nothing is left waiting (the proxy's own fire-and-forget releases for
  // the handles dropped above may still be on their way: wait for them).
  EXPECT_TRUE(eventually([&] {
    auto st = stats_of(*c.sys, *reg);
    return st && st->requests_in_flight == 0;
  }));
}

TEST_F(serve_test, KilledClientsLeasesAndMemoryAreReclaimed) {
  ASSERT_TRUE(start_node()) << ready_line;
  client c;
  auto reg = c.connect(uri());
  ASSERT_TRUE(reg);
  // A client process that holds a handle and has sent input through shared
  // memory, then waits (it got "echo" and answered "ready").
  child_process holder{{MODELREG_CLI, "__bench-serve-client", uri(), "echo", "1", "1", "1024",
                        dir + "/lat"}};
  ASSERT_EQ(holder.read_line(30s), "ready");
  auto s = c.status(*reg);
  EXPECT_EQ(handles_of(s, "echo"), 1u) << s.dump();
  EXPECT_EQ(s["connections"], 2);
  holder.kill(SIGKILL);
  EXPECT_TRUE(eventually([&] {
    auto now = c.status(*reg);
    return handles_of(now, "echo") == 0 && now["connections"] == 1 &&
           now["transport"]["loans_outstanding"] == 0;
  })) << c.status(*reg).dump();
  // Nobody holds it now: it can be unloaded (it would be evicted when idle).
  auto unloaded = c.ask<eviction_report>(*reg, unload_atom::value, std::string{"echo"});
  EXPECT_TRUE(unloaded) << describe(unloaded.error());
}

TEST_F(serve_test, GracefulStopAnswersWhatIsInFlightAndTellsClients) {
  ASSERT_TRUE(start_node()) << ready_line;
  client c;
  auto reg = c.connect(uri(), false);
  ASSERT_TRUE(reg);
  auto h = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"slow-infer"}, model_spec{});
  ASSERT_TRUE(h);
  auto x = *tensor::from_values<float>({5.f});
  auto call = std::async(std::launch::async, [&] {
    return c.ask<tensor_map>(*reg, infer_atom::value, std::string{"slow-infer"}, tensor_map{{"x", x}});
  });
  std::string seen;
  ASSERT_TRUE(eventually([&] {
    auto st = c.status(*reg);
    seen = st.dump();
    for (const auto& m : st["models"])
      if (m["key"] == "slow-infer" && m["in_flight"].get<uint64_t>() > 0)
        return true;
    return false;
  }, 3s)) << seen;
  node->kill(SIGTERM);
  auto r = call.get();
  ASSERT_TRUE(r) << describe(r.error()); // answered, not dropped
  EXPECT_EQ(r->at("x").values<float>()->front(), 5.f);
  ASSERT_TRUE(node->wait_for_exit(10s));
  EXPECT_FALSE(fs::exists(socket)); // nothing left behind
  auto after = c.ask<tensor_map>(*reg, infer_atom::value, std::string{"slow-infer"}, tensor_map{{"x", x}});
  ASSERT_FALSE(after);
  EXPECT_TRUE(is(after.error(), errc::unavailable)) << describe(after.error());
}

TEST_F(serve_test, TheSocketFolderIsNeverChangedAndUnsafeOnesOrNonSocketsAreRefused) {
  // An existing folder keeps its mode.
  auto open_dir = dir + "/shared";
  fs::create_directory(open_dir);
  ASSERT_EQ(::chmod(open_dir.c_str(), 0755), 0);
  socket = open_dir + "/node.sock";
  ASSERT_TRUE(start_node()) << ready_line;
  EXPECT_EQ(fs::status(open_dir).permissions() & fs::perms::all,
            fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
              fs::perms::others_read | fs::perms::others_exec);
  node->kill(SIGTERM);
  ASSERT_TRUE(node->wait_for_exit(10s));
  node.reset();
  // Writable by everyone without the sticky bit: another user could swap
  // the socket. Refused, and left as it was.
  auto unsafe = dir + "/unsafe";
  fs::create_directory(unsafe);
  ASSERT_EQ(::chmod(unsafe.c_str(), 0777), 0);
  EXPECT_EQ(run({"serve", "--socket", unsafe + "/node.sock"}).code, 1);
  EXPECT_EQ(fs::status(unsafe).permissions() & fs::perms::all, fs::perms::all);
  // A file that is not a socket is never removed.
  auto file = dir + "/notes.txt";
  std::ofstream{file} << "mine";
  EXPECT_EQ(run({"serve", "--socket", file}).code, 1);
  std::ifstream in{file};
  std::string text;
  in >> text;
  EXPECT_EQ(text, "mine");
}

TEST_F(serve_test, SecondNodeOnTheSameSocketIsRefused) {
  ASSERT_TRUE(start_node()) << ready_line;
  auto second = run({"serve", "--socket", socket});
  EXPECT_EQ(second.code, 1);
}

// -- TCP and TLS --------------------------------------------------------------

/// Makes a CA and a certificate signed by it, with the openssl tool.
void make_pki(const std::string& dir, const std::string& name) {
  auto sh = [](const std::string& cmd) {
    ASSERT_EQ(std::system((cmd + " >/dev/null 2>&1").c_str()), 0) << cmd;
  };
  auto p = dir + "/" + name;
  sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=" + name + "-ca -keyout " + p +
     "-ca.key -out " + p + "-ca.pem");
  for (const char* who : {"server", "client"}) {
    auto w = p + "-" + who;
    sh("openssl req -newkey rsa:2048 -nodes -subj /CN=" + std::string{who} + " -keyout " + w +
       ".key -out " + w + ".csr");
    sh("openssl x509 -req -in " + w + ".csr -CA " + p + "-ca.pem -CAkey " + p +
       "-ca.key -CAcreateserial -days 2 -out " + w + ".pem");
  }
}

TEST_F(serve_test, TcpWithMutualTlsAcceptsOnlyCertificatesOfItsCa) {
  make_pki(dir, "good");
  make_pki(dir, "evil");
  auto g = dir + "/good";
  auto e = dir + "/evil";
  ASSERT_TRUE(start_node({"--tcp", "127.0.0.1:0", "--tls-cert", g + "-server.pem", "--tls-key",
                          g + "-server.key", "--tls-ca", g + "-ca.pem"}))
    << ready_line;
  auto port = tcp_port();
  ASSERT_NE(port, 0) << ready_line;
  auto tcp_uri = "tcp://127.0.0.1:" + std::to_string(port);
  // Right CA: the same interface as over the Unix socket, tensors inline.
  client ok{true, g + "-client.pem", g + "-client.key", g + "-ca.pem"};
  auto reg = ok.connect(tcp_uri, false);
  ASSERT_TRUE(reg) << describe(reg.error());
  auto h = ok.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"gain"}, model_spec{});
  ASSERT_TRUE(h) << describe(h.error());
  auto infer = [&] {
    return ok.ask<tensor_map>(*reg, infer_atom::value, std::string{"gain"},
                              tensor_map{{"audio", *tensor::from_values<float>({1.f, 2.f})}});
  };
  auto out = infer();
  ASSERT_TRUE(out) << describe(out.error());
  EXPECT_EQ(out->at("audio").values<float>()->back(), 4.f);
  // Holding the handle, the request named its lease over TCP too.
  auto json = remote_status_json(*ok.sys, *reg);
  ASSERT_TRUE(json) << describe(json.error());
  EXPECT_EQ(nlohmann::json::parse(*json)["gateway"]["requests_on_lease"].get<uint64_t>(), 1u);
  for (int i = 0; i < 3; ++i) {
    // A certificate from another CA is refused.
    client evil{true, e + "-client.pem", e + "-client.key", e + "-ca.pem"};
    auto bad = evil.connect(tcp_uri, false);
    ASSERT_FALSE(bad);
    EXPECT_TRUE(is(bad.error(), errc::unavailable)) << describe(bad.error());
  }
  {
    // Plain TCP to the TLS port is refused.
    client plain{true};
    auto bad = plain.connect(tcp_uri, false);
    ASSERT_FALSE(bad);
    EXPECT_TRUE(is(bad.error(), errc::unavailable)) << describe(bad.error());
  }
  // The refused handshakes cost the connected client nothing: CAF 0.17 left
  // their OpenSSL errors queued on the node's network thread, and the next
  // read on any other TLS connection failed on them
  // (actors/modelreg/actors/detail/openssl_errors.cpp).
  for (int i = 0; i < 3; ++i) {
    out = infer();
    ASSERT_TRUE(out) << "request " << i << " after the refused peers: " << describe(out.error());
    EXPECT_EQ(out->at("audio").values<float>()->back(), 4.f);
  }
}

TEST_F(serve_test, PlainTcpOnAPublicAddressAndBadCertificatesAreRefusedAtStart) {
  auto plain = run({"serve", "--socket", socket, "--tcp", "0.0.0.0:0"});
  EXPECT_EQ(plain.code, 1);
  auto missing = run({"serve", "--socket", socket, "--tcp", "127.0.0.1:0", "--tls-cert",
                      dir + "/nope.pem", "--tls-key", dir + "/nope.key", "--tls-ca",
                      dir + "/nope.pem"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_FALSE(fs::exists(socket));
}

TEST_F(serve_test, SessionsOverTcpGoThroughTheHandle) {
  ASSERT_TRUE(start_node({"--tcp", "127.0.0.1:0"})) << ready_line;
  client c{true};
  auto reg = c.connect("tcp://127.0.0.1:" + std::to_string(tcp_port()), false);
  ASSERT_TRUE(reg) << describe(reg.error());
  auto h = c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"stream"}, model_spec{});
  ASSERT_TRUE(h) << describe(h.error());
  auto count = [](const caf::expected<tensor_map>& m) {
    return m ? (*m->at("count").values<int64_t>())[0] : -1;
  };
  auto chunk = tensor_map{{"x", *tensor::from_values<float>({1.f})}};
  auto a = h->open_session();
  ASSERT_TRUE(a) << describe(a.error());
  auto b = h->open_session();
  ASSERT_TRUE(b) << describe(b.error());
  EXPECT_NE(a->id(), b->id());
  EXPECT_EQ(count(a->push(chunk)), 1);
  EXPECT_EQ(count(b->push(chunk)), 1);
  EXPECT_EQ(count(a->push(chunk)), 2);
  EXPECT_EQ(count(a->finish()), 2);
  auto again = a->push(chunk);
  ASSERT_FALSE(again);
  EXPECT_TRUE(is(again.error(), errc::invalid_argument)) << describe(again.error());
  // With a third session both instances are taken until one ends.
  auto c3 = h->open_session();
  ASSERT_TRUE(c3) << describe(c3.error());
  auto busy = h->open_session(std::chrono::milliseconds{0});
  ASSERT_FALSE(busy);
  EXPECT_TRUE(is(busy.error(), errc::busy)) << describe(busy.error());
  b->cancel();
  auto next = h->open_session(std::chrono::seconds{10});
  ASSERT_TRUE(next) << describe(next.error());
  EXPECT_EQ(count(next->push(chunk)), 1);
}

// CAF 0.17 closes a TCP connection it is still opening with
// `connection_timeout` when a BASP heartbeat tick of the connecting system
// comes before the peer's handshake. A node's loaders connect to members
// with heartbeats on: connect() tries again within its timeout. With ticks
// every millisecond about one first connect in five failed before.
TEST_F(serve_test, TcpConnectsSucceedWhileTheCallersHeartbeatsTick) {
#ifdef MODELREG_SANITIZED
  GTEST_SKIP() << "CAF 0.17 leaks each connection it closes this way (LeakSanitizer reports "
                  "its scribe and the BASP broker it keeps); the default build runs this test";
#endif
  ASSERT_TRUE(start_node({"--tcp", "127.0.0.1:0"})) << ready_line;
  auto uri = "tcp://127.0.0.1:" + std::to_string(tcp_port());
  for (int i = 0; i < 20; ++i) { // a fresh system each time: CAF reuses a node's connection
    system_config cfg;
    cfg.load<caf::io::middleman>();
    cfg.set("middleman.heartbeat-interval", caf::timespan{1ms});
    cfg.set("middleman.connection-timeout", caf::timespan{10s});
    caf::actor_system sys{cfg};
    connect_options o;
    o.reconnect = false;
    auto reg = modelreg::connect(sys, uri, o);
    ASSERT_TRUE(reg) << "connect #" << i << ": " << describe(reg.error());
    auto h = modelreg::ask<model_handle>(sys, *reg, timeouts::request, "the node",
                                         get_or_load_atom::value, std::string{"gain"}, model_spec{});
    EXPECT_TRUE(h) << describe(h.error());
    caf::anon_send(*reg, shutdown_atom::value);
  }
}

TEST_F(serve_test, KilledTcpWorkerFailsCallersAtOnce) {
  ASSERT_TRUE(start_node({"--tcp", "127.0.0.1:0"})) << ready_line;
  client c{true};
  auto reg = c.connect("tcp://127.0.0.1:" + std::to_string(tcp_port()), false);
  ASSERT_TRUE(reg) << describe(reg.error());
  ASSERT_TRUE(c.ask<model_handle>(*reg, get_or_load_atom::value, std::string{"slow-infer"}, model_spec{}));
  auto x = *tensor::from_values<float>({1.f});
  auto call = std::async(std::launch::async, [&] {
    return c.ask<tensor_map>(*reg, infer_atom::value, std::string{"slow-infer"}, tensor_map{{"x", x}});
  });
  std::this_thread::sleep_for(100ms);
  node->kill(SIGKILL);
  ASSERT_EQ(call.wait_for(10s), std::future_status::ready);
  auto r = call.get();
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::unavailable)) << describe(r.error());
}

// -- the operator's CLI --------------------------------------------------------

TEST_F(serve_test, CliCommandsAgainstALiveNode) {
  ASSERT_TRUE(start_node()) << ready_line;
  auto sock = std::string{"--socket"};
  auto ls = run({"ls", "--json", sock, socket});
  ASSERT_EQ(ls.code, 0);
  auto names = nlohmann::json::parse(ls.out);
  ASSERT_EQ(names.size(), 9u);
  EXPECT_EQ(names[0]["state"], "available");

  auto load = run({"load", "gain", "--json", sock, socket});
  ASSERT_EQ(load.code, 0) << load.out;
  EXPECT_EQ(nlohmann::json::parse(load.out)["description"], "gain(x2)");
  EXPECT_EQ(run({"load", "nope", sock, socket}).code, 1);
  EXPECT_EQ(run({"load", "broken", sock, socket}).code, 1);

  auto input = dir + "/in.npy";
  ASSERT_FALSE(npy::save(input, *tensor::from_values<float>({1.f, 2.f, 3.f, 4.f}, {2, 2})));
  auto inferred = run({"infer", "gain", "--input", "audio=" + input, "--output", dir + "/out",
                       "--json", sock, socket});
  ASSERT_EQ(inferred.code, 0) << inferred.out;
  auto report = nlohmann::json::parse(inferred.out);
  EXPECT_EQ(report["outputs"]["audio"]["shape"], nlohmann::json::array({2, 2}));
  auto result = npy::load(dir + "/out/audio.npy");
  ASSERT_TRUE(result) << describe(result.error());
  auto v = result->values<float>();
  ASSERT_TRUE(v);
  EXPECT_EQ(std::vector<float>(v->begin(), v->end()), (std::vector<float>{2, 4, 6, 8}));
  // Wrong dtype: the model's clear error, exit 1.
  auto ints = dir + "/ints.npy";
  ASSERT_FALSE(npy::save(ints, *tensor::from_values<int16_t>({1, 2})));
  EXPECT_EQ(run({"infer", "gain", "--input", "audio=" + ints, sock, socket}).code, 1);
  EXPECT_EQ(run({"infer", "gain", "--input", "audio=" + dir + "/missing.npy", sock, socket}).code, 1);

  auto status = run({"status", "--json", sock, socket});
  ASSERT_EQ(status.code, 0);
  auto s = nlohmann::json::parse(status.out);
  ASSERT_EQ(s["models"].size(), 1u);
  EXPECT_EQ(s["models"][0]["key"], "gain");
  EXPECT_EQ(s["models"][0]["requests"], 1); // the i16 input was refused by the CLI, unsent
  EXPECT_EQ(s["totals"]["loads"], 1);
  EXPECT_TRUE(s.contains("connections"));
  EXPECT_TRUE(s["models"][0].contains("latency_p99_us"));
  auto watch = run({"status", "--watch", "--json", "--count", "2", "--interval", "50ms", sock, socket});
  ASSERT_EQ(watch.code, 0);
  EXPECT_GE(std::count(watch.out.begin(), watch.out.end(), '\n'), 2);
  auto table = run({"status", sock, socket});
  ASSERT_EQ(table.code, 0);
  EXPECT_NE(table.out.find("gain"), std::string::npos);

  auto unload = run({"unload", "gain", sock, socket});
  EXPECT_EQ(unload.code, 0) << unload.out;
  EXPECT_EQ(run({"unload", "gain", sock, socket}).code, 1); // not loaded any more
  // No node, usage errors.
  EXPECT_EQ(run({"status", sock, dir + "/nobody.sock"}).code, 3);
  EXPECT_EQ(run({"load", sock, socket}).code, 2);
  EXPECT_EQ(run({"infer", "gain", sock, socket}).code, 2);
  EXPECT_EQ(run({"load", "--help"}).code, 0);
}

} // namespace
} // namespace modelreg::test

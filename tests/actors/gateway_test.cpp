// The registry served over the shared-memory transport: frames become
// ordinary typed requests to the registry, tensors are read in place, and
// remote leases belong to their connection.
#include <filesystem>
#include <future>

#include <nlohmann/json.hpp>

#include "actors/registry_fixture.hpp"
#include "modelreg/actors/gateway.hpp"
#include "modelreg/transport/rpc.hpp"

namespace modelreg::test {
namespace {

using namespace std::chrono_literals;
using namespace modelreg::transport;

class gateway_test : public registry_test {
protected:
  /// What the gateway under test is started with.
  virtual gateway_options options() { return {}; }

  void SetUp() override {
    char tmpl[] = "/tmp/modelreg-gw-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir = tmpl;
    path = dir + "/run/registry.sock";
    start();
    server_ep = endpoint::start();
    auto gw = spawn_shm_gateway(sys, sut->actor(), server_ep, path, options());
    ASSERT_TRUE(gw) << describe(gw.error());
    gateway = *gw;
    client_ep = endpoint::start();
    auto c = rpc_client::connect(client_ep, path);
    ASSERT_TRUE(c) << describe(c.error());
    client = *c;
  }

  void TearDown() override {
    client.reset();
    client_ep->stop();
    server_ep->stop();
    caf::anon_send(gateway, shutdown_atom::value);
    registry_test::TearDown();
    std::filesystem::remove_all(dir);
  }

  caf::expected<frame_ptr> get_or_load(const std::string& key, const model_spec& spec) {
    return client->call([&](outgoing_frame&, wire::Request::Builder req) -> caf::error {
      auto g = req.initGetOrLoad();
      g.setKey(key);
      put_spec(g.initSpec(), spec);
      return {};
    });
  }

  caf::expected<frame_ptr> infer(const std::string& key, const tensor_map& inputs,
                                 std::chrono::milliseconds timeout = 30s) {
    return client->call(
      [&](outgoing_frame& f, wire::Request::Builder req) {
        auto r = req.initInfer();
        r.setKey(key);
        return f.put_tensors(r.initInputs(static_cast<uint32_t>(inputs.size())), inputs);
      },
      timeout);
  }

  /// An Infer that names `lease` (0: none), on `on` (default: `client`).
  caf::expected<frame_ptr> infer_on(uint64_t lease, const std::string& key,
                                    const tensor_map& inputs, rpc_client* on = nullptr,
                                    std::chrono::milliseconds timeout = 30s) {
    return (on != nullptr ? on : client.get())
      ->call(
        [&](outgoing_frame& f, wire::Request::Builder req) {
          auto r = req.initInfer();
          r.setKey(key);
          r.setLease(lease);
          return f.put_tensors(r.initInputs(static_cast<uint32_t>(inputs.size())), inputs);
        },
        timeout);
  }

  /// A Release of `lease` on `client`.
  caf::expected<frame_ptr> release(uint64_t lease) {
    return client->call([&](outgoing_frame&, wire::Request::Builder req) -> caf::error {
      req.setRelease(lease);
      return {};
    });
  }

  /// The lease of a successful get_or_load answer (0 otherwise).
  static uint64_t lease_of(const caf::expected<frame_ptr>& loaded) {
    if (!loaded || !(*loaded)->root().getResponse().isHandle())
      return 0;
    return (*loaded)->root().getResponse().getHandle().getLease();
  }

  uint64_t in_flight_of(const std::string& key) {
    for (const auto& m : snapshot().models)
      if (m.key == key)
        return m.in_flight;
    return 0;
  }

  uint64_t handles_of(const std::string& key) {
    for (const auto& m : snapshot().models)
      if (m.key == key)
        return m.handles;
    return 0;
  }

  std::string dir;
  std::string path;
  std::shared_ptr<endpoint> server_ep;
  std::shared_ptr<endpoint> client_ep;
  std::shared_ptr<rpc_client> client;
  gateway_actor gateway;
};

TEST_F(gateway_test, RemoteCallerLoadsBySpecAndInfersOnSharedMemoryTensors) {
  auto loaded = get_or_load("gain", {"gain", {{"gain", "2"}}});
  ASSERT_TRUE(loaded) << describe(loaded.error());
  auto resp = (*loaded)->root().getResponse();
  ASSERT_TRUE(resp.isHandle()) << (resp.isError() ? resp.getError().getMessage().cStr() : "");
  EXPECT_EQ(std::string{resp.getHandle().getKey().cStr()}, "gain");
  EXPECT_EQ(handles_of("gain"), 1u);
  auto audio = client->connection()->allocate_tensor(dtype::f32, {4});
  ASSERT_TRUE(audio);
  auto v = *audio->mutable_values<float>();
  for (size_t i = 0; i < 4; ++i)
    v[i] = static_cast<float>(i) - 1.5f;
  auto out = infer("gain", {{"audio", *audio}});
  ASSERT_TRUE(out) << describe(out.error());
  auto r = (*out)->root().getResponse();
  ASSERT_TRUE(r.isOutputs()) << (r.isError() ? r.getError().getMessage().cStr() : "");
  auto tensors = (*out)->tensors(r.getOutputs());
  ASSERT_TRUE(tensors);
  auto y = tensors->at("audio").values<float>();
  ASSERT_TRUE(y);
  EXPECT_EQ(std::vector<float>(y->begin(), y->end()), (std::vector<float>{-3.f, -1.f, 1.f, 3.f}));
  EXPECT_TRUE((*out)->in_readonly_mapping(tensors->at("audio")));
  EXPECT_EQ(client_ep->counters().copied_bytes.load(), 0u) << "inputs must go by reference";
  EXPECT_EQ(snapshot().totals.loads, 1u);
}

TEST_F(gateway_test, ErrorsCrossTheHopAsTypedCodes) {
  auto x = client->connection()->allocate_tensor(dtype::f32, {1});
  auto out = infer("nothing-loaded", {{"audio", *x}});
  ASSERT_TRUE(out);
  auto r = (*out)->root().getResponse();
  ASSERT_TRUE(r.isError());
  EXPECT_EQ(r.getError().getCode(), static_cast<uint8_t>(errc::model_not_found));
  auto bad = get_or_load("x", {"no-such-backend", {}});
  ASSERT_TRUE(bad);
  ASSERT_TRUE((*bad)->root().getResponse().isError());
  EXPECT_EQ((*bad)->root().getResponse().getError().getCode(),
            static_cast<uint8_t>(errc::backend_not_found));
}

TEST_F(gateway_test, RemoteLeasesAreReleasedOnRequestAndWhenTheConnectionCloses) {
  auto a = get_or_load("m", {"identity", {}});
  auto b = get_or_load("m", {"identity", {}});
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  EXPECT_EQ(handles_of("m"), 2u);
  auto lease = (*a)->root().getResponse().getHandle().getLease();
  auto released = release(lease);
  ASSERT_TRUE(released);
  EXPECT_TRUE((*released)->root().getResponse().isOk());
  EXPECT_TRUE(eventually([&] { return handles_of("m") == 1; }));
  client->close();
  EXPECT_TRUE(eventually([&] { return handles_of("m") == 0; }))
    << "a closed connection must release its leases";
}

uint8_t error_code_of(const caf::expected<frame_ptr>& reply) {
  if (!reply || !(*reply)->root().getResponse().isError())
    return 0;
  return (*reply)->root().getResponse().getError().getCode();
}

bool has_outputs(const caf::expected<frame_ptr>& reply) {
  return reply && (*reply)->root().getResponse().isOutputs();
}

TEST_F(gateway_test, AnInferOnALeaseTheConnectionDoesNotHoldIsRefusedAndTheConnectionGoesOn) {
  auto mine = lease_of(get_or_load("m", {"identity", {}}));
  ASSERT_NE(mine, 0u);
  auto x = client->connection()->allocate_tensor(dtype::f32, {2});
  ASSERT_TRUE(x);
  // On its own lease: straight to the model.
  EXPECT_TRUE(has_outputs(infer_on(mine, "m", {{"x", *x}})));
  // Forged: never issued to anyone.
  EXPECT_EQ(error_code_of(infer_on(mine + 1000, "m", {{"x", *x}})),
            static_cast<uint8_t>(errc::handle_released));
  // Foreign: another connection's lease, refused the same way.
  auto other = rpc_client::connect(client_ep, path);
  ASSERT_TRUE(other) << describe(other.error());
  auto theirs = lease_of((*other)->call([&](outgoing_frame&, wire::Request::Builder req) {
    auto g = req.initGetOrLoad();
    g.setKey("m");
    put_spec(g.initSpec(), {"identity", {}});
    return caf::error{};
  }));
  ASSERT_NE(theirs, 0u);
  EXPECT_EQ(error_code_of(infer_on(theirs, "m", {{"x", *x}})),
            static_cast<uint8_t>(errc::handle_released));
  auto y = (*other)->connection()->allocate_tensor(dtype::f32, {2});
  EXPECT_TRUE(has_outputs(infer_on(theirs, "m", {{"x", *y}}, other->get())))
    << "the owner of the lease still uses it";
  // A lease on another key than the frame names.
  EXPECT_EQ(error_code_of(infer_on(mine, "not-m", {{"x", *x}})),
            static_cast<uint8_t>(errc::invalid_argument));
  // Revoked: released by its holder.
  auto released = release(mine);
  ASSERT_TRUE(released);
  ASSERT_TRUE((*released)->root().getResponse().isOk());
  EXPECT_EQ(error_code_of(infer_on(mine, "m", {{"x", *x}})),
            static_cast<uint8_t>(errc::handle_released));
  // The connection keeps working: by key, and on a new lease.
  EXPECT_TRUE(has_outputs(infer_on(0, "m", {{"x", *x}})));
  auto again = lease_of(get_or_load("m", {"identity", {}}));
  ASSERT_NE(again, 0u);
  EXPECT_TRUE(has_outputs(infer_on(again, "m", {{"x", *x}})));
  (*other)->close();
}

TEST_F(gateway_test, AQuickModelIsRunByTheThreadThatDecodedTheRequestAndCountedAsAnyOther) {
  auto status = [&] {
    auto r = client->call([](outgoing_frame&, wire::Request::Builder req) -> caf::error {
      req.setStatus();
      return {};
    });
    return r && (*r)->root().getResponse().isStatusJson()
             ? nlohmann::json::parse((*r)->root().getResponse().getStatusJson().cStr())
             : nlohmann::json{};
  };
  auto run_here = [&] { return status()["gateway"]["requests_run_here"].get<uint64_t>(); };
  auto model_status = [&](const std::string& key) {
    for (const auto& m : snapshot().models)
      if (m.key == key)
        return m;
    return modelreg::model_status{};
  };
  auto requests_of = [&](const std::string& key) { return model_status(key).requests; };
  // gain: quick and thread-safe.
  auto quick = lease_of(get_or_load("gain", {"gain", {{"gain", "2"}}}));
  ASSERT_NE(quick, 0u);
  auto audio = client->connection()->allocate_tensor(dtype::f32, {4});
  ASSERT_TRUE(audio);
  for (size_t i = 0; i < 4; ++i)
    (*audio->mutable_values<float>())[i] = static_cast<float>(i);
  for (int n = 0; n < 3; ++n) {
    auto out = infer_on(quick, "gain", {{"audio", *audio}});
    ASSERT_TRUE(has_outputs(out));
    auto t = (*out)->tensors((*out)->root().getResponse().getOutputs());
    ASSERT_TRUE(t);
    EXPECT_EQ((*t->at("audio").values<float>())[3], 6.f);
  }
  EXPECT_EQ(run_here(), 3u);
  EXPECT_EQ(requests_of("gain"), 3u) << "a request run here is counted in the model's status";
  // Its error is the model's, typed; the connection goes on.
  EXPECT_EQ(error_code_of(infer_on(quick, "gain", {{"not-audio", *audio}})),
            static_cast<uint8_t>(errc::invalid_argument));
  EXPECT_EQ(run_here(), 4u);
  EXPECT_EQ(model_status("gain").errors, 1u);
  // Inputs over quick_max_input_bytes go to the model actor.
  auto big = client->connection()->allocate_tensor(
    dtype::f32, {static_cast<int64_t>(quick_max_input_bytes / sizeof(float) + 1)});
  ASSERT_TRUE(big);
  EXPECT_TRUE(has_outputs(infer_on(quick, "gain", {{"audio", *big}})));
  EXPECT_EQ(run_here(), 4u);
  EXPECT_EQ(requests_of("gain"), 5u);
  // A model that is not thread-safe always goes to its actor.
  auto serial = lease_of(get_or_load("serial", {"identity", {}}));
  ASSERT_NE(serial, 0u);
  auto x = client->connection()->allocate_tensor(dtype::f32, {2});
  ASSERT_TRUE(x);
  EXPECT_TRUE(has_outputs(infer_on(serial, "serial", {{"x", *x}})));
  EXPECT_EQ(run_here(), 4u);
  EXPECT_EQ(requests_of("serial"), 1u);
}

/// A session step (push, finish or cancel) on `on` (default: `client`).
caf::expected<frame_ptr> step(rpc_client& on, wire::Request::Which op, uint64_t session,
                              const tensor_map& inputs = {}) {
  return on.call([&](outgoing_frame& f, wire::Request::Builder req) -> caf::error {
    switch (op) {
      case wire::Request::PUSH: {
        auto p = req.initPush();
        p.setSession(session);
        return f.put_tensors(p.initInputs(static_cast<uint32_t>(inputs.size())), inputs);
      }
      case wire::Request::FINISH_SESSION:
        req.setFinishSession(session);
        return {};
      default:
        req.setCancelSession(session);
        return {};
    }
  });
}

/// Output `name` of an answer (-1 if it has none).
int64_t output_of(const caf::expected<frame_ptr>& reply, const std::string& name) {
  if (!has_outputs(reply))
    return -1;
  auto outputs = (*reply)->tensors((*reply)->root().getResponse().getOutputs());
  if (!outputs || outputs->count(name) == 0)
    return -1;
  return (*outputs->at(name).values<int64_t>())[0];
}

TEST_F(gateway_test, SessionStepsOnASessionTheConnectionDidNotOpenOrEndedAreRefusedAndItGoesOn) {
  model_spec spec{"identity", {{"streaming", "true"}}};
  spec.instances = 2;
  auto h = sut->get_or_load("s", spec);
  ASSERT_TRUE(h) << describe(h.error());
  auto open = [](rpc_client& on) -> uint64_t {
    auto r = on.call([](outgoing_frame&, wire::Request::Builder req) -> caf::error {
      req.initOpenSession().setKey("s");
      return {};
    });
    return r && (*r)->root().getResponse().isSession() ? (*r)->root().getResponse().getSession()
                                                       : 0;
  };
  auto mine = open(*client);
  ASSERT_NE(mine, 0u);
  auto x = client->connection()->allocate_tensor(dtype::f32, {3});
  ASSERT_TRUE(x);
  EXPECT_EQ(output_of(step(*client, wire::Request::PUSH, mine, {{"x", *x}}), "count"), 1);
  auto refused = static_cast<uint8_t>(errc::invalid_argument);
  // Forged: never opened by anyone.
  EXPECT_EQ(error_code_of(step(*client, wire::Request::PUSH, mine + 1000, {{"x", *x}})), refused);
  // Foreign: another connection may not push to, finish or cancel it.
  auto other = rpc_client::connect(client_ep, path);
  ASSERT_TRUE(other) << describe(other.error());
  auto y = (*other)->connection()->allocate_tensor(dtype::f32, {3});
  ASSERT_TRUE(y);
  EXPECT_EQ(error_code_of(step(**other, wire::Request::PUSH, mine, {{"x", *y}})), refused);
  EXPECT_EQ(error_code_of(step(**other, wire::Request::FINISH_SESSION, mine)), refused);
  EXPECT_EQ(error_code_of(step(**other, wire::Request::CANCEL_SESSION, mine)), refused);
  // ... and its owner goes on where it was.
  EXPECT_EQ(output_of(step(*client, wire::Request::PUSH, mine, {{"x", *x}}), "count"), 2);
  // A chunk the model cannot take (no tensor): refused, the session goes on.
  EXPECT_EQ(error_code_of(step(*client, wire::Request::PUSH, mine)), refused);
  auto final = step(*client, wire::Request::FINISH_SESSION, mine);
  EXPECT_EQ(output_of(final, "count"), 2);
  // Ended: every later step is refused.
  EXPECT_EQ(error_code_of(step(*client, wire::Request::PUSH, mine, {{"x", *x}})), refused);
  EXPECT_EQ(error_code_of(step(*client, wire::Request::FINISH_SESSION, mine)), refused);
  // Cancelled: the same.
  auto next = open(*client);
  ASSERT_NE(next, 0u);
  auto cancelled = step(*client, wire::Request::CANCEL_SESSION, next);
  ASSERT_TRUE(cancelled) << describe(cancelled.error());
  EXPECT_TRUE((*cancelled)->root().getResponse().isOk());
  EXPECT_EQ(error_code_of(step(*client, wire::Request::PUSH, next, {{"x", *x}})), refused);
  // Both instances are free again: two sessions open at once.
  auto a = open(*client);
  auto b = open(**other);
  ASSERT_NE(a, 0u);
  ASSERT_NE(b, 0u);
  EXPECT_EQ(output_of(step(**other, wire::Request::PUSH, b, {{"x", *y}}), "count"), 1);
  // A connection that closes ends its sessions: its instance serves another.
  (*other)->close();
  EXPECT_TRUE(eventually([&] { return open(*client) != 0; }));
}

TEST_F(gateway_test, AModelActorThatDiesUnderLeasedRequestsStillAnswersEachOne) {
  auto g = std::make_shared<gate>();
  auto model = std::make_shared<counted_model>();
  model->hold_on(g);
  auto h = sut->get_or_load("held", [model]() -> caf::expected<model_ptr> { return model; });
  ASSERT_TRUE(h) << describe(h.error());
  auto lease = lease_of(get_or_load("held", {}));
  ASSERT_NE(lease, 0u);
  auto x = client->connection()->allocate_tensor(dtype::f32, {1});
  ASSERT_TRUE(x);
  std::vector<std::future<caf::expected<frame_ptr>>> calls;
  calls.push_back(std::async(std::launch::async, [&] { return infer_on(lease, "held", {{"x", *x}}); }));
  ASSERT_TRUE(eventually([&] { return model->max_concurrent() == 1; }));
  for (int i = 0; i < 3; ++i)
    calls.push_back(
      std::async(std::launch::async, [&] { return infer_on(lease, "held", {{"x", *x}}); }));
  ASSERT_TRUE(eventually([&] { return in_flight_of("held") == 4; }));
  // An urgent kill: the actor dies as soon as the running call returns,
  // with the other requests still in its mailbox.
  auto actor = caf::actor_cast<caf::strong_actor_ptr>(h->actor());
  actor->enqueue(nullptr, caf::make_message_id(caf::message_priority::high),
                 caf::make_message(caf::exit_msg{actor->address(), caf::exit_reason::kill}),
                 nullptr);
  g->open();
  size_t crashed = 0;
  for (auto& c : calls) {
    auto r = c.get();
    ASSERT_TRUE(r) << "every caller gets an answer: " << describe(r.error());
    if (has_outputs(r))
      continue;
    EXPECT_EQ(error_code_of(r), static_cast<uint8_t>(errc::model_crashed));
    ++crashed;
  }
  EXPECT_GE(crashed, 1u);
  // The connection's in-flight count went back: a new load and request work.
  h->release();
  auto again = lease_of(get_or_load("held", {"identity", {}}));
  ASSERT_NE(again, 0u);
  EXPECT_TRUE(has_outputs(infer_on(again, "held", {{"x", *x}})));
}

TEST_F(gateway_test, ALeaseWhoseModelLeftIsToldItIsGoneUntilACopyIsLoadedAgain) {
  auto old = lease_of(get_or_load("m", {"identity", {}}));
  ASSERT_NE(old, 0u);
  auto x = client->connection()->allocate_tensor(dtype::f32, {2});
  ASSERT_TRUE(x);
  ASSERT_TRUE(has_outputs(infer_on(old, "m", {{"x", *x}})));
  // The model actor dies: the registry drops the model.
  auto h = sut->get_or_load("m", model_spec{"identity", {}});
  ASSERT_TRUE(h) << describe(h.error());
  caf::anon_send_exit(h->actor(), caf::exit_reason::kill);
  ASSERT_TRUE(eventually([&] { return !h->valid(); }));
  ASSERT_TRUE(eventually([&] { return snapshot().models.empty(); }));
  auto said = [&](const caf::expected<frame_ptr>& reply) {
    return reply && (*reply)->root().getResponse().isError()
             ? std::string{(*reply)->root().getResponse().getError().getMessage().cStr()}
             : std::string{};
  };
  // Not "no model loaded under 'm'": the model the lease held is gone.
  auto r = infer_on(old, "m", {{"x", *x}});
  EXPECT_EQ(error_code_of(r), static_cast<uint8_t>(errc::model_crashed)) << said(r);
  EXPECT_NE(said(r).find("'m'"), std::string::npos) << said(r);
  EXPECT_NE(said(r).find("get it again"), std::string::npos) << said(r);
  // Without a lease it is the plain answer.
  EXPECT_EQ(error_code_of(infer_on(0, "m", {{"x", *x}})),
            static_cast<uint8_t>(errc::model_not_found));
  // Loaded again: the new lease runs on the new copy, and so does the old
  // one (a client names any lease it holds on the key).
  auto again = lease_of(get_or_load("m", {"identity", {}}));
  ASSERT_NE(again, 0u);
  EXPECT_TRUE(has_outputs(infer_on(again, "m", {{"x", *x}})));
  EXPECT_TRUE(has_outputs(infer_on(old, "m", {{"x", *x}})));
  // Giving the old lease back still works.
  auto released = release(old);
  ASSERT_TRUE(released);
  EXPECT_TRUE((*released)->root().getResponse().isOk());
}

class gateway_gone_client_test : public gateway_test {
protected:
  /// One client holds `caps`' model while another queues three requests and
  /// closes its connection: those three never reach the model.
  void drops_the_requests_of_a_client_that_went_away(model_capabilities caps) {
    auto g = std::make_shared<gate>();
    auto model = std::make_shared<counted_model>(1000, caps);
    model->hold_on(g);
    auto h = sut->get_or_load("held", [model]() -> caf::expected<model_ptr> { return model; });
    ASSERT_TRUE(h) << describe(h.error());
    auto mine = lease_of(get_or_load("held", {}));
    ASSERT_NE(mine, 0u);
    auto other = rpc_client::connect(client_ep, path);
    ASSERT_TRUE(other) << describe(other.error());
    auto theirs = lease_of((*other)->call([&](outgoing_frame&, wire::Request::Builder req) {
      req.initGetOrLoad().setKey("held");
      return caf::error{};
    }));
    ASSERT_NE(theirs, 0u);
    auto x = client->connection()->allocate_tensor(dtype::f32, {1});
    auto y = (*other)->connection()->allocate_tensor(dtype::f32, {1});
    ASSERT_TRUE(x && y);
    // This client's request holds the model ...
    auto first = std::async(std::launch::async, [&] { return infer_on(mine, "held", {{"x", *x}}); });
    ASSERT_TRUE(eventually([&] { return model->max_concurrent() == 1; }));
    // ... while the other client queues three and goes away.
    std::vector<std::future<caf::expected<frame_ptr>>> queued;
    for (int i = 0; i < 3; ++i)
      queued.push_back(std::async(std::launch::async, [&] {
        return infer_on(theirs, "held", {{"x", *y}}, other->get());
      }));
    ASSERT_TRUE(eventually([&] { return in_flight_of("held") == 4; }));
    (*other)->close();
    for (auto& c : queued) {
      // Closing fails the calls still waiting at once (not at their timeouts).
      auto r = c.get();
      ASSERT_FALSE(r) << "the closed client's calls fail on its side";
      EXPECT_TRUE(is(r.error(), errc::shutting_down)) << describe(r.error());
    }
    // The node noticed (the other client's lease went back).
    ASSERT_TRUE(eventually([&] { return handles_of("held") == 2; }));
    g->open();
    EXPECT_TRUE(has_outputs(first.get()));
    ASSERT_TRUE(eventually([&] { return in_flight_of("held") == 0; }));
    EXPECT_EQ(model->calls.load(), 1) << "the gone client's requests must not run";
    uint64_t abandoned = 0;
    for (const auto& m : snapshot().models)
      if (m.key == "held")
        abandoned = m.abandoned;
    EXPECT_EQ(abandoned, 3u);
    // The model goes on serving the client that stayed.
    EXPECT_TRUE(has_outputs(infer_on(mine, "held", {{"x", *x}})));
    EXPECT_EQ(model->calls.load(), 2);
  }
};

TEST_F(gateway_gone_client_test, RequestsQueuedByAClientThatWentAwayAreDroppedUnrun) {
  drops_the_requests_of_a_client_that_went_away({});
}

TEST_F(gateway_gone_client_test, BatchedRequestsOfAClientThatWentAwayAreDroppedUnrun) {
  drops_the_requests_of_a_client_that_went_away({false, false, true});
}

/// This connection's peer is not the node's owner: it gets the infer role.
class gateway_infer_role_test : public gateway_test {
protected:
  gateway_options options() override {
    gateway_options o;
    o.owner_uid = ::getuid() + 4242;
    o.max_in_flight_per_peer = 1;
    o.max_spec_params = 4;
    return o;
  }
};

TEST_F(gateway_infer_role_test, AnInferPeerMayNotLoadSpecsOrUnloadButMayInfer) {
  // The node's operator loads the model; the peer only uses it.
  auto h = sut->get_or_load("m", []() -> caf::expected<model_ptr> {
    return std::make_shared<counted_model>();
  });
  ASSERT_TRUE(h) << describe(h.error());
  auto spec_load = get_or_load("other", {"identity", {}});
  EXPECT_EQ(error_code_of(spec_load), static_cast<uint8_t>(errc::permission_denied));
  auto unload = client->call([&](outgoing_frame&, wire::Request::Builder req) -> caf::error {
    req.setUnload("m");
    return {};
  });
  EXPECT_EQ(error_code_of(unload), static_cast<uint8_t>(errc::permission_denied));
  // A catalog name is allowed (this registry has no catalog: not found).
  auto by_name = get_or_load("not-in-catalog", {});
  EXPECT_EQ(error_code_of(by_name), static_cast<uint8_t>(errc::model_not_found));
  auto x = client->connection()->allocate_tensor(dtype::f32, {1});
  auto out = infer("m", {{"x", *x}});
  ASSERT_TRUE(out) << describe(out.error());
  EXPECT_TRUE((*out)->root().getResponse().isOutputs());
  EXPECT_EQ(snapshot().totals.loads, 1u) << "the refused load must not have run";
}

TEST_F(gateway_infer_role_test, RequestsOverTheConnectionsInFlightLimitAreOverloaded) {
  auto g = std::make_shared<gate>();
  auto model = std::make_shared<counted_model>();
  model->hold_on(g);
  auto h = sut->get_or_load("held", [model]() -> caf::expected<model_ptr> { return model; });
  ASSERT_TRUE(h) << describe(h.error());
  auto x = client->connection()->allocate_tensor(dtype::f32, {1});
  auto first = std::async(std::launch::async, [&] { return infer("held", {{"x", *x}}); });
  // The first waits inside the model; a second is refused at once, not queued.
  ASSERT_TRUE(eventually([&] { return model->max_concurrent() == 1; }));
  auto second = infer("held", {{"x", *x}}, 5s);
  g->open();
  EXPECT_EQ(error_code_of(second), static_cast<uint8_t>(errc::overloaded));
  auto r = first.get();
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_TRUE((*r)->root().getResponse().isOutputs());
}

TEST_F(gateway_infer_role_test, ASpecWithTooManyParametersIsRefusedBeforeItIsRead) {
  model_spec spec{"", {}};
  for (int i = 0; i < 5; ++i)
    spec.params["p" + std::to_string(i)] = "1";
  auto r = get_or_load("x", spec);
  EXPECT_EQ(error_code_of(r), static_cast<uint8_t>(errc::invalid_argument));
}

} // namespace
} // namespace modelreg::test

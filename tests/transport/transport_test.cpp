// The shared-memory transport between real processes: tensors of every size
// cross without a copy, a killed peer leaves nothing behind, quotas, inline
// fallback, and hostile input.
#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>

#include <gtest/gtest.h>

#include <dlpack/dlpack.h>

#include "tools/transport_peer.hpp"
#include "tools/child_process.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/tensor/dlpack.hpp"
#include "modelreg/transport/rpc.hpp"
#include "test_support.hpp"

namespace modelreg::test {
namespace {

using namespace std::chrono_literals;
using namespace modelreg::transport;
using modelreg::tools::child_process;

std::set<std::string> dev_shm_entries() {
  std::set<std::string> result;
  for (const auto& e : std::filesystem::directory_iterator{"/dev/shm"})
    result.insert(e.path().filename().string());
  return result;
}

class transport_test : public ::testing::Test {
protected:
  transport_test() {
    char tmpl[] = "/tmp/modelreg-test-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr)
      throw std::runtime_error{"mkdtemp failed"};
    dir = tmpl;
    path = dir + "/run/echo.sock";
  }
  ~transport_test() override { std::filesystem::remove_all(dir); }

  /// Starts `modelreg __echo-server` in another process.
  std::unique_ptr<child_process> start_echo(std::vector<std::string> extra = {}) {
    std::vector<std::string> argv{MODELREG_CLI, "__echo-server", path};
    argv.insert(argv.end(), extra.begin(), extra.end());
    auto child = std::make_unique<child_process>(argv);
    EXPECT_EQ(child->read_line(), "ready");
    return child;
  }

  /// One echo round trip with "__verify": returns the reply frame.
  caf::expected<frame_ptr> echo(rpc_client& client, const tensor& t) {
    auto verify = client.connection()->allocate_tensor(dtype::u8, {1});
    if (!verify)
      return verify.error();
    return client.call([&](outgoing_frame& f, wire::Request::Builder req) {
      return f.put_tensors(req.initEcho(2), {{"x", t}, {"__verify", *verify}});
    });
  }

  std::string dir;
  std::string path;
};

tensor_map outputs_of(const frame_ptr& f) {
  auto resp = f->root().getResponse();
  EXPECT_TRUE(resp.isOutputs()) << (resp.isError() ? resp.getError().getMessage().cStr() : "");
  auto out = f->tensors(resp.getOutputs());
  EXPECT_TRUE(out) << describe(out.error());
  return out ? *out : tensor_map{};
}

template <class T>
T first(const tensor& t) {
  return (*t.values<T>())[0];
}

TEST_F(transport_test, TensorsOfEverySizeCrossBetweenProcessesWithoutACopy) {
  // Arrange
  auto server = start_echo();
  auto ep = endpoint::start();
  auto client = rpc_client::connect(ep, path);
  ASSERT_TRUE(client) << describe(client.error());
  ASSERT_TRUE((*client)->connection()->shared_memory());
  for (size_t size : {size_t{0}, size_t{1}, size_t{4096}, size_t{1} << 20, size_t{64} << 20,
                      size_t{256} << 20}) {
    SCOPED_TRACE("size " + std::to_string(size));
    auto t = (*client)->connection()->allocate_tensor(dtype::u8, {static_cast<int64_t>(size)});
    ASSERT_TRUE(t);
    auto bytes = t->mutable_data();
    for (size_t i = 0; i < size; i += 4096)
      bytes[i] = static_cast<std::byte>(i / 4096 * 7 + size);
    if (size > 0)
      bytes[size - 1] = std::byte{0x5a};
    auto expected = tools::checksum(t->data(), size);
    // Act
    auto reply = echo(**client, *t);
    // Assert
    ASSERT_TRUE(reply) << describe(reply.error());
    auto out = outputs_of(*reply);
    EXPECT_EQ(first<uint64_t>(out.at("__checksum")), expected) << "bytes changed on the way";
    EXPECT_EQ(first<uint8_t>(out.at("__in_mapping")), 1) << "receiver did not read in place";
    EXPECT_EQ(first<uint64_t>(out.at("__copied")), 0u) << "receiver copied bytes";
    // The reply's tensor is the server's memory, mapped read-only here.
    EXPECT_EQ(out.at("x").nbytes(), size);
    EXPECT_TRUE((*reply)->in_readonly_mapping(out.at("x")));
  }
  EXPECT_EQ(ep->counters().copied_bytes.load(), 0u);
  EXPECT_GE(ep->counters().zero_copy_tensors.load(), 12u);
  ep->stop();
}

TEST_F(transport_test, FallsBackToInlineTensorsWhenThePeerOffersNoSharedMemory) {
  auto server = start_echo({"--inline"});
  auto ep = endpoint::start();
  auto client = rpc_client::connect(ep, path);
  ASSERT_TRUE(client) << describe(client.error());
  EXPECT_FALSE((*client)->connection()->shared_memory());
  std::vector<uint8_t> data(100000);
  for (size_t i = 0; i < data.size(); ++i)
    data[i] = static_cast<uint8_t>(i * 31);
  auto t = tensor::from_values<uint8_t>(data);
  auto reply = echo(**client, *t);
  ASSERT_TRUE(reply) << describe(reply.error());
  auto out = outputs_of(*reply);
  EXPECT_EQ(first<uint64_t>(out.at("__checksum")), tools::checksum(t->data(), t->nbytes()));
  EXPECT_EQ(out.at("x").nbytes(), data.size());
  EXPECT_GE(ep->counters().copied_bytes.load(), data.size()) << "inline tensors are copied";
  ep->stop();
}

TEST_F(transport_test, KilledPeerIsReclaimedAtOnceAndLeavesNoFdsAndNothingInDevShm) {
  // libuv opens one process-wide pipe with the first loop; count after it.
  endpoint::start()->stop();
  auto shm_before = dev_shm_entries();
  auto fds_before = shm::open_fd_count();
  {
    // Arrange: this process serves; a client process holds 20 replies (our loans).
    auto ep = endpoint::start();
    auto* raw = ep.get();
    std::atomic<int> disconnects{0};
    ASSERT_FALSE(ep->listen(
      path, [raw](const connection_ptr& c, frame_ptr f) { tools::answer_echo(*raw, c, f); },
      [&](const connection_ptr&, const caf::error& err) {
        if (is(err, errc::peer_disconnected))
          ++disconnects;
      }));
    child_process holder{{MODELREG_CLI, "__hold", path, "20", "65536"}};
    ASSERT_EQ(holder.read_line(), "holding 20");
    EXPECT_GE(ep->stats().pool.loans_outstanding, 20u);
    // The holder keeps streaming requests: the kill lands mid-stream.
    std::this_thread::sleep_for(20ms);
    auto other_ep = endpoint::start();
    auto other = rpc_client::connect(other_ep, path);
    ASSERT_TRUE(other);
    // Act
    holder.kill(SIGKILL);
    auto killed = std::chrono::steady_clock::now();
    // Assert: every loan back within a second, and the other peer is served.
    EXPECT_TRUE(eventually([&] { return ep->stats().pool.loans_outstanding == 0; }, 1000ms))
      << ep->stats().pool.loans_outstanding << " loans still out";
    auto reclaim_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - killed)
                        .count();
    RecordProperty("reclaim_ms", static_cast<int>(reclaim_ms));
    EXPECT_TRUE(eventually([&] { return disconnects.load() == 1; })); // reported after reclaim
    auto t = (*other)->connection()->allocate_tensor(dtype::f32, {1024});
    ASSERT_TRUE(t);
    auto reply = echo(**other, *t);
    ASSERT_TRUE(reply) << describe(reply.error());
    EXPECT_EQ(ep->connection_count(), 1u);
    reply = caf::error{};
    other_ep->stop();
    ep->stop();
  }
  EXPECT_EQ(shm::open_fd_count(), fds_before) << "file descriptors leaked: " << [] {
    std::string s;
    for (const auto& e : std::filesystem::directory_iterator{"/proc/self/fd"})
      s += e.path().filename().string() + "->" +
           std::filesystem::read_symlink(e.path()).string() + " ";
    return s;
  }();
  EXPECT_EQ(dev_shm_entries(), shm_before) << "something appeared under /dev/shm";
}

TEST_F(transport_test, ADlpackExportOfAReceivedTensorHoldsItsLoanUntilTheDeleterRuns) {
  auto server = endpoint::start();
  auto* raw = server.get();
  ASSERT_FALSE(server->listen(
    path, [raw](const connection_ptr& c, frame_ptr f) { tools::answer_echo(*raw, c, f); }));
  auto ep = endpoint::start();
  auto client = rpc_client::connect(ep, path);
  ASSERT_TRUE(client);
  auto t = (*client)->connection()->allocate_tensor(dtype::f32, {1024});
  auto reply = (*client)->call([&](outgoing_frame& f, wire::Request::Builder req) {
    return f.put_tensors(req.initEcho(1), {{"x", *t}});
  });
  ASSERT_TRUE(reply);
  auto* dl = to_dlpack(outputs_of(*reply).at("x"));
  EXPECT_TRUE((*reply)->in_readonly_mapping(outputs_of(*reply).at("x")));
  reply = caf::error{}; // the frame is gone; the DLPack export still holds the loan
  std::this_thread::sleep_for(50ms);
  EXPECT_GE(server->stats().pool.loans_outstanding, 1u);
  dl->deleter(dl);
  EXPECT_TRUE(eventually([&] { return server->stats().pool.loans_outstanding == 0; }));
  ep->stop();
  server->stop();
}

TEST_F(transport_test, EachConnectionMapsOnlyItsOwnPool) {
  // Arrange: one server, two clients.
  auto server = endpoint::start();
  std::mutex mutex;
  std::map<uint64_t, std::shared_ptr<shm::pool>> pools;
  std::map<uint64_t, tensor> replies;
  ASSERT_FALSE(server->listen(path, [&](const connection_ptr& c, frame_ptr f) {
    auto out = c->allocate_tensor(dtype::u8, {4096});
    {
      std::lock_guard guard{mutex};
      pools[c->id()] = c->pool();
      replies[c->id()] = *out;
    }
    respond_outputs(c, f->root().getRequest().getId(), {{"x", *out}});
  }));
  auto ep = endpoint::start();
  auto a = rpc_client::connect(ep, path);
  auto b = rpc_client::connect(ep, path);
  ASSERT_TRUE(a);
  ASSERT_TRUE(b);
  // Act
  for (auto* c : {&*a, &*b}) {
    auto t = (*c)->connection()->allocate_tensor(dtype::u8, {16});
    ASSERT_TRUE(echo(**c, *t));
  }
  // Assert: two pools, and each reply lies only in its own connection's pool.
  std::lock_guard guard{mutex};
  ASSERT_EQ(pools.size(), 2u);
  auto first = pools.begin();
  auto second = std::next(first);
  EXPECT_NE(first->second, second->second);
  const auto& x1 = replies[first->first];
  const auto& x2 = replies[second->first];
  EXPECT_TRUE(first->second->locate(x1.data(), x1.nbytes()));
  EXPECT_FALSE(second->second->locate(x1.data(), x1.nbytes()));
  EXPECT_TRUE(second->second->locate(x2.data(), x2.nbytes()));
  EXPECT_FALSE(first->second->locate(x2.data(), x2.nbytes()));
  replies.clear();
  ep->stop();
  server->stop();
}

TEST_F(transport_test, QuotaExceededIsATypedErrorAndTheConnectionStaysUsable) {
  auto server = start_echo();
  endpoint_options opts;
  opts.peer_quota.max_bytes = 2 << 20; // the server may hold 2 MiB of ours
  auto ep = endpoint::start(opts);
  auto client = rpc_client::connect(ep, path);
  ASSERT_TRUE(client);
  auto big = (*client)->connection()->allocate_tensor(dtype::u8, {4 << 20});
  ASSERT_TRUE(big);
  auto refused = echo(**client, *big);
  ASSERT_FALSE(refused);
  EXPECT_TRUE(is(refused.error(), errc::quota_exceeded)) << describe(refused.error());
  EXPECT_EQ(ep->stats().pool.loans_outstanding, 0u) << "a refused send lends nothing";
  auto small = (*client)->connection()->allocate_tensor(dtype::u8, {64 << 10});
  auto ok = echo(**client, *small);
  ASSERT_TRUE(ok) << describe(ok.error());
  ok = caf::error{};
  EXPECT_TRUE(eventually([&] { return ep->stats().pool.loans_outstanding == 0; }));
  ep->stop();
}

TEST_F(transport_test, AServerOverItsPeersQuotaAnswersWithTheTypedError) {
  // The server may lend us at most 1 MiB: its 4 MiB reply cannot go out.
  auto server = start_echo({"--quota-bytes", std::to_string(1 << 20)});
  auto ep = endpoint::start();
  auto client = rpc_client::connect(ep, path);
  ASSERT_TRUE(client);
  auto big = (*client)->connection()->allocate_tensor(dtype::u8, {4 << 20});
  auto reply = (*client)->call([&](outgoing_frame& f, wire::Request::Builder req) {
    return f.put_tensors(req.initEcho(1), {{"x", *big}});
  });
  ASSERT_TRUE(reply) << describe(reply.error());
  auto resp = (*reply)->root().getResponse();
  ASSERT_TRUE(resp.isError());
  EXPECT_EQ(resp.getError().getCode(), static_cast<uint8_t>(errc::quota_exceeded));
  auto small = (*client)->connection()->allocate_tensor(dtype::u8, {1000});
  EXPECT_TRUE(echo(**client, *small));
  ep->stop();
}

TEST_F(transport_test, EveryRequestIsAnsweredWhenTheLoanQuotaRunsOut) {
  // The server may lend us 256 KiB; we hold every answer, so its loans run
  // out. The answers past that are errors that need no loan themselves.
  auto server = start_echo({"--quota-bytes", std::to_string(256 << 10)});
  auto ep = endpoint::start();
  auto client = rpc_client::connect(ep, path);
  ASSERT_TRUE(client);
  auto x = (*client)->connection()->allocate_tensor(dtype::u8, {64});
  ASSERT_TRUE(x);
  std::vector<frame_ptr> held;
  size_t refused = 0;
  for (int i = 0; i < 200; ++i) {
    auto reply = (*client)->call(
      [&](outgoing_frame& f, wire::Request::Builder req) {
        return f.put_tensors(req.initEcho(1), {{"x", *x}});
      },
      10s);
    ASSERT_TRUE(reply) << "request " << i << " got no answer: " << describe(reply.error());
    auto resp = (*reply)->root().getResponse();
    if (resp.isError()) {
      EXPECT_EQ(resp.getError().getCode(), static_cast<uint8_t>(errc::quota_exceeded));
      ++refused;
    }
    held.push_back(*reply);
  }
  EXPECT_GT(refused, 0u) << "the quota never ran out: the test proves nothing";
  held.clear();
  EXPECT_TRUE(echo(**client, *x)) << "the connection must stay usable";
  ep->stop();
}

// -- hostile input ------------------------------------------------------------

class hostile_input_test : public transport_test {
protected:
  void SetUp() override {
    good_ep = endpoint::start();
    ASSERT_TRUE(restart_server({}));
  }

  /// (Re)starts the echo server with `opts`, and the good client on it.
  bool restart_server(const endpoint_options& opts) {
    if (server)
      server->stop();
    server = endpoint::start(opts);
    auto* raw = server.get();
    if (server->listen(
          path, [raw](const connection_ptr& c, frame_ptr f) { tools::answer_echo(*raw, c, f); },
          [this](const connection_ptr&, const caf::error& err) {
            std::lock_guard guard{mutex};
            errors.push_back(err);
          }))
      return false;
    auto c = rpc_client::connect(good_ep, path);
    if (!c)
      return false;
    good = *c;
    return true;
  }

  void TearDown() override {
    for (auto& ep : attackers)
      ep->stop();
    good_ep->stop();
    server->stop();
  }

  /// A new attacking connection (a legit echo first, so its segments are
  /// announced).
  std::shared_ptr<rpc_client> attacker() {
    auto ep = endpoint::start();
    attackers.push_back(ep);
    auto c = rpc_client::connect(ep, path);
    EXPECT_TRUE(c);
    auto t = (*c)->connection()->allocate_tensor(dtype::u8, {16});
    EXPECT_TRUE(echo(**c, *t));
    return *c;
  }

  /// The server reported a malformed frame and closed that connection; the
  /// good client is still served.
  void expect_rejected_and_others_served(const std::shared_ptr<rpc_client>& bad) {
    EXPECT_TRUE(eventually([&] {
      std::lock_guard guard{mutex};
      return errors.size() == expected_errors + 1;
    })) << "the server did not reject the input";
    {
      std::lock_guard guard{mutex};
      if (errors.size() > expected_errors) {
        EXPECT_TRUE(is(errors.back(), errc::malformed_frame)) << describe(errors.back());
      }
    }
    ++expected_errors;
    EXPECT_TRUE(eventually([&] { return !bad->connection()->is_open(); }))
      << "the bad connection stayed open";
    auto t = good->connection()->allocate_tensor(dtype::f32, {256});
    auto reply = echo(*good, *t);
    EXPECT_TRUE(reply) << describe(reply.error());
  }

  /// Sends a frame whose single echo tensor is the given raw reference.
  void send_ref(const std::shared_ptr<rpc_client>& bad, uint32_t segment, uint64_t offset,
                uint64_t nbytes, uint8_t dt, std::vector<int64_t> shape) {
    auto frame = bad->connection()->new_frame();
    auto req = frame.root().initRequest();
    req.setId(999);
    auto t = req.initEcho(1)[0];
    t.setName("x");
    auto ref = t.initRef();
    ref.setSegment(segment);
    ref.setOffset(offset);
    ref.setNbytes(nbytes);
    ref.setDtype(dt);
    auto s = ref.initShape(static_cast<uint32_t>(shape.size()));
    for (uint32_t i = 0; i < shape.size(); ++i)
      s.set(i, shape[i]);
    EXPECT_FALSE(bad->connection()->send(frame));
  }

  std::shared_ptr<endpoint> server;
  std::shared_ptr<endpoint> good_ep;
  std::shared_ptr<rpc_client> good;
  std::vector<std::shared_ptr<endpoint>> attackers;
  std::mutex mutex;
  std::vector<caf::error> errors;
  size_t expected_errors = 0;
};

TEST_F(hostile_input_test, RandomBytesOnTheSocketCloseThatConnectionOnly) {
  auto bad = attacker();
  std::mt19937 rng{42};
  std::vector<uint8_t> junk(300);
  for (auto& b : junk)
    b = static_cast<uint8_t>(rng());
  ASSERT_FALSE(bad->connection()->send_raw_datagram(junk.data(), junk.size()));
  expect_rejected_and_others_served(bad);
}

TEST_F(hostile_input_test, TruncatedFrameIsRejected) {
  auto bad = attacker();
  auto c = bad->connection()->pool()->allocate(4096); // in the announced control slab
  ASSERT_TRUE(c);
  auto* table = reinterpret_cast<uint32_t*>((*c)->data());
  table[0] = 0;
  table[1] = 1000; // claims 1000 words; only 1 follows
  auto id = (*c)->id();
  ASSERT_FALSE(bad->connection()->send_raw_descriptor(
    {static_cast<uint32_t>(descriptor_kind::frame), id.segment, id.offset, 16, id.generation}));
  expect_rejected_and_others_served(bad);
}

TEST_F(hostile_input_test, FrameDescriptorOutsideItsSegmentIsRejected) {
  auto bad = attacker();
  ASSERT_FALSE(bad->connection()->send_raw_descriptor(
    {static_cast<uint32_t>(descriptor_kind::frame), 1, uint64_t{1} << 40, 64, 1}));
  expect_rejected_and_others_served(bad);
}

TEST_F(hostile_input_test, TensorReferenceOutsideItsSegmentIsRejected) {
  auto bad = attacker();
  send_ref(bad, 1, uint64_t{1} << 30, 16, static_cast<uint8_t>(dtype::u8), {16});
  expect_rejected_and_others_served(bad);
}

TEST_F(hostile_input_test, ShapeWhoseProductOverflowsIsRejected) {
  auto bad = attacker();
  send_ref(bad, 1, 0, 4096, static_cast<uint8_t>(dtype::f32), {int64_t{1} << 40, int64_t{1} << 40});
  expect_rejected_and_others_served(bad);
}

TEST_F(hostile_input_test, ShapeLargerThanItsChunkIsRejected) {
  auto bad = attacker();
  send_ref(bad, 1, 0, 4096, static_cast<uint8_t>(dtype::f32), {2048});
  expect_rejected_and_others_served(bad);
}

TEST_F(hostile_input_test, UnknownDtypeIsRejected) {
  auto bad = attacker();
  send_ref(bad, 1, 0, 4096, 99, {4});
  expect_rejected_and_others_served(bad);
}

TEST_F(hostile_input_test, ForgedReturnIsRejected) {
  auto bad = attacker();
  ASSERT_FALSE(bad->connection()->send_raw_descriptor(
    {static_cast<uint32_t>(descriptor_kind::give_back), 7, 4096, 0, 3}));
  expect_rejected_and_others_served(bad);
}

TEST_F(hostile_input_test, RepeatedAndStaleReturnsAreRejected) {
  for (bool stale : {false, true}) {
    SCOPED_TRACE(stale ? "stale generation" : "repeated return");
    auto bad = attacker();
    auto t = bad->connection()->allocate_tensor(dtype::u8, {100});
    auto reply = bad->call([&](outgoing_frame& f, wire::Request::Builder req) {
      return f.put_tensors(req.initEcho(1), {{"x", *t}});
    });
    ASSERT_TRUE(reply);
    auto ref = (*reply)->root().getResponse().getOutputs()[0].getRef();
    descriptor back{static_cast<uint32_t>(descriptor_kind::give_back), ref.getSegment(),
                    ref.getOffset(), 0, ref.getGeneration() - (stale ? 1 : 0)};
    ASSERT_FALSE(bad->connection()->send_raw_descriptor(back));
    if (!stale) {
      ASSERT_FALSE(bad->connection()->send_raw_descriptor(back));
    }
    expect_rejected_and_others_served(bad);
  }
}

TEST_F(hostile_input_test, APeerThatStopsDrainingIsQueuedForThenClosedAtItsLimit) {
  // A server whose outbound ring and backlog are small.
  endpoint_options opts;
  opts.ring_slots = 64;
  opts.max_backlog = 256;
  ASSERT_TRUE(restart_server(opts));
  // The bad peer's loop thread blocks in its first frame handler: it never
  // drains its ring again (a frozen or hostile process looks the same).
  auto stuck = std::make_shared<gate>();
  auto bad_ep = endpoint::start();
  attackers.push_back(bad_ep);
  auto bad = bad_ep->connect(path, [stuck](const connection_ptr&, frame_ptr) { stuck->wait(30s); });
  ASSERT_TRUE(bad) << describe(bad.error());
  auto x = (*bad)->allocate_tensor(dtype::u8, {16});
  for (int i = 0; i < 600; ++i) {
    auto frame = (*bad)->new_frame();
    auto req = frame.root().initRequest();
    req.setId(static_cast<uint64_t>(i) + 1);
    ASSERT_FALSE(frame.put_tensors(req.initEcho(1), {{"x", *x}}));
    if ((*bad)->send(frame))
      break;
  }
  // The server never blocks on it: the good client is served meanwhile, and
  // the bad peer is closed once its backlog passes the limit.
  auto t = good->connection()->allocate_tensor(dtype::f32, {256});
  EXPECT_TRUE(echo(*good, *t));
  EXPECT_TRUE(eventually([&] {
    std::lock_guard guard{mutex};
    return !errors.empty() && is(errors.back(), errc::overloaded);
  })) << "the peer that does not drain was not closed";
  EXPECT_GE(server->stats().misbehaving_peers, 1u);
  EXPECT_TRUE(echo(*good, *t));
  stuck->open();
}

TEST_F(hostile_input_test, APeerAnnouncingTooManySegmentsIsClosedWithATypedError) {
  endpoint_options opts;
  opts.max_peer_segments = 2;
  ASSERT_TRUE(restart_server(opts));
  auto bad_ep = endpoint::start();
  attackers.push_back(bad_ep);
  auto bad = rpc_client::connect(bad_ep, path);
  ASSERT_TRUE(bad);
  // Each size class is a segment of its own: the third one is refused.
  for (int64_t bytes : {int64_t{100}, int64_t{40} << 10, int64_t{512} << 10, int64_t{8} << 20}) {
    auto t = (*bad)->connection()->allocate_tensor(dtype::u8, {bytes});
    ASSERT_TRUE(t);
    if (!(*bad)->call([&](outgoing_frame& f, wire::Request::Builder req) {
          return f.put_tensors(req.initEcho(1), {{"x", *t}});
        }, 10s))
      break;
  }
  EXPECT_TRUE(eventually([&] {
    std::lock_guard guard{mutex};
    return !errors.empty() && is(errors.back(), errc::quota_exceeded);
  })) << "the peer over its segment limit was not refused";
  EXPECT_TRUE(eventually([&] { return !(*bad)->connection()->is_open(); }));
  auto t = good->connection()->allocate_tensor(dtype::f32, {256});
  EXPECT_TRUE(echo(*good, *t));
}

TEST_F(hostile_input_test, PeerOfAnotherUidIsRefused) {
  server->stop();
  endpoint_options opts;
  opts.allowed_uids = {::getuid() + 4242}; // not us
  auto strict = endpoint::start(opts);
  ASSERT_FALSE(strict->listen(path, [](const connection_ptr&, frame_ptr) {}));
  auto ep = endpoint::start();
  auto c = ep->connect(path, [](const connection_ptr&, frame_ptr) {});
  ASSERT_FALSE(c);
  EXPECT_TRUE(is(c.error(), errc::peer_disconnected)) << describe(c.error());
  ep->stop();
  strict->stop();
  server = endpoint::start(); // for TearDown
}

} // namespace
} // namespace modelreg::test

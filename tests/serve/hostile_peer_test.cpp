// A node that no client can hurt: real `modelreg serve` processes against
// peers that freeze, die with requests in flight, never say hello, send a
// doorbell where none belongs, or speak CAF to the node's TCP door; beside
// each, a well-behaved client whose every call must succeed.
#include <csignal>
#include <future>
#include <iostream>
#include <random>
#include <thread>
#include <sstream>
#include <fstream>

#include <caf/io/middleman.hpp>
#include <caf/send.hpp>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "modelreg/actors/gateway.hpp"
#include "modelreg/actors/tcp_guard.hpp"
#include "modelreg/shm/segment.hpp"
#include "modelreg/transport/ring.hpp"
#include "modelreg/transport/socket.hpp"
#include "serve/serve_fixture.hpp"

namespace modelreg::test {
namespace {

/// Open descriptors of process `pid`.
size_t fds_of(pid_t pid) {
  size_t n = 0;
  std::error_code ec;
  for (auto it = fs::directory_iterator{"/proc/" + std::to_string(pid) + "/fd", ec};
       !ec && it != fs::directory_iterator{}; it.increment(ec))
    ++n;
  return n;
}

/// What each open descriptor of process `pid` is (for failure messages).
std::string fd_targets_of(pid_t pid) {
  std::string out;
  std::error_code ec;
  for (auto it = fs::directory_iterator{"/proc/" + std::to_string(pid) + "/fd", ec};
       !ec && it != fs::directory_iterator{}; it.increment(ec))
    out += it->path().filename().string() + "->" + fs::read_symlink(it->path(), ec).string() + " ";
  return out;
}

/// The fields of /proc/PID/stat after the command name: state first.
std::string stat_fields_of(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/stat"};
  std::string stat{std::istreambuf_iterator<char>{in}, {}};
  auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? "" : stat.substr(close + 2);
}

/// The state letter of process `pid` (R, S, T, ...).
char state_of(pid_t pid) {
  auto fields = stat_fields_of(pid);
  return fields.empty() ? '?' : fields.front();
}

/// A hello datagram as docs/wire-format.md describes it.
std::vector<std::byte> hello_datagram(bool offer_shm) {
  capnp::MallocMessageBuilder msg;
  auto hello = msg.initRoot<wire::Frame>().initHello();
  hello.setProtocolVersion(wire::PROTOCOL_VERSION);
  hello.setCapabilities(offer_shm ? wire::CAP_SHARED_MEMORY : 0);
  hello.setPid(::getpid());
  hello.setRingSlots(64);
  auto flat = capnp::messageToFlatArray(msg);
  auto bytes = flat.asBytes();
  struct {
    uint32_t magic = 0x4752454d;
    uint32_t type = 1;
    uint64_t a = 0, b = 0;
  } header;
  std::vector<std::byte> out(sizeof(header) + bytes.size());
  std::memcpy(out.data(), &header, sizeof(header));
  std::copy(bytes.begin(), bytes.end(), reinterpret_cast<kj::byte*>(out.data() + sizeof(header)));
  return out;
}

/// True once `fd` reads end-of-file (the node closed it) within `limit`.
bool closed_by_peer(int fd, std::chrono::milliseconds limit = 15s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (!transport::wait_readable(fd, 100))
      continue;
    auto d = transport::receive_datagram(fd, 1 << 16);
    if (!d || d->eof)
      return true;
  }
  return false;
}

/// Resident memory of process `pid`, in bytes.
uint64_t rss_of(pid_t pid) {
  std::ifstream in{"/proc/" + std::to_string(pid) + "/status"};
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0)
      return std::stoull(line.substr(6)) * 1024;
  return 0;
}

/// A plain TCP connection to 127.0.0.1:`port` (-1 if refused).
int tcp_connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// Reads what `fd` has within `limit`; true once it reads end-of-file.
bool stream_closed_by_peer(int fd, std::chrono::milliseconds limit = 15s) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    if (!transport::wait_readable(fd, 100))
      continue;
    auto n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
      return true;
  }
  return false;
}

/// A BASP header (CAF 0.17: 32 bytes, network byte order) for `operation`
/// announcing `payload_len` bytes to follow.
std::array<uint8_t, 32> basp_header(uint8_t operation, uint32_t payload_len) {
  std::array<uint8_t, 32> h{};
  h[0] = operation;
  for (int i = 0; i < 4; ++i)
    h[4 + i] = static_cast<uint8_t>(payload_len >> (24 - 8 * i));
  return h;
}

class hostile_peer_test : public serve_test {
protected:
  /// The well-behaved client: `n` inferences of "echo", each checked.
  void expect_served(client& c, const registry_actor& reg, int n = 20) {
    for (int i = 0; i < n; ++i) {
      auto x = *tensor::from_values<float>({static_cast<float>(i)});
      auto r = c.ask<tensor_map>(reg, infer_atom::value, std::string{"echo"}, tensor_map{{"x", x}});
      ASSERT_TRUE(r) << "call " << i << ": " << describe(r.error());
      ASSERT_EQ(r->at("x").values<float>()->front(), static_cast<float>(i));
    }
  }

  /// The node is back where it was: one connection (ours), nothing lent,
  /// and as many descriptors open as `baseline_fds`.
  void expect_baseline(client& c, const registry_actor& reg, size_t baseline_fds) {
    EXPECT_TRUE(eventually([&] {
      auto s = c.status(reg);
      return s["connections"] == 1 && s["transport"]["connections"] == 1 &&
             s["transport"]["loans_outstanding"] == 0 && fds_of(node->pid()) == baseline_fds;
    })) << c.status(reg)["transport"].dump() << " fds " << fds_of(node->pid()) << " (baseline "
        << baseline_fds << "): " << fd_targets_of(node->pid());
  }

  /// Starts the node and the well-behaved client, has it use "echo" once,
  /// and notes the node's descriptors then (`baseline`).
  void start_with_client(std::vector<std::string> extra = {}) {
    ASSERT_TRUE(start_node(std::move(extra))) << ready_line;
    good = std::make_unique<client>();
    auto r = good->connect(uri(), false);
    ASSERT_TRUE(r) << describe(r.error());
    reg = *r;
    auto h = good->ask<model_handle>(reg, get_or_load_atom::value, std::string{"echo"},
                                     model_spec{});
    ASSERT_TRUE(h) << describe(h.error());
    expect_served(*good, reg, 2);
    // A status answer (several KiB: the catalog's details) takes a chunk of
    // a larger class, hence a segment, in the node's pool for this client.
    good->status(reg);
    baseline = fds_of(node->pid());
  }

  void expect_served(int n = 20) { expect_served(*good, reg, n); }
  void expect_baseline() { expect_baseline(*good, reg, baseline); }

  std::unique_ptr<client> good;
  registry_actor reg;
  size_t baseline = 0;

  std::unique_ptr<child_process> flood(size_t requests) {
    auto p = std::make_unique<child_process>(std::vector<std::string>{
      MODELREG_CLI, "__flood-client", socket, std::to_string(requests), "64"});
    auto line = p->read_line(30s);
    EXPECT_EQ(line.rfind("sent", 0), 0u) << line;
    return p;
  }
};

TEST_F(hostile_peer_test, AHelloWithADoorbellOrJunkFdIsRefusedAndOthersAreServed) {
  ASSERT_NO_FATAL_FAILURE(start_with_client());
  auto control = shm::segment::create(transport::control_bytes(64), "control");
  ASSERT_TRUE(control);
  // A blocking eventfd preset to its maximum (the old doorbell attack), and
  // a pipe: the node writes to neither; it refuses the hello.
  transport::unique_fd full_bell{::eventfd(0, EFD_CLOEXEC)};
  uint64_t max = 0xfffffffffffffffe;
  ASSERT_EQ(::write(full_bell.get(), &max, sizeof(max)), static_cast<ssize_t>(sizeof(max)));
  int pipe_fds[2];
  ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
  transport::unique_fd pipe_read{pipe_fds[0]}, pipe_write{pipe_fds[1]};
  for (int junk : {full_bell.get(), pipe_write.get()}) {
    auto sock = transport::connect_seqpacket(socket);
    ASSERT_TRUE(sock);
    auto hello = hello_datagram(true);
    auto sent = transport::try_send_datagram(sock->get(), hello.data(), hello.size(),
                                             {control->fd(), junk});
    ASSERT_TRUE(sent && *sent) << "a fresh socket takes the hello at once";
    EXPECT_TRUE(closed_by_peer(sock->get())) << "the node kept a hello with a second fd";
    expect_served();
  }
  expect_baseline();
}

TEST_F(hostile_peer_test, SilentConnectionsAreClosedAtTheHelloDeadline) {
  ASSERT_NO_FATAL_FAILURE(start_with_client());
  std::vector<transport::unique_fd> silent;
  for (int i = 0; i < 50; ++i) {
    auto sock = transport::connect_seqpacket(socket);
    ASSERT_TRUE(sock) << describe(sock.error());
    silent.push_back(std::move(*sock));
  }
  expect_served();
  for (auto& s : silent)
    EXPECT_TRUE(closed_by_peer(s.get())) << "a connection without a hello stayed open";
  silent.clear();
  expect_baseline();
}

TEST_F(hostile_peer_test, AFrozenClientWithRequestsInFlightStallsNobodyAndIsDroppedLater) {
  ASSERT_NO_FATAL_FAILURE(start_with_client());
  // 3000 pipelined requests, then frozen: its ring fills, the node queues
  // the rest of its answers for it and blocks on nothing.
  auto frozen = flood(3000);
  frozen->kill(SIGSTOP);
  expect_served(200);
  // Silent for the peer timeout (3 s): the node closes it and reclaims what
  // it held, while it is still frozen.
  expect_baseline();
  frozen->kill(SIGKILL);
  frozen->kill(SIGCONT);
}

TEST_F(hostile_peer_test, WithoutAPeerTimeoutAFrozenClientStaysQueuedUntilItDies) {
  ASSERT_NO_FATAL_FAILURE(start_with_client({"--peer-timeout", "0"}));
  auto frozen = flood(3000);
  frozen->kill(SIGSTOP);
  expect_served(200);
  EXPECT_EQ(good->status(reg)["connections"], 2) << "the frozen peer is within its limits";
  frozen->kill(SIGKILL); // the end-of-file is seen: nothing waits on the peer
  frozen->kill(SIGCONT);
  expect_baseline();
  expect_served();
}

TEST_F(hostile_peer_test, ClientsKilledWithRequestsInFlightLeaveNothingBehind) {
  ASSERT_NO_FATAL_FAILURE(start_with_client());
  for (int round = 0; round < 10; ++round) {
    auto victim = flood(800);
    victim->kill(SIGKILL);
    expect_served(5);
  }
  expect_baseline();
}

TEST_F(hostile_peer_test, AFrozenNodeIsNoticedByItsClients) {
  ASSERT_NO_FATAL_FAILURE(start_with_client());
  node->kill(SIGSTOP);
  // Stopped for certain before the call goes out (a signal lands a moment
  // after kill() returns, and the node answers within microseconds).
  ASSERT_TRUE(eventually([&] { return state_of(node->pid()) == 'T'; }));
  auto x = *tensor::from_values<float>({1.f});
  // No answer can come; the client must not wait for its 30 s timeout: the
  // missing heartbeat tells it the node is gone.
  auto r = good->ask<tensor_map>(reg, infer_atom::value, std::string{"echo"}, tensor_map{{"x", x}});
  node->kill(SIGCONT);
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::unavailable)) << describe(r.error());
}

TEST_F(hostile_peer_test, TcpPeersCannotStopTheNodeAndPlainTcpIsInferOnly) {
  ASSERT_TRUE(start_node({"--tcp", "127.0.0.1:0"})) << ready_line;
  auto port = tcp_port();
  ASSERT_NE(port, 0);
  client local;
  auto unix_reg = local.connect(uri(), false);
  ASSERT_TRUE(unix_reg);
  // A CAF peer that sends the node's own control atoms, and exit and kill
  // messages, to the published actor.
  {
    client attacker{true};
    auto typed = attacker.sys->middleman().remote_actor<wire_actor>("127.0.0.1", port);
    ASSERT_TRUE(typed) << attacker.sys->render(typed.error());
    auto door = caf::actor_cast<caf::actor>(*typed);
    caf::anon_send(door, shutdown_atom::value);
    caf::anon_send(door, caf::atom_constant<caf::atom("forcequit")>::value);
    caf::anon_send_exit(door, caf::exit_reason::user_shutdown);
    caf::anon_send_exit(door, caf::exit_reason::kill);
    // Sent after the above on the same connection: the node has seen them.
    auto remote = attacker.connect("tcp://127.0.0.1:" + std::to_string(port), false);
    ASSERT_TRUE(remote) << describe(remote.error());
    auto h = attacker.ask<model_handle>(*remote, get_or_load_atom::value, std::string{"echo"},
                                        model_spec{});
    ASSERT_TRUE(h) << "a catalog name may be loaded: " << describe(h.error());
    auto x = *tensor::from_values<float>({3.f});
    auto r = attacker.ask<tensor_map>(*remote, infer_atom::value, std::string{"echo"},
                                      tensor_map{{"x", x}});
    ASSERT_TRUE(r) << describe(r.error());
    auto spec = attacker.ask<model_handle>(*remote, get_or_load_atom::value, std::string{"mine"},
                                           model_spec{"identity", {}});
    ASSERT_FALSE(spec);
    EXPECT_TRUE(is(spec.error(), errc::permission_denied)) << describe(spec.error());
    auto unload = attacker.ask<eviction_report>(*remote, unload_atom::value, std::string{"echo"});
    ASSERT_FALSE(unload);
    EXPECT_TRUE(is(unload.error(), errc::permission_denied)) << describe(unload.error());
  }
  // The node is up for everyone, and its owner may still do everything.
  expect_served(local, *unix_reg);
  client again{true};
  auto remote = again.connect("tcp://127.0.0.1:" + std::to_string(port), false);
  ASSERT_TRUE(remote) << describe(remote.error());
  auto x = *tensor::from_values<float>({4.f});
  EXPECT_TRUE(again.ask<tensor_map>(*remote, infer_atom::value, std::string{"echo"},
                                    tensor_map{{"x", x}}));
  auto h = local.ask<model_handle>(*unix_reg, get_or_load_atom::value, std::string{"mine"},
                                   model_spec{"identity", {}});
  EXPECT_TRUE(h) << describe(h.error());
}

TEST_F(hostile_peer_test, PlainTcpPeersCannotMakeTheNodeAllocateNorHoldSilentConnections) {
  ASSERT_TRUE(start_node({"--tcp", "127.0.0.1:0"})) << ready_line;
  auto port = tcp_port();
  ASSERT_NE(port, 0);
  auto rss_before = rss_of(node->pid());
  // Before the guard, CAF allocated and zeroed each announced payload: these
  // three took the node's resident memory up by 600 MiB.
  constexpr uint8_t client_handshake = 1;
  std::vector<int> greedy;
  for (int i = 0; i < 3; ++i) {
    int fd = tcp_connect(port);
    ASSERT_GE(fd, 0);
    greedy.push_back(fd);
    ASSERT_TRUE(transport::wait_readable(fd, 15000)) << "the node sends its handshake first";
    auto h = basp_header(client_handshake, 200u << 20);
    ASSERT_EQ(::send(fd, h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
  }
  for (int fd : greedy) {
    EXPECT_TRUE(stream_closed_by_peer(fd)) << "an oversized message closes its connection";
    ::close(fd);
  }
  EXPECT_LT(rss_of(node->pid()), rss_before + (64u << 20))
    << "before " << rss_before << ", now " << rss_of(node->pid());
  // A connection that never answers the node's handshake is closed.
  int silent = tcp_connect(port);
  ASSERT_GE(silent, 0);
  EXPECT_TRUE(stream_closed_by_peer(silent)) << "no handshake deadline";
  ::close(silent);
  // Well-behaved TCP peers, including larger messages under the limit.
  client good_tcp{true};
  auto remote = good_tcp.connect("tcp://127.0.0.1:" + std::to_string(port), false);
  ASSERT_TRUE(remote) << describe(remote.error());
  auto h = good_tcp.ask<model_handle>(*remote, get_or_load_atom::value, std::string{"echo"},
                                      model_spec{});
  ASSERT_TRUE(h) << describe(h.error());
  auto big = tensor::allocate(dtype::f32, {1 << 20});
  ASSERT_TRUE(big);
  auto r = good_tcp.ask<tensor_map>(*remote, infer_atom::value, std::string{"echo"},
                                    tensor_map{{"x", *big}});
  ASSERT_TRUE(r) << describe(r.error());
  EXPECT_EQ(r->at("x").nbytes(), big->nbytes());
}

TEST(tcp_guard, AllPlainTcpPeersTogetherCannotAnnounceMoreThanTheNodeWideLimit) {
  // Each peer stays under the per-message limit (1 MiB announced of 2 MiB),
  // but only three fit the node-wide 3 MiB: exactly one of four is closed,
  // whichever the node reads last, and the other three stay open.
  system_config cfg;
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  tcp_guard_options o;
  o.max_message = 2u << 20;
  o.max_buffered = 3u << 20;
  o.handshake_timeout = 10min; // only the size limit may close them here
  tcp_guard guard{o};
  // (An argument, because CAF 0.17 dereferences a null tuple for functions
  // spawned without any.)
  auto target = sys.spawn([](int add) -> caf::behavior { return {[add](int x) { return x + add; }}; }, 0);
  auto port = guard.publish(sys, caf::actor_cast<caf::strong_actor_ptr>(target),
                            sys.message_types(target), 0, "127.0.0.1");
  ASSERT_TRUE(port) << sys.render(port.error());
  constexpr uint8_t client_handshake = 1;
  std::vector<int> peers;
  for (int i = 0; i < 4; ++i) {
    int fd = tcp_connect(*port);
    ASSERT_GE(fd, 0);
    peers.push_back(fd);
    ASSERT_TRUE(transport::wait_readable(fd, 15000)) << "the node sends its handshake first";
    auto h = basp_header(client_handshake, 1u << 20);
    ASSERT_EQ(::send(fd, h.data(), h.size(), MSG_NOSIGNAL), static_cast<ssize_t>(h.size()));
  }
  auto closed = [](int fd) {
    char buf[4096];
    for (;;) {
      auto n = ::recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0)
        continue; // the node's handshake
      return n == 0 || (errno != EAGAIN && errno != EINTR);
    }
  };
  auto deadline = std::chrono::steady_clock::now() + 15s;
  size_t n_closed = 0;
  while (n_closed == 0 && std::chrono::steady_clock::now() < deadline) {
    for (int fd : peers)
      transport::wait_readable(fd, 10);
    n_closed = static_cast<size_t>(std::count_if(peers.begin(), peers.end(), closed));
  }
  EXPECT_EQ(n_closed, 1u) << "one peer over the node-wide limit is closed, the others stay";
  for (int fd : peers)
    ::close(fd);
  caf::anon_send_exit(target, caf::exit_reason::user_shutdown);
  sys.middleman().unpublish(target, *port);
}

TEST_F(hostile_peer_test, TheNodeWideSharedMemoryLimitRefusesWithATypedErrorAndOthersGoOn) {
  ASSERT_NO_FATAL_FAILURE(start_with_client({"--max-shared-memory", "12M"}));
  // A 4 MiB answer needs a 16 MiB segment in the node: past its limit.
  auto big = tensor::allocate(dtype::f32, {1 << 20});
  ASSERT_TRUE(big);
  auto r = good->ask<tensor_map>(reg, infer_atom::value, std::string{"echo"},
                                 tensor_map{{"x", *big}});
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::quota_exceeded)) << describe(r.error());
  EXPECT_NE(describe(r.error()).find("node-wide shared-memory limit"), std::string::npos)
    << describe(r.error());
  expect_served();
  EXPECT_LE(good->status(reg)["transport"]["bytes_mapped"].get<uint64_t>(), uint64_t{12} << 20);
}

TEST_F(hostile_peer_test, ChaosClientsKilledAtRandomCostTheOthersNothing) {
  ASSERT_NO_FATAL_FAILURE(start_with_client());
  // Six clients, half streaming echo frames and holding what they get, half
  // keeping 16 model requests in flight; one of them is killed (and replaced)
  // every few checked calls of the seventh, for 30 s.
  auto spawn = [&](size_t slot) {
    std::vector<std::string> argv =
      slot % 2 == 0 ? std::vector<std::string>{MODELREG_CLI, "__hold", socket, "4", "4096"}
                    : std::vector<std::string>{MODELREG_CLI, "__bench-serve-client", uri(),
                                               "echo", "100000000", "16", "64",
                                               dir + "/lat" + std::to_string(slot)};
    auto p = std::make_unique<child_process>(argv);
    auto line = p->read_line(30s);
    if (slot % 2 == 1 && line == "ready")
      p->close_stdin(); // go
    return p;
  };
  std::vector<std::unique_ptr<child_process>> clients;
  for (size_t i = 0; i < 6; ++i)
    clients.push_back(spawn(i));
  std::mt19937 rng{7};
  size_t kills = 0;
  auto end = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < end) {
    ASSERT_NO_FATAL_FAILURE(expect_served(1 + static_cast<int>(rng() % 10)));
    auto slot = rng() % clients.size();
    clients[slot]->kill(SIGKILL);
    clients[slot] = spawn(slot);
    ++kills;
  }
  for (auto& c : clients)
    c->kill(SIGKILL);
  clients.clear();
  EXPECT_GT(kills, 10u);
  std::cout << "[ measured ] " << kills << " clients killed at random in 30 s" << std::endl;
  expect_served();
  expect_baseline();
}

/// Runs `modelreg ARGS` as another user (util-linux's setpriv; needs root).
run_result run_as(uid_t uid, std::vector<std::string> args) {
  auto id = std::to_string(uid);
  return run(std::move(args),
             {"setpriv", "--reuid=" + id, "--regid=" + id, "--clear-groups", "--"});
}

TEST_F(hostile_peer_test, UnixPeersGetTheRoleOfTheirUidAndOtherUidsAreRefused) {
  if (::getuid() != 0)
    GTEST_SKIP() << "running clients as other users needs root";
  constexpr uid_t user = 65534, admin = 65532, stranger = 65533;
  // The test's own private folder: let other users through to the node's.
  ASSERT_EQ(::chmod(dir.c_str(), 0711), 0);
  ASSERT_TRUE(start_node({"--allow-uid", std::to_string(user), "--admin-uid",
                          std::to_string(admin)}))
    << ready_line;
  EXPECT_EQ(fs::status(fs::path{socket}.parent_path()).permissions() & fs::perms::all,
            fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
  // An infer peer: may load a catalog name and read status, may not unload.
  EXPECT_EQ(run_as(user, {"load", "gain", "--socket", socket}).code, 0);
  EXPECT_EQ(run_as(user, {"status", "--json", "--socket", socket}).code, 0);
  EXPECT_EQ(run_as(user, {"unload", "gain", "--socket", socket}).code, 1);
  auto after = run({"status", "--json", "--socket", socket});
  ASSERT_EQ(after.code, 0);
  auto j = nlohmann::json::parse(after.out.substr(0, after.out.find('\n')), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << after.out;
  bool loaded = false;
  for (const auto& m : j["models"])
    loaded = loaded || m["key"] == "gain";
  EXPECT_TRUE(loaded) << "the refused unload must not have unloaded";
  // An admin peer may unload; a uid nobody allowed cannot even connect.
  EXPECT_EQ(run_as(admin, {"unload", "gain", "--socket", socket}).code, 0);
  EXPECT_NE(run_as(stranger, {"status", "--socket", socket}).code, 0);
}

TEST_F(hostile_peer_test, AccessAndLimitOptionsAreCheckedAtStartNamingTheOption) {
  for (std::vector<std::string> bad : {
         std::vector<std::string>{"--peer-timeout", "abc"},
         {"--peer-timeout", "-1"},
         {"--max-in-flight", "0"},
         {"--max-in-flight", "2k"},
         {"--max-shared-memory", "lots"},
         {"--tls-role", "root"},
         {"--admin-uid", "nobody"},
         {"--insecure-admin"},                         // no plain TCP to apply it to
         {"--tls-role", "infer", "--tcp", "127.0.0.1:0"}, // no TLS to apply it to
         {"--max-tcp-message", "64M"},                    // no plain TCP to apply it to
         {"--max-tcp-message", "12", "--tcp", "127.0.0.1:0"},
       }) {
    std::vector<std::string> argv{"serve", "--socket", socket};
    argv.insert(argv.end(), bad.begin(), bad.end());
    auto r = run(argv);
    EXPECT_EQ(r.code, 2) << bad.front() << " " << (bad.size() > 1 ? bad[1] : "");
    EXPECT_FALSE(fs::exists(socket)) << "nothing may start on a bad option";
  }
}

} // namespace
} // namespace modelreg::test

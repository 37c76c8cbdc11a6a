// `modelreg bench transport`: round trips of a tensor of N bytes from this
// process to an echo in another process (which answers with N bytes), over
// the shared-memory transport, its inline fallback on the same socket, and
// CAF's middleman on TCP loopback; plus the floor, an 8-byte eventfd
// ping-pong between two processes. All in one run, side by side.
#include "bench/transport_bench.hpp"

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/io/middleman.hpp>
#include <caf/scoped_actor.hpp>

#include <nlohmann/json.hpp>

#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"
#include "modelreg/transport/rpc.hpp"

#ifdef MODELREG_WITH_GRPC
#include "bench/grpc_bench.hpp"
#endif

extern char** environ;

namespace modelreg::bench {

namespace {

using clock_type = std::chrono::steady_clock;
using namespace modelreg::transport;

double us_since(clock_type::time_point t0) {
  return std::chrono::duration<double, std::micro>(clock_type::now() - t0).count();
}

double percentile(std::vector<double> v, double q) {
  if (v.empty())
    return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1))];
}

nlohmann::json row(const std::string& transport, size_t bytes, const std::vector<double>& rtts) {
  return {{"transport", transport},
          {"bytes", bytes},
          {"iterations", rtts.size()},
          {"rtt_us_p50", percentile(rtts, 0.5)},
          {"rtt_us_p99", percentile(rtts, 0.99)}};
}

size_t iterations_for(size_t bytes, size_t base) {
  if (bytes >= (size_t{64} << 20))
    return std::max<size_t>(base / 100, 5);
  if (bytes >= (size_t{16} << 20))
    return std::max<size_t>(base / 20, 10);
  if (bytes >= (size_t{1} << 20))
    return std::max<size_t>(base / 4, 20);
  return base;
}

/// A child process (the other side), with its stdout readable.
struct child {
  pid_t pid = -1;
  int out = -1;
  int in = -1;

  static child spawn(const std::vector<std::string>& argv) {
    child c;
    int in[2], out[2];
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0)
      throw std::runtime_error("pipe failed");
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    std::vector<char*> args;
    std::vector<std::string> copy = argv;
    for (auto& a : copy)
      args.push_back(a.data());
    args.push_back(nullptr);
    if (::posix_spawn(&c.pid, args[0], &fa, nullptr, args.data(), environ) != 0)
      throw std::runtime_error("cannot start " + argv[0]);
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    c.in = in[1];
    c.out = out[0];
    return c;
  }

  std::string line() {
    std::string s;
    char ch;
    pollfd p{out, POLLIN, 0};
    while (::poll(&p, 1, 20000) > 0 && ::read(out, &ch, 1) == 1 && ch != '\n')
      s += ch;
    return s;
  }

  void stop() {
    if (pid <= 0)
      return;
    ::close(in);
    ::close(out);
    for (int i = 0; i < 3000; ++i) {
      if (::waitpid(pid, nullptr, WNOHANG) == pid) {
        pid = -1;
        return;
      }
      ::usleep(1000);
    }
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    pid = -1;
  }
};

// -- floor: eventfd ping-pong between two processes ----------------------------

std::vector<double> eventfd_floor(size_t iterations) {
  int ping = ::eventfd(0, 0);
  int pong = ::eventfd(0, 0);
  pid_t pid = ::fork();
  if (pid == 0) {
    uint64_t v;
    for (size_t i = 0; i < iterations + 10; ++i) {
      if (::read(ping, &v, 8) != 8)
        break;
      ::write(pong, &v, 8);
    }
    ::_exit(0);
  }
  std::vector<double> rtts;
  for (size_t i = 0; i < iterations + 10; ++i) {
    uint64_t one = 1, v;
    auto t0 = clock_type::now();
    ::write(ping, &one, 8);
    ::read(pong, &v, 8);
    if (i >= 10)
      rtts.push_back(us_since(t0));
  }
  ::waitpid(pid, nullptr, 0);
  ::close(ping);
  ::close(pong);
  return rtts;
}

// -- shared memory and inline -------------------------------------------------

std::vector<nlohmann::json> run_modelreg(const transport_bench_options& opts, bool shared_memory,
                                         const std::string& dir) {
  std::vector<nlohmann::json> rows;
  auto path = dir + (shared_memory ? "/shm.sock" : "/inline.sock");
  std::vector<std::string> argv{opts.self_path, "__echo-server", path};
  if (!shared_memory)
    argv.push_back("--inline");
  auto server = child::spawn(argv);
  if (server.line() != "ready")
    throw std::runtime_error("echo server did not start");
  auto ep = endpoint::start();
  auto client = rpc_client::connect(ep, path);
  if (!client)
    throw std::runtime_error("connect: " + describe(client.error()));
  for (auto bytes : opts.sizes) {
    if (!shared_memory && bytes > opts.inline_max_bytes)
      continue;
    auto t = shared_memory ? (*client)->connection()->allocate_tensor(dtype::u8, {static_cast<int64_t>(bytes)})
                           : tensor::allocate(dtype::u8, {static_cast<int64_t>(bytes)});
    if (!t)
      throw std::runtime_error(describe(t.error()));
    std::memset(t->mutable_data(), 1, bytes);
    auto n = iterations_for(bytes, opts.iterations);
    std::vector<double> rtts;
    for (size_t i = 0; i < n + 3; ++i) {
      auto t0 = clock_type::now();
      auto reply = (*client)->call([&](outgoing_frame& f, wire::Request::Builder req) {
        return f.put_tensors(req.initEcho(1), {{"x", *t}});
      });
      auto dt = us_since(t0);
      if (!reply)
        throw std::runtime_error("echo failed: " + describe(reply.error()));
      auto resp = (*reply)->root().getResponse();
      if (!resp.isOutputs() || resp.getOutputs().size() != 1)
        throw std::runtime_error("echo answered badly");
      if (i >= 3)
        rtts.push_back(dt);
    }
    rows.push_back(row(shared_memory ? "shm" : "inline", bytes, rtts));
  }
  ep->stop();
  server.stop();
  return rows;
}

// -- CAF middleman on TCP loopback --------------------------------------------

using bytes_atom = caf::atom_constant<caf::atom("benchbytes")>;

std::vector<nlohmann::json> run_caf_tcp(const transport_bench_options& opts) {
  std::vector<nlohmann::json> rows;
  auto server = child::spawn({opts.self_path, "__caf-echo-server"});
  auto port_line = server.line();
  if (port_line.empty())
    throw std::runtime_error("CAF echo server did not start");
  auto port = static_cast<uint16_t>(std::stoi(port_line));
  modelreg::system_config cfg;
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto echo = sys.middleman().remote_actor("127.0.0.1", port);
  if (!echo)
    throw std::runtime_error("remote_actor: " + sys.render(echo.error()));
  caf::scoped_actor self{sys};
  for (auto bytes : opts.sizes) {
    if (bytes > opts.caf_max_bytes)
      continue;
    std::vector<char> payload(bytes, 1);
    auto n = std::max<size_t>(iterations_for(bytes, opts.iterations) / 4, 3);
    std::vector<double> rtts;
    for (size_t i = 0; i < n + 2; ++i) {
      auto t0 = clock_type::now();
      bool ok = false;
      self->request(*echo, std::chrono::seconds{60}, bytes_atom::value, payload)
        .receive([&](const std::vector<char>& back) { ok = back.size() == bytes; },
                 [&](const caf::error&) {});
      auto dt = us_since(t0);
      if (!ok)
        throw std::runtime_error("CAF echo failed");
      if (i >= 2)
        rtts.push_back(dt);
    }
    rows.push_back(row("caf_tcp", bytes, rtts));
  }
  caf::anon_send_exit(*echo, caf::exit_reason::user_shutdown);
  server.stop();
  return rows;
}

#ifdef MODELREG_WITH_GRPC
std::vector<nlohmann::json> run_grpc(const transport_bench_options& opts, const std::string& dir) {
  std::vector<nlohmann::json> rows;
  auto path = dir + "/grpc.sock";
  std::filesystem::create_directories(dir);
  auto server = child::spawn({opts.self_path, "__grpc-echo-server", path});
  if (server.line() != "ready")
    throw std::runtime_error("gRPC echo server did not start");
  for (auto bytes : opts.sizes) {
    auto n = std::max<size_t>(iterations_for(bytes, opts.iterations) / 4, 3);
    rows.push_back(row("grpc", bytes, grpc_round_trips(path, bytes, n)));
  }
  server.stop();
  return rows;
}
#endif

} // namespace

int run_caf_echo_server() {
  modelreg::system_config cfg;
  cfg.load<caf::io::middleman>();
  caf::actor_system sys{cfg};
  auto echo = sys.spawn([](caf::event_based_actor*) -> caf::behavior {
    return {[](bytes_atom, const std::vector<char>& in) { return std::vector<char>(in.size(), 2); }};
  });
  auto port = sys.middleman().publish(echo, 0, "127.0.0.1", true);
  if (!port) {
    std::cerr << sys.render(port.error()) << std::endl;
    return 1;
  }
  std::cout << *port << std::endl;
  while (std::cin.get() != EOF) {
  }
  sys.middleman().unpublish(echo, *port);
  caf::anon_send_exit(echo, caf::exit_reason::user_shutdown);
  return 0;
}

double shm_rtt_us_p50(const std::string& self_path, size_t bytes, const std::string& dir) {
  transport_bench_options opts;
  opts.self_path = self_path;
  opts.sizes = {bytes};
  auto rows = run_modelreg(opts, true, dir);
  return rows.at(0)["rtt_us_p50"].get<double>();
}

std::string run_transport_bench(const transport_bench_options& opts) {
  nlohmann::json results = nlohmann::json::array();
  // The floor right before and right after the shared-memory rows, so the
  // two are compared on the same machine state (these VMs drift). The child
  // of the fork only reads and writes eventfds, which is safe in a process
  // that has threads.
  auto floor = eventfd_floor(opts.iterations / 2);
  char tmpl[] = "/tmp/modelreg-bench-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr)
    return nlohmann::json{{"error", std::string{"cannot create a folder in /tmp: "} +
                                      std::strerror(errno)}}
      .dump();
  std::string dir = tmpl;
  auto shm_rows = run_modelreg(opts, true, dir + "/run");
  auto after = eventfd_floor(opts.iterations / 2);
  floor.insert(floor.end(), after.begin(), after.end());
  results.push_back(row("floor", 8, floor));
  for (auto& r : shm_rows)
    results.push_back(r);
  for (auto& r : run_modelreg(opts, false, dir + "/run"))
    results.push_back(r);
  if (opts.with_caf)
    for (auto& r : run_caf_tcp(opts))
      results.push_back(r);
#ifdef MODELREG_WITH_GRPC
  if (opts.with_grpc)
    for (auto& r : run_grpc(opts, dir + "/run"))
      results.push_back(r);
#endif
  std::filesystem::remove_all(dir);
  nlohmann::json out = {{"results", results},
                        {"shm_receive_mode", "spin 50 us, then sleep until a ring datagram on the socket"}};
  return out.dump();
}

} // namespace modelreg::bench

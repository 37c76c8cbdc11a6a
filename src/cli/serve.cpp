// `modelreg serve`: a node hosting the registry for other processes.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <optional>

#include <pthread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <arpa/inet.h>

#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/manager.hpp>
#include <caf/openssl/publish.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "cli/commands.hpp"
#include "cli/default_catalog.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/actors/shm_gateway.hpp"
#include "modelreg/actors/tcp_guard.hpp"
#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"
#include "modelreg/transport/socket.hpp"

namespace modelreg::cli {

namespace {

bool is_loopback(const std::string& host) {
  if (host == "localhost")
    return true;
  in_addr v4{};
  if (::inet_pton(AF_INET, host.c_str(), &v4) == 1)
    return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  if (::inet_pton(AF_INET6, host.c_str(), &v6) == 1)
    return IN6_IS_ADDR_LOOPBACK(&v6);
  return false;
}

constexpr const char* serve_usage = R"(usage: modelreg serve [options]

Hosts a registry with a model catalog for other processes: on this host over
shared memory (a Unix socket), optionally on other hosts over TCP.

options:
  --socket PATH          Unix socket (default: $MODELREG_SOCKET, else
                         $XDG_RUNTIME_DIR/modelreg/modelreg.sock, else
                         /tmp/modelreg-$UID/modelreg.sock)
  --catalog FILE         model catalog (JSON, see docs/serve.md); default: the
                         built-in catalog
  --allow-uid UID        also accept peers of this uid, with the infer role
                         (repeatable; default: only this process's uid)
  --admin-uid UID        also accept peers of this uid, with the admin role
                         (repeatable)
  --tcp HOST:PORT        also listen on TCP (CAF middleman); PORT 0 picks one
  --tls-cert FILE --tls-key FILE --tls-ca FILE
                         mutual TLS on TCP: this node's certificate and key,
                         and the CA that signed its clients' certificates
  --insecure             allow TCP without TLS on a non-loopback address
  --insecure-admin       give plain-TCP peers the admin role (default: infer)
  --max-tcp-message SIZE the largest message a plain-TCP peer may send, e.g.
                         64M (default); a larger one closes its connection
  --tls-role ROLE        the role of TLS peers: admin (default) or infer
  --max-in-flight N      requests one connection may have in flight; more
                         are answered overloaded (default 1024)
  --peer-timeout SECONDS close a Unix peer that sent nothing, not even a
                         heartbeat, this long (default 3; 0: never)
  --max-shared-memory SIZE
                         shared memory the node maps for all its clients
                         together, e.g. 8G, 512M or bytes (default: half of
                         this machine's memory; 0: no limit)
  --max-memory BYTES     byte budget for loaded models (default: unlimited)
  --idle-ttl SECONDS     unload models idle this long (default 300; 0: never)
  --max-batch N          dynamic batching for batchable models (default 8)
  --batch-timeout-ms MS  wait this long to fill a batch (default 10)

Roles: the node's own uid and --admin-uid peers are admins (load any model
spec, unload); every other peer may infer, hold leases, read status and load
catalog names. See docs/serve.md, "Access and roles" and "Limits".

Prints "ready" (and the TCP port) on stdout once it serves. SIGINT/SIGTERM
stop it gracefully: requests in flight are answered, clients are told.
)";

/// Bytes with an optional binary suffix (K, M, G, T; "KiB" and "KB" alike);
/// nothing if `text` is not exactly that.
std::optional<uint64_t> parse_bytes(const std::string& text) {
  char* end = nullptr;
  if (text.empty() || text.front() == '-')
    return std::nullopt;
  auto value = std::strtod(text.c_str(), &end);
  std::string unit{end};
  if (end == text.c_str() || !(value >= 0))
    return std::nullopt;
  static const std::pair<const char*, double> units[] = {
    {"", 1}, {"K", 1024.0}, {"M", 1024.0 * 1024}, {"G", 1024.0 * 1024 * 1024},
    {"T", 1024.0 * 1024 * 1024 * 1024}};
  for (const auto& [name, scale] : units) {
    std::string n{name};
    if (unit == n || (!n.empty() && (unit == n + "iB" || unit == n + "B")))
      return static_cast<uint64_t>(value * scale);
  }
  return std::nullopt;
}

/// More descriptors: each peer costs a socket, and the node must never run
/// out before its limits refuse a peer with a clear error.
void raise_fd_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

} // namespace

int serve(std::vector<std::string> args) {
  if (take_flag(args, "--help")) {
    std::cout << serve_usage;
    return exit_ok;
  }
  auto socket = take_option(args, "--socket").value_or(default_socket_path());
  auto catalog_file = take_option(args, "--catalog");
  auto uids = take_all(args, "--allow-uid");
  auto admin_uids = take_all(args, "--admin-uid");
  auto tcp = take_option(args, "--tcp");
  tls_files tls{take_option(args, "--tls-cert").value_or(""),
                take_option(args, "--tls-key").value_or(""),
                take_option(args, "--tls-ca").value_or("")};
  bool insecure = take_flag(args, "--insecure");
  bool insecure_admin = take_flag(args, "--insecure-admin");
  auto tls_role = take_option(args, "--tls-role");
  auto tls_role_name = tls_role.value_or("admin");
  size_t max_in_flight = 1024;
  std::chrono::milliseconds peer_timeout{3000};
  uint64_t max_shared_memory = static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
                               static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)) / 2;
  registry_config rcfg;
  rcfg.idle_ttl = std::chrono::seconds{300};
  try {
    if (auto v = take_option(args, "--max-memory"))
      rcfg.max_memory_bytes = std::stoull(*v);
    if (auto v = take_option(args, "--idle-ttl"))
      rcfg.idle_ttl = std::chrono::seconds{std::stoull(*v)};
    if (auto v = take_option(args, "--max-batch"))
      rcfg.max_batch = std::max<size_t>(1, std::stoul(*v));
    if (auto v = take_option(args, "--batch-timeout-ms"))
      rcfg.batch_timeout = std::chrono::milliseconds{std::stoull(*v)};
  } catch (const std::exception&) {
    return usage_error("serve: a numeric option has a bad value");
  }
  if (auto v = take_option(args, "--max-in-flight")) {
    char* end = nullptr;
    auto n = std::strtoull(v->c_str(), &end, 10);
    if (v->empty() || *end != '\0' || v->front() == '-' || n == 0)
      return usage_error("serve: --max-in-flight takes a count of at least 1, not '" + *v + "'");
    max_in_flight = n;
  }
  if (auto v = take_option(args, "--max-shared-memory")) {
    auto bytes = parse_bytes(*v);
    if (!bytes)
      return usage_error("serve: --max-shared-memory takes a size such as 8G, 512M or bytes, not '" +
                         *v + "'");
    max_shared_memory = *bytes;
  }
  tcp_guard_options guard_opts;
  auto max_tcp_message = take_option(args, "--max-tcp-message");
  if (auto v = max_tcp_message) {
    auto bytes = parse_bytes(*v);
    if (!bytes || *bytes < 1024 || *bytes > (uint64_t{1} << 32))
      return usage_error("serve: --max-tcp-message takes a size from 1K to 4G such as 64M, not '" +
                         *v + "'");
    guard_opts.max_message = *bytes;
    guard_opts.max_buffered = std::max(guard_opts.max_buffered, 4 * *bytes);
  }
  if (auto v = take_option(args, "--peer-timeout")) {
    char* end = nullptr;
    auto secs = std::strtod(v->c_str(), &end);
    if (v->empty() || *end != '\0' || !(secs >= 0) || secs > 86400)
      return usage_error("serve: --peer-timeout takes seconds from 0 to 86400, not '" + *v + "'");
    peer_timeout = std::chrono::milliseconds{static_cast<int64_t>(secs * 1000)};
  }
  if (!args.empty())
    return usage_error("serve: unknown option " + args.front());
  if (tls_role_name != "admin" && tls_role_name != "infer")
    return usage_error("serve: --tls-role is admin or infer, not " + tls_role_name);
  rcfg.ttl_sweep = rcfg.idle_ttl.count() > 0;

  // -- everything checked before anything starts ---------------------------
  auto cat = catalog_file ? catalog::load_file(*catalog_file) : catalog::parse(default_catalog_json);
  if (!cat) {
    std::cerr << "modelreg serve: " << describe(cat.error()) << "\n";
    return exit_failed;
  }
  std::string tcp_host;
  uint16_t tcp_port = 0;
  if (tcp) {
    auto colon = tcp->rfind(':');
    if (colon == std::string::npos)
      return usage_error("serve: --tcp needs HOST:PORT");
    tcp_host = tcp->substr(0, colon);
    try {
      auto port = std::stoul(tcp->substr(colon + 1));
      if (port > 65535)
        throw std::out_of_range{"port"};
      tcp_port = static_cast<uint16_t>(port);
    } catch (const std::exception&) {
      return usage_error("serve: bad port in --tcp " + *tcp);
    }
    if (tls.any()) {
      if (auto err = check_tls(tls); !err.empty()) {
        std::cerr << "modelreg serve: " << err << "\n";
        return exit_failed;
      }
    } else if (!is_loopback(tcp_host) && !insecure) {
      std::cerr << "modelreg serve: refusing plain TCP on non-loopback address " << tcp_host
                << ": give --tls-cert/--tls-key/--tls-ca, or --insecure to allow it\n";
      return exit_failed;
    }
  } else if (tls.any()) {
    return usage_error("serve: TLS options need --tcp");
  }
  if (max_tcp_message && (!tcp || tls.any()))
    return usage_error("serve: --max-tcp-message is for plain TCP (--tcp without TLS)");
  if (insecure_admin && (!tcp || tls.any()))
    return usage_error("serve: --insecure-admin is for plain TCP (--tcp without TLS)");
  if (tls_role && !tls.any())
    return usage_error("serve: --tls-role needs --tcp with --tls-cert/--tls-key/--tls-ca");
  // Another node on this socket? Do not steal it.
  if (transport::connect_seqpacket(socket)) {
    std::cerr << "modelreg serve: another node is already serving on " << socket << "\n";
    return exit_failed;
  }
  transport::endpoint_options eopts;
  eopts.peer_timeout = peer_timeout;
  eopts.max_shared_memory_bytes = max_shared_memory;
  std::vector<uid_t> admins;
  try {
    for (const auto& u : uids)
      eopts.allowed_uids.push_back(static_cast<uid_t>(std::stoul(u)));
    for (const auto& u : admin_uids)
      admins.push_back(static_cast<uid_t>(std::stoul(u)));
  } catch (const std::exception&) {
    return usage_error("serve: bad --allow-uid or --admin-uid");
  }
  eopts.allowed_uids.insert(eopts.allowed_uids.end(), admins.begin(), admins.end());
  if (!eopts.allowed_uids.empty())
    eopts.allowed_uids.push_back(::getuid());
  raise_fd_limit();

  // Signals are taken by this thread only (sigwait below).
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  system_config cfg;
  if (tcp) {
    cfg.load<caf::io::middleman>();
    // A peer that freezes without closing its socket is dropped.
    cfg.set("middleman.heartbeat-interval", caf::timespan{std::chrono::milliseconds{500}});
    cfg.set("middleman.connection-timeout", caf::timespan{std::chrono::seconds{5}});
    if (tls.any()) {
      cfg.load<caf::openssl::manager>();
      cfg.openssl_certificate = tls.cert;
      cfg.openssl_key = tls.key;
      cfg.openssl_cafile = tls.ca;
    }
  }
  caf::actor_system sys{cfg};
  auto logger = log::get("modelreg.serve");
  rcfg.catalog = std::make_shared<catalog>(std::move(*cat));
  auto registry = spawn_registry(sys, rcfg);
  auto ep = transport::endpoint::start(eopts);
  gateway_options gopts;
  gopts.catalog = rcfg.catalog->names();
  gopts.endpoint = ep;
  gopts.admin_uids = admins;
  gopts.max_in_flight_per_peer = max_in_flight;
  auto gw = spawn_gateway(sys, registry, gopts);
  wire_actor door;
  tcp_guard guard{guard_opts};
  auto stop_all = [&] {
    close_wire_interface(door);
    caf::anon_send(gw, shutdown_atom::value);
    caf::anon_send(registry, shutdown_atom::value);
    ep->stop();
  };
  if (auto err = listen_shm(gw, ep, socket)) {
    std::cerr << "modelreg serve: cannot listen on " << socket << ": " << describe(err) << "\n";
    stop_all();
    return exit_failed;
  }
  std::string tcp_note;
  if (tcp) {
    auto role = tls.any() ? (tls_role_name == "admin" ? peer_role::admin : peer_role::infer)
                          : (insecure_admin ? peer_role::admin : peer_role::infer);
    door = wire_interface(sys, gw, role);
    // Plain TCP goes through the guard: CAF would allocate whatever a
    // peer's first header announces. TLS peers are checked by their
    // certificate before CAF reads anything from them.
    auto port = tls.any() ? caf::openssl::publish(door, tcp_port, tcp_host.c_str(), true)
                          : guard.publish(sys, caf::actor_cast<caf::strong_actor_ptr>(door),
                                          sys.message_types(door), tcp_port, tcp_host);
    if (!port) {
      std::cerr << "modelreg serve: cannot listen on TCP " << *tcp << ": " << sys.render(port.error())
                << "\n";
      stop_all();
      ::unlink(socket.c_str());
      return exit_failed;
    }
    tcp_note = " tcp://" + tcp_host + ":" + std::to_string(*port) +
               (tls.any() ? " (mutual TLS)" : "") + " role " + to_string(role);
  }
  std::cout << "ready unix:" << socket << tcp_note << "\n"
            << "catalog: " << rcfg.catalog->size() << " models" << std::endl;
  logger->info("serving unix:{}{}", socket, tcp_note);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::cout << "stopping (" << (sig == SIGINT ? "SIGINT" : "SIGTERM") << ")" << std::endl;
  {
    // Graceful: the gateway tells every peer, answers what is in flight, quits.
    caf::scoped_actor self{sys};
    self->monitor(gw);
    caf::anon_send(gw, shutdown_atom::value);
    self->receive([](const caf::down_msg&) {},
                  caf::after(gopts.drain_timeout + std::chrono::seconds{1}) >> [] {});
  }
  close_wire_interface(door);
  ep->stop();
  ::unlink(socket.c_str());
  caf::anon_send(registry, shutdown_atom::value);
  std::cout << "stopped" << std::endl;
  return exit_ok;
}

} // namespace modelreg::cli

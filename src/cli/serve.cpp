// `modelreg serve`: a node hosting the registry for other processes.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>

#include <pthread.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>


#include <caf/actor_system.hpp>
#include <caf/actor_system_config.hpp>
#include <caf/io/middleman.hpp>
#include <caf/openssl/publish.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>

#include "cli/commands.hpp"
#include "cli/default_catalog.hpp"
#include "doors/grpc_door.hpp"
#include "doors/http_door.hpp"
#include "doors/systemd.hpp"
#include "modelreg/actors/ask.hpp"
#include "modelreg/actors/cluster.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/actors/gateway.hpp"
#include "modelreg/actors/tcp_guard.hpp"
#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/backend/catalog.hpp"
#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/messages/system_config.hpp"
#include "modelreg/transport/socket.hpp"

namespace modelreg::cli {

namespace {

/// Everything `serve` is told on its command line.
struct serve_options {
  std::string socket = default_socket_path();
  std::optional<std::string> catalog_file;
  std::vector<uid_t> allow_uids;
  std::vector<uid_t> admin_uids;
  std::optional<std::string> tcp;
  std::vector<std::string> join;
  bool cluster = false;
  std::optional<std::string> advertise;
  std::chrono::milliseconds cluster_heartbeat{500};
  std::chrono::milliseconds cluster_timeout{3000};
  std::chrono::milliseconds copy_queue_time{50};
  tls_files tls;
  bool insecure = false;
  bool insecure_admin = false;
  std::string tls_role = "admin";
  bool tls_role_given = false;
  size_t max_in_flight = 1024;
  std::chrono::milliseconds peer_timeout{3000};
  uint64_t max_shared_memory = static_cast<uint64_t>(::sysconf(_SC_PHYS_PAGES)) *
                               static_cast<uint64_t>(::sysconf(_SC_PAGESIZE)) / 2;
  tcp_guard_options guard;
  bool max_tcp_message_given = false;
  std::optional<std::string> http;
  std::optional<std::string> grpc;
  std::optional<std::string> metrics;
  doors::http_options http_opts;
  uint64_t http_max_body = uint64_t{64} << 20;
  size_t http_max_connections = 1024;
  registry_config rcfg = [] {
    registry_config c;
    c.idle_ttl = std::chrono::seconds{300};
    return c;
  }();
};

constexpr const char* serve_footer = R"(
Roles: the node's own uid and --admin-uid peers are admins (load any model
spec, unload); every other peer may infer, hold leases, read status and load
catalog names. See docs/serve.md, "Access and roles" and "Limits".

Sizes: 2G, 512M, 1.5GiB or bytes. Durations: 1.5 (seconds), 500ms, 30s, 5m.

HTTP and gRPC speak the Open Inference Protocol (KServe v2); /metrics is
Prometheus's text format (docs/serve.md, "HTTP, gRPC and metrics"). Plain
HTTP and gRPC peers have the infer role (--insecure-admin: admin); with
--tls-* both are mutual TLS, their peers with --tls-role. --metrics is plain. Under systemd: Type=notify readiness
and socket activation (examples/modelreg.service, examples/modelreg.socket).

Prints "ready" (and every address) on stdout once it serves. SIGINT/SIGTERM
stop it gracefully: requests in flight are answered, clients are told; a
second SIGINT/SIGTERM stops it at once.
)";

/// More descriptors: each peer costs a socket, and the node must never run
/// out before its limits refuse a peer with a clear error.
void raise_fd_limit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &lim);
  }
}

int run_serve(serve_options o);

} // namespace

std::vector<command> add_serve(CLI::App& app) {
  auto o = std::make_shared<serve_options>();
  auto* sub = app.add_subcommand("serve", "host a registry with a model catalog for other "
                                          "processes (Unix socket with shared memory; TCP with "
                                          "mutual TLS)");
  sub->footer(serve_footer);
  sub->add_option("--socket", o->socket,
                  "Unix socket (default: $MODELREG_SOCKET, else "
                  "$XDG_RUNTIME_DIR/modelreg/modelreg.sock, else /tmp/modelreg-$UID/modelreg.sock)")
    ->type_name("PATH");
  sub->add_option("--catalog", o->catalog_file,
                  "model catalog (JSON, see docs/serve.md and examples/catalog.json); default: "
                  "the built-in catalog")
    ->type_name("FILE");
  sub->add_option("--allow-uid", o->allow_uids,
                  "also accept peers of this uid, with the infer role (repeatable)")
    ->type_name("UID")
    ->check(CLI::Range(0u, 4294967294u));
  sub->add_option("--admin-uid", o->admin_uids,
                  "also accept peers of this uid, with the admin role (repeatable)")
    ->type_name("UID")
    ->check(CLI::Range(0u, 4294967294u));
  sub->add_option("--tcp", o->tcp, "also listen on TCP (CAF middleman); PORT 0 picks one")
    ->type_name("HOST:PORT");
  sub->add_option("--join", o->join,
                  "join the cluster of the node at this address (repeatable; implies --cluster): "
                  "models are placed across the members, one copy each (docs/cluster.md)")
    ->type_name("tcp://HOST:PORT");
  sub->add_flag("--cluster", o->cluster,
                "be a member of a cluster that others --join (the first node of one); needs "
                "--tcp, and the admin role for peers (mutual TLS, or --insecure-admin)");
  sub->add_option("--advertise", o->advertise,
                  "the host the other members reach this node at (default: the --tcp host; "
                  "needed when that is 0.0.0.0 or ::)")
    ->type_name("HOST");
  add_duration(sub, "--cluster-heartbeat", o->cluster_heartbeat,
               "how often members tell each other what they hold (default 500ms)",
               std::chrono::seconds{10}, std::chrono::milliseconds{50});
  add_duration(sub, "--copy-queue-time", o->copy_queue_time,
               "a model with max_copies > 1 whose requests wait longer than this (for 2 s) gets "
               "another copy on another member (default 50ms)",
               std::chrono::minutes{10}, std::chrono::milliseconds{1});
  add_duration(sub, "--cluster-timeout", o->cluster_timeout,
               "remove a member silent this long (default 3s); a member whose connection closes "
               "is removed at once",
               std::chrono::minutes{10}, std::chrono::milliseconds{200});
  sub->add_option("--tls-cert", o->tls.cert, "mutual TLS on TCP, HTTP and gRPC: this node's certificate")
    ->type_name("FILE");
  sub->add_option("--tls-key", o->tls.key, "mutual TLS on TCP, HTTP and gRPC: this node's private key")
    ->type_name("FILE");
  sub->add_option("--tls-ca", o->tls.ca, "mutual TLS on TCP, HTTP and gRPC: the CA of its clients' certificates")
    ->type_name("FILE");
  sub->add_flag("--insecure", o->insecure, "allow TCP, HTTP, gRPC or metrics without TLS on a non-loopback address");
  sub->add_flag("--insecure-admin", o->insecure_admin,
                "give plain TCP, HTTP and gRPC peers the admin role (default: infer)");
  sub->add_option_function<std::string>(
       "--tls-role",
       [o](const std::string& v) {
         o->tls_role = v;
         o->tls_role_given = true;
       },
       "the role of TLS peers: admin (default) or infer")
    ->type_name("ROLE")
    ->check(CLI::IsMember({"admin", "infer"}));
  add_count(sub, "--max-in-flight", o->max_in_flight,
            "requests one connection may have in flight; more are answered overloaded "
            "(default 1024)",
            1);
  add_duration(sub, "--peer-timeout", o->peer_timeout,
               "close a Unix peer that sent nothing, not even a heartbeat, this long (default "
               "3s; 0: never)",
               std::chrono::hours{24});
  add_size(sub, "--max-shared-memory", o->max_shared_memory,
           "shared memory the node maps for all its clients together (default: half of this "
           "machine's memory; 0: no limit)");
  add_size(sub, "--max-tcp-message", o->guard.max_message,
           "the largest message a plain-TCP peer may send (default 64M); a larger one closes "
           "its connection",
           1024, uint64_t{1} << 32)
    ->each([o](const std::string&) {
      o->max_tcp_message_given = true;
      o->guard.max_buffered = std::max(o->guard.max_buffered, 4 * o->guard.max_message);
    });
  sub->add_option("--http", o->http,
                  "also serve the Open Inference Protocol over HTTP/REST, and /metrics "
                  "(HTTPS with --tls-*; loopback unless TLS or --insecure); PORT 0 picks one")
    ->type_name("HOST:PORT");
  sub->add_option("--grpc", o->grpc,
                  "also serve the Open Inference Protocol over gRPC (loopback unless --tls-* "
                  "or --insecure); PORT 0 picks one")
    ->type_name("HOST:PORT");
  sub->add_option("--metrics", o->metrics,
                  "serve Prometheus /metrics (and /v2/health/*) on a port of its own (loopback "
                  "unless --insecure)")
    ->type_name("HOST:PORT");
  add_size(sub, "--http-max-body", o->http_max_body,
           "the largest HTTP request body; a larger one is answered 413 unread (default 64M)",
           1024, uint64_t{1} << 32);
  add_duration(sub, "--http-request-timeout", o->http_opts.request_timeout,
               "close an HTTP connection whose request has not arrived whole this long after it "
               "opened or after its previous answer (default 30s)",
               std::chrono::hours{1}, std::chrono::milliseconds{100});
  add_duration(sub, "--http-idle-timeout", o->http_opts.idle_timeout,
               "close an HTTP connection idle this long (default 15s)", std::chrono::hours{1},
               std::chrono::seconds{1});
  add_count(sub, "--http-max-connections", o->http_max_connections,
            "HTTP connections open at once (a quarter of them from one address); more are "
            "closed at accept (default 1024)",
            4, 1u << 16);
  add_size(sub, "--max-memory", o->rcfg.max_memory_bytes,
           "byte budget for loaded models (default: unlimited)");
  add_duration(sub, "--idle-ttl", o->rcfg.idle_ttl,
               "unload models idle this long (default 300s here, where the library's default is "
               "30s; 0: never)");
  add_count(sub, "--max-batch", o->rcfg.max_batch,
            "dynamic batching for batchable models: at most this many requests (default 8)", 1,
            4096);
  add_duration(sub, "--batch-timeout", o->rcfg.batch_timeout,
               "wait this long to fill a batch (default 10ms)", std::chrono::seconds{10});
  add_count(sub, "--max-queue", o->rcfg.max_queue,
            "requests that may wait for a model served one at a time, taken fairly across "
            "clients; more are answered busy (default 4096)",
            1, 1u << 20);
  return {{sub, [o] { return run_serve(*o); }}};
}

namespace {

int run_serve(serve_options o) {
  auto& socket = o.socket;
  auto& catalog_file = o.catalog_file;
  auto& tcp = o.tcp;
  auto& tls = o.tls;
  auto& rcfg = o.rcfg;
  bool insecure = o.insecure;
  bool insecure_admin = o.insecure_admin;
  auto& tls_role_name = o.tls_role;
  auto max_in_flight = o.max_in_flight;
  rcfg.ttl_sweep = rcfg.idle_ttl.count() > 0;

  // -- everything checked before anything starts ---------------------------
  if (catalog_file) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(*catalog_file, ec)) {
      auto why = std::filesystem::exists(*catalog_file, ec) ? "it is not a regular file"
                                                            : std::strerror(ENOENT);
      std::cerr << "modelreg serve: cannot read the catalog " << *catalog_file << ": " << why
                << "\n(a catalog is a JSON file like examples/catalog.json; see docs/serve.md)\n";
      return exit_failed;
    }
  }
  auto cat = catalog_file ? catalog::load_file(*catalog_file) : catalog::parse(default_catalog_json);
  if (!cat) {
    std::cerr << "modelreg serve: " << describe(cat.error()) << "\n";
    return exit_failed;
  }
  // Every entry against its backend's parameters: a misspelt one would
  // otherwise be ignored and the model load with its default.
  auto backends = backend_registry::with_builtins();
  if (auto problems = cat->check(*backends); !problems.empty()) {
    for (const auto& p : problems)
      std::cerr << "modelreg serve: " << p << "\n";
    std::cerr << "modelreg serve: the catalog has " << problems.size()
              << " problem(s); nothing was started ('modelreg catalog check FILE' checks a file)\n";
    return exit_failed;
  }
  std::string tcp_host;
  uint16_t tcp_port = 0;
  if (tcp) {
    auto address = parse_host_port(*tcp);
    if (!address)
      return usage_error("serve: --tcp takes HOST:PORT with PORT from 0 to 65535, not '" + *tcp +
                         "'");
    tcp_host = address->host;
    tcp_port = address->port;
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
    if (!o.grpc && !o.http)
      return usage_error("serve: TLS options need --tcp, --grpc or --http");
    if (auto err = check_tls(tls); !err.empty()) {
      std::cerr << "modelreg serve: " << err << "\n";
      return exit_failed;
    }
  }
  // A cluster: members reach each other's --tcp door.
  bool in_cluster = o.cluster || !o.join.empty();
  std::string self_address;
  if (in_cluster) {
    if (!tcp)
      return usage_error("serve: --cluster and --join need --tcp: members reach each other there");
    if (!tls.any() && !insecure_admin)
      return usage_error("serve: a cluster member needs the admin role for its peers: give "
                         "--tls-cert/--tls-key/--tls-ca (mutual TLS), or --insecure-admin on a "
                         "trusted network");
    if (o.tls_role_given && tls_role_name != "admin")
      return usage_error("serve: --tls-role infer leaves peers no way to join; a cluster member's "
                         "TLS peers are admins");
    for (const auto& j : o.join) {
      auto where = parse_connect_uri(j);
      if (!where || where->unix_socket)
        return usage_error("serve: --join takes tcp://HOST:PORT, not '" + j + "'");
    }
    auto host = o.advertise.value_or(tcp_host);
    if (host.empty() || host == "0.0.0.0" || host == "::" || host == "[::]")
      return usage_error("serve: --tcp " + *tcp +
                         " listens on every address: give --advertise HOST, the one the other "
                         "members reach this node at");
    self_address = host; // the port is known once listening
  } else if (o.advertise) {
    return usage_error("serve: --advertise is for a cluster member (--cluster or --join)");
  }
  if (o.max_tcp_message_given && (!tcp || tls.any()))
    return usage_error("serve: --max-tcp-message is for plain TCP (--tcp without TLS)");
  // The Open Inference Protocol's doors and /metrics.
  auto check_door = [&](const std::optional<std::string>& value, const std::string& flag,
                        bool tls_protects, std::optional<node_address>& out) -> int {
    if (!value)
      return 0;
    auto a = parse_host_port(*value);
    if (!a)
      return usage_error("serve: " + flag + " takes HOST:PORT with PORT from 0 to 65535, not '" +
                         *value + "'");
    if (!is_loopback(a->host) && !insecure && !(tls_protects && tls.any())) {
      std::cerr << "modelreg serve: refusing " << flag << " on non-loopback address " << a->host
                << ": "
                << (tls_protects ? "give --tls-cert/--tls-key/--tls-ca, or --insecure to allow "
                                   "it without TLS"
                                 : "metrics are plain HTTP: keep them on loopback, or give "
                                   "--insecure to allow it")
                << "\n";
      return exit_failed;
    }
    out = *a;
    return 0;
  };
  std::optional<node_address> http_at, grpc_at, metrics_at;
  if (int rc = check_door(o.http, "--http", true, http_at); rc != 0)
    return rc;
  if (int rc = check_door(o.grpc, "--grpc", true, grpc_at); rc != 0)
    return rc;
  if (int rc = check_door(o.metrics, "--metrics", false, metrics_at); rc != 0)
    return rc;
  bool plain_door = !tls.any() && (tcp || http_at || grpc_at);
  if (insecure_admin && !plain_door)
    return usage_error("serve: --insecure-admin is for plain TCP, HTTP or gRPC peers (--tcp, "
                       "--http or --grpc without TLS)");
  if (o.tls_role_given && !tls.any())
    return usage_error("serve: --tls-role needs --tcp with --tls-cert/--tls-key/--tls-ca");
  // Sockets passed by systemd's socket activation (examples/modelreg.socket):
  // the Unix socket, the HTTP port and the metrics port, told apart by their
  // kind and FileDescriptorName=.
  int passed_unix = -1, passed_http = -1, passed_metrics = -1;
  for (const auto& [name, fd] : doors::activated_sockets()) {
    int type = 0;
    socklen_t len = sizeof type;
    sockaddr_storage addr{};
    socklen_t alen = sizeof addr;
    ::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &alen);
    if (addr.ss_family == AF_UNIX && type == SOCK_SEQPACKET) {
      passed_unix = fd;
      socket = reinterpret_cast<sockaddr_un*>(&addr)->sun_path;
    } else if ((addr.ss_family == AF_INET || addr.ss_family == AF_INET6) && type == SOCK_STREAM) {
      (name == "metrics" ? passed_metrics : passed_http) = fd;
    } else {
      std::cerr << "modelreg serve: the passed socket '" << name << "' (descriptor " << fd
                << ") is neither a Unix SOCK_SEQPACKET socket nor a TCP one; see "
                   "examples/modelreg.socket\n";
      return exit_failed;
    }
  }
  if (passed_http >= 0 && !http_at)
    http_at = node_address{};
  if (passed_metrics >= 0 && !metrics_at)
    metrics_at = node_address{};
  // Another node on this socket? Do not steal it.
  if (passed_unix < 0 && transport::connect_seqpacket(socket)) {
    std::cerr << "modelreg serve: another node is already serving on " << socket << "\n";
    return exit_failed;
  }
  transport::endpoint_options eopts;
  eopts.peer_timeout = o.peer_timeout;
  eopts.max_shared_memory_bytes = o.max_shared_memory;
  eopts.allowed_uids = o.allow_uids;
  const auto& admins = o.admin_uids;
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
    if (tls.any())
      load_tls(cfg, tls);
  }
  caf::actor_system sys{cfg};
  auto logger = log::get("modelreg.serve");
  rcfg.catalog = std::make_shared<catalog>(std::move(*cat));
  rcfg.backends = backends;
  rcfg.metrics = std::make_shared<node_metrics>();
  auto started = transport::endpoint::try_start(eopts);
  if (!started) {
    std::cerr << "modelreg serve: " << describe(started.error()) << "\n";
    return exit_failed;
  }
  auto ep = std::move(*started);
  std::unique_ptr<cluster_node> cluster;
  if (in_cluster) {
    cluster_options co;
    co.join = o.join;
    co.heartbeat_interval = o.cluster_heartbeat;
    co.member_timeout = o.cluster_timeout;
    co.scale_up_queue = o.copy_queue_time;
    // Four heartbeats in a row at the default: two seconds of queueing.
    co.scale_up_intervals = static_cast<int>(std::max<int64_t>(
      1, std::chrono::milliseconds{2000} / std::max(o.cluster_heartbeat, std::chrono::milliseconds{1})));
    co.load_timeout = rcfg.load_timeout;
    co.catalog = rcfg.catalog;
    co.backends = backends;
    co.metrics = rcfg.metrics;
    co.connections = [weak = std::weak_ptr<transport::endpoint>(ep)]() -> uint64_t {
      auto e = weak.lock();
      return e ? e->stats().connections : 0;
    };
    cluster = std::make_unique<cluster_node>(sys, std::move(co));
    rcfg.placement = cluster->placement();
    // A load placed elsewhere waits, on its loader thread, for the holder's
    // load; with loads queued by count, members whose slots all wait on
    // each other's queued loads would deadlock until the load timeout. So
    // a member does not queue loads by count: the reservations bound their
    // memory.
    rcfg.max_concurrent_loads = 0;
    rcfg.spare_copy = cluster->spare_copy();
  }
  auto ready_models = make_ready_table();
  auto registry = spawn_registry(sys, rcfg, ready_models);
  gateway_options gopts;
  gopts.catalog = rcfg.catalog->names();
  gopts.catalog_details = rcfg.catalog->describe_json(*backends);
  gopts.endpoint = ep;
  gopts.admin_uids = admins;
  gopts.max_in_flight_per_peer = max_in_flight;
  if (cluster)
    gopts.cluster_status = [c = cluster.get()] { return c->status_json(); };
  auto gw = spawn_gateway(sys, registry, gopts);
  wire_actor door;
  tcp_guard guard{o.guard};
  std::shared_ptr<oip::service> protocol;
  std::unique_ptr<doors::http_door> http_door, metrics_door;
  std::unique_ptr<doors::grpc_door> grpc_door;
  auto stop_doors = [&] {
    if (protocol)
      protocol->set_ready(false);
    if (http_door)
      http_door->stop();
    if (metrics_door)
      metrics_door->stop();
    if (grpc_door)
      grpc_door->stop();
    if (protocol)
      protocol->stop();
  };
  auto stop_all = [&] {
    if (cluster)
      cluster->stop();
    stop_doors();
    close_wire_interface(door);
    caf::anon_send(gw, shutdown_atom::value);
    caf::anon_send(registry, shutdown_atom::value);
    ep->stop();
  };
  bool own_socket_file = passed_unix < 0;
  if (auto err = own_socket_file ? listen_shm(gw, ep, socket)
                                 : listen_shm_socket(gw, ep, passed_unix)) {
    std::cerr << "modelreg serve: cannot listen on " << socket << ": " << describe(err) << "\n";
    stop_all();
    return exit_failed;
  }
  auto unlink_socket = [&] {
    if (own_socket_file)
      ::unlink(socket.c_str());
  };
  std::string tcp_note;
  if (tcp) {
    auto role = tls.any() ? (tls_role_name == "admin" ? peer_role::admin : peer_role::infer)
                          : (insecure_admin ? peer_role::admin : peer_role::infer);
    // A cluster member's door also takes its peers' cluster messages; the
    // member starts once its port is known.
    caf::actor cluster_actor;
    if (cluster) {
      cluster->start(registry);
      cluster_actor = cluster->actor();
    }
    door = wire_interface(sys, gw, role, cluster_actor);
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
      unlink_socket();
      return exit_failed;
    }
    // An IPv6 address in brackets, as URIs write it (tcp://[::1]:7447).
    auto host = tcp_host.find(':') != std::string::npos ? "[" + tcp_host + "]" : tcp_host;
    if (cluster) {
      auto advertised = self_address.find(':') != std::string::npos ? "[" + self_address + "]"
                                                                    : self_address;
      self_address = "tcp://" + advertised + ":" + std::to_string(*port);
      cluster->announce(self_address);
    }
    tcp_note = " tcp://" + host + ":" + std::to_string(*port) +
               (tls.any() ? " (mutual TLS)" : "") + " role " + to_string(role);
  }
  // HTTP, gRPC and metrics.
  std::string door_note;
  auto url_host = [](const std::string& h) {
    return h.find(':') != std::string::npos ? "[" + h + "]" : h.empty() ? "(passed)" : h;
  };
  if (http_at || grpc_at || metrics_at) {
    oip::service_options so;
    so.catalog = rcfg.catalog;
    so.backends = backends;
    so.metrics = rcfg.metrics;
    so.endpoint = ep;
    so.version = MODELREG_VERSION;
    so.ready_models = ready_models;
    protocol = std::make_shared<oip::service>(sys, registry, so);
    auto fail = [&](const std::string& what, const caf::error& err) {
      std::cerr << "modelreg serve: cannot listen on " << what << ": " << describe(err) << "\n";
      stop_all();
      unlink_socket();
      return exit_failed;
    };
    auto http_base = o.http_opts;
    http_base.max_body = static_cast<size_t>(o.http_max_body);
    http_base.max_connections = static_cast<unsigned>(o.http_max_connections);
    http_base.max_connections_per_ip = static_cast<unsigned>(std::max<size_t>(o.http_max_connections / 4, 1));
    http_base.role = insecure_admin ? peer_role::admin : peer_role::infer;
    if (http_at) {
      auto ho = http_base;
      if (tls.any()) {
        ho.tls_cert = tls.cert;
        ho.tls_key = tls.key;
        ho.tls_ca = tls.ca;
        ho.role = tls_role_name == "admin" ? peer_role::admin : peer_role::infer;
      }
      ho.host = http_at->host;
      ho.port = http_at->port;
      ho.listen_fd = passed_http;
      auto d = doors::http_door::start(protocol, ho);
      if (!d)
        return fail("HTTP " + o.http.value_or("(passed socket)"), d.error());
      http_door = std::move(*d);
      door_note += (tls.any() ? " https://" : " http://") + url_host(http_at->host) + ":" +
                   std::to_string(http_door->port()) + (tls.any() ? " (mutual TLS)" : "");
    }
    if (metrics_at) {
      auto mo = http_base;
      mo.host = metrics_at->host;
      mo.port = metrics_at->port;
      mo.listen_fd = passed_metrics;
      mo.metrics_only = true;
      mo.threads = 1;
      auto d = doors::http_door::start(protocol, mo);
      if (!d)
        return fail("metrics " + o.metrics.value_or("(passed socket)"), d.error());
      metrics_door = std::move(*d);
      door_note += " metrics http://" + url_host(metrics_at->host) + ":" +
                   std::to_string(metrics_door->port()) + "/metrics";
    }
    if (grpc_at) {
      doors::grpc_options go;
      go.host = grpc_at->host;
      go.port = grpc_at->port;
      if (tls.any()) {
        go.tls_cert = tls.cert;
        go.tls_key = tls.key;
        go.tls_ca = tls.ca;
        go.role = tls_role_name == "admin" ? peer_role::admin : peer_role::infer;
      } else {
        go.role = insecure_admin ? peer_role::admin : peer_role::infer;
      }
      go.max_message = static_cast<size_t>(o.http_max_body);
      auto d = doors::grpc_door::start(protocol, go);
      if (!d)
        return fail("gRPC " + *o.grpc, d.error());
      grpc_door = std::move(*d);
      door_note += " grpc://" + url_host(grpc_at->host) + ":" + std::to_string(grpc_door->port()) +
                   (tls.any() ? " (mutual TLS)" : "");
    }
    protocol->set_ready(true);
  }
  if (cluster)
    door_note += " cluster " + self_address +
                 (o.join.empty() ? std::string{" (waiting for members)"}
                                 : " (joining " + std::to_string(o.join.size()) + ")");
  std::cout << "ready unix:" << socket << tcp_note << door_note << "\n"
            << "catalog: " << rcfg.catalog->size() << " models" << std::endl;
  logger->info("serving unix:{}{}{}", socket, tcp_note, door_note);
  doors::notify_ready("serving unix:" + socket + tcp_note + door_note);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  doors::notify_stopping();
  if (protocol)
    protocol->set_ready(false); // health checks see it first
  std::cout << "stopping (" << (sig == SIGINT ? "SIGINT" : "SIGTERM")
            << "): answering what is in flight for at most "
            << std::chrono::duration_cast<std::chrono::seconds>(gopts.drain_timeout).count()
            << " s; SIGINT again stops at once" << std::endl;
  // A second signal: stop now. Nothing is left behind: the socket file goes,
  // and every peer sees its connection end when the process exits.
  // It stays until the process ends: the actor system may still wait for a
  // loader thread after "stopped".
  std::thread{[stop_signals, path = socket, own_socket_file] {
    int again = 0;
    sigwait(&stop_signals, &again);
    if (own_socket_file)
      ::unlink(path.c_str());
    std::cout << "stopped at once (second signal)" << std::endl;
    std::_Exit(exit_failed);
  }}.detach();
  {
    // Graceful: the gateway tells every peer, answers what is in flight, quits.
    caf::scoped_actor self{sys};
    self->monitor(gw);
    caf::anon_send(gw, shutdown_atom::value);
    self->receive([](const caf::down_msg&) {},
                  caf::after(gopts.drain_timeout + std::chrono::seconds{1}) >> [] {});
  }
  // HTTP and gRPC calls had the gateway's drain time too; what still
  // waits is answered shutting_down. The other members see this node go.
  if (cluster)
    cluster->stop();
  stop_doors();
  close_wire_interface(door);
  ep->stop();
  unlink_socket();
  // A loader cannot be interrupted: the process ends when it returns. Say
  // so, rather than seem to hang after "stopped".
  auto snap = ask<registry_snapshot>(sys, registry, std::chrono::seconds{2}, "the registry",
                                     list_atom::value);
  auto loading = snap ? snap->totals.loads_in_progress : 0;
  caf::anon_send(registry, shutdown_atom::value);
  if (loading > 0)
    std::cout << "stopped; waiting for " << loading << " loader(s) still running to return "
              << "(SIGINT again exits now)" << std::endl;
  else
    std::cout << "stopped" << std::endl;
  return exit_ok;
}

} // namespace

} // namespace modelreg::cli

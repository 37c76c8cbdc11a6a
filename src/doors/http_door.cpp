#include "doors/http_door.hpp"

#include <charconv>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <set>
#include <thread>

#include <fstream>
#include <sstream>

#include <gnutls/gnutls.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "doors/tensor_codec.hpp"
#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg::doors {

using json = nlohmann::json;

namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

/// One connection, for the request deadline and the fair queue.
struct connection_info {
  int fd = -1;
  uint64_t client = 0;
  std::atomic<int64_t> since_ns{0};  ///< opened, or its previous answer sent
  std::atomic<bool> receiving{true}; ///< a request is (or may be) arriving
};

/// An answer ready to send.
struct answer {
  unsigned status = 200;
  std::string content_type = "application/json";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

answer json_answer(unsigned status, const json& body) {
  return answer{status, "application/json", body.dump(), {}};
}

answer error_answer(unsigned status, const std::string& message) {
  return json_answer(status, json{{"error", message}});
}

answer error_answer(const caf::error& err) {
  return error_answer(static_cast<unsigned>(oip::http_status(err)), oip::error_text(err));
}

/// One request, from its headers to its answer.
struct request {
  MHD_Connection* conn = nullptr;
  connection_info* info = nullptr;
  std::string method;
  std::string url;
  std::string body;
  size_t header_length = 0; ///< Inference-Header-Content-Length; 0: none
  bool has_header_length = false;
  bool too_large = false;
  bool dispatched = false;
  /// Makes the answer; set under the door's lock, called on the door's thread.
  std::function<answer()> ready;
  answer sent;                 ///< kept alive while libmicrohttpd sends it
};

using request_ptr = std::shared_ptr<request>;

std::vector<std::string> split_path(const std::string& url) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < url.size()) {
    while (i < url.size() && url[i] == '/')
      ++i;
    auto j = url.find('/', i);
    if (j == std::string::npos)
      j = url.size();
    if (j > i)
      out.push_back(url.substr(i, j - i));
    i = j;
  }
  return out;
}

} // namespace

struct http_door::core : std::enable_shared_from_this<http_door::core> {
  std::shared_ptr<oip::service> service;
  http_options options;
  MHD_Daemon* daemon = nullptr;
  int listen_fd = -1;
  uint16_t port = 0;
  std::shared_ptr<spdlog::logger> log = log::get("modelreg.http");
  bool tls = false;
  std::string tls_key, tls_cert, tls_ca; ///< PEM text, alive while the daemon runs

  std::mutex mu;
  bool live = true;
  std::set<connection_info*> connections;
  std::set<request_ptr> suspended;
  std::condition_variable reaper_cv;
  std::thread reaper;

  door_metrics& metrics() { return service->metrics()->http; }

  /// Sends `a` now (from libmicrohttpd's thread).
  MHD_Result send(request& r, answer a) {
    r.sent = std::move(a);
    auto* resp = MHD_create_response_from_buffer(r.sent.body.size(), r.sent.body.data(),
                                                 MHD_RESPMEM_PERSISTENT);
    if (resp == nullptr)
      return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, r.sent.content_type.c_str());
    for (const auto& [k, v] : r.sent.headers)
      MHD_add_response_header(resp, k.c_str(), v.c_str());
    auto cls = std::min<unsigned>(r.sent.status / 100, 5);
    metrics().answers[cls].add();
    auto ret = MHD_queue_response(r.conn, r.sent.status, resp);
    MHD_destroy_response(resp);
    return ret;
  }

  /// Parks `r` until `finish` (from any thread) gives its answer.
  void suspend(const request_ptr& r) {
    std::lock_guard guard{mu};
    suspended.insert(r);
    MHD_suspend_connection(r->conn);
  }

  /// The answer of a parked request, from any thread: `make` runs on the
  /// door's thread that resumes it.
  void finish(const request_ptr& r, std::function<answer()> make) {
    std::lock_guard guard{mu};
    if (!live || suspended.erase(r) == 0)
      return; // the door stopped (and answered it already)
    r->ready = std::move(make);
    MHD_resume_connection(r->conn);
  }

  /// A callback that finishes `r` with what `encode` makes of a result.
  /// The callback runs on the thread that has the result (a model's, which
  /// the shared-memory path needs), so it only keeps the result; the
  /// encoding (JSON of every element, for one) runs on the door's thread.
  template <class T, class F>
  std::function<void(T)> finisher(const request_ptr& r, F encode) {
    return [self = shared_from_this(), r, encode = std::move(encode)](T result) {
      auto held = std::make_shared<T>(std::move(result));
      self->finish(r, [encode, held]() -> answer {
        try {
          return encode(std::move(*held));
        } catch (const std::exception& e) {
          return error_answer(500, std::string{"cannot encode the answer: "} + e.what());
        }
      });
    };
  }

  MHD_Result dispatch(const request_ptr& r);
  MHD_Result infer(const request_ptr& r, const std::string& model);

  void reap_loop() {
    std::unique_lock lock{mu};
    while (live) {
      reaper_cv.wait_for(lock, std::chrono::milliseconds{250});
      auto limit = std::chrono::duration_cast<std::chrono::nanoseconds>(options.request_timeout).count();
      auto now = now_ns();
      for (auto* c : connections) {
        if (c->receiving.load() && now - c->since_ns.load() > limit && c->fd >= 0) {
          // libmicrohttpd sees the end of the stream and closes it; the fd
          // stays valid until the closed notification, which takes `mu`.
          ::shutdown(c->fd, SHUT_RDWR);
          c->since_ns.store(now + (int64_t{1} << 50)); // once
          metrics().refused.add();
        }
      }
    }
  }
};

namespace {

/// True if the TLS client sent a certificate that chains to the node's CA.
bool client_verified(MHD_Connection* conn) {
  const auto* ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
  if (ci == nullptr || ci->tls_session == nullptr)
    return false;
  auto session = static_cast<gnutls_session_t>(ci->tls_session);
  unsigned int count = 0;
  if (gnutls_certificate_get_peers(session, &count) == nullptr || count == 0)
    return false;
  unsigned int status = 0;
  return gnutls_certificate_verify_peers2(session, &status) == GNUTLS_E_SUCCESS && status == 0;
}

std::string read_pem(const std::string& path) {
  std::ifstream in{path};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

MHD_Result on_request(void* cls, MHD_Connection* conn, const char* url, const char* method,
                      const char*, const char* upload, size_t* upload_size, void** req_cls) {
  auto* self = static_cast<http_door::core*>(cls);
  auto* holder = static_cast<request_ptr*>(*req_cls);
  if (holder == nullptr) {
    // Headers are in; the body (if any) follows.
    auto r = std::make_shared<request>();
    r->conn = conn;
    r->method = method;
    r->url = url;
    if (const auto* ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT))
      r->info = static_cast<connection_info*>(ci->socket_context);
    *req_cls = new request_ptr(r);
    if (self->tls && !client_verified(conn)) {
      self->metrics().refused.add();
      auto a = error_answer(403, "permission_denied: a client certificate from the node's CA is "
                                 "needed (mutual TLS)");
      a.headers.emplace_back("Connection", "close");
      return self->send(*r, std::move(a));
    }
    if (const char* cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     MHD_HTTP_HEADER_CONTENT_LENGTH)) {
      uint64_t n = 0;
      auto [p, ec] = std::from_chars(cl, cl + std::strlen(cl), n);
      if (ec == std::errc{} && n > self->options.max_body) {
        r->too_large = true;
        self->metrics().refused.add();
        return self->send(*r, error_answer(413, "the request body is " + std::to_string(n) +
                                                  " bytes; this node takes at most " +
                                                  std::to_string(self->options.max_body) +
                                                  " (serve --http-max-body)"));
      }
      if (ec == std::errc{} && n > 0)
        r->body.reserve(n);
    }
    if (const char* hl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                     "Inference-Header-Content-Length")) {
      auto [p, ec] = std::from_chars(hl, hl + std::strlen(hl), r->header_length);
      if (ec != std::errc{} || p != hl + std::strlen(hl))
        return self->send(*r, error_answer(400, "Inference-Header-Content-Length is not a "
                                                "number: '" + std::string{hl} + "'"));
      r->has_header_length = true;
    }
    return MHD_YES;
  }
  auto r = *holder;
  if (*upload_size != 0) {
    if (!r->too_large) {
      if (r->body.size() + *upload_size > self->options.max_body) {
        r->too_large = true; // chunked, with no length up front
        r->body.clear();
        r->body.shrink_to_fit();
      } else {
        r->body.append(upload, *upload_size);
      }
    }
    *upload_size = 0;
    return MHD_YES;
  }
  if (r->ready) {
    auto make = std::move(r->ready);
    r->ready = nullptr;
    return self->send(*r, make());
  }
  if (r->dispatched)
    return MHD_YES;
  r->dispatched = true;
  if (r->info)
    r->info->receiving.store(false);
  if (r->too_large) {
    self->metrics().refused.add();
    return self->send(*r, error_answer(413, "the request body is over " +
                                              std::to_string(self->options.max_body) +
                                              " bytes (serve --http-max-body)"));
  }
  return self->dispatch(r);
}

void on_completed(void* cls, MHD_Connection*, void** req_cls, MHD_RequestTerminationCode) {
  auto* self = static_cast<http_door::core*>(cls);
  auto* holder = static_cast<request_ptr*>(*req_cls);
  if (holder == nullptr)
    return;
  if (auto* info = (*holder)->info) {
    info->since_ns.store(now_ns());
    info->receiving.store(true);
  }
  {
    std::lock_guard guard{self->mu};
    self->suspended.erase(*holder);
  }
  delete holder;
  *req_cls = nullptr;
}

void on_connection(void* cls, MHD_Connection* conn, void** socket_context,
                   MHD_ConnectionNotificationCode code) {
  auto* self = static_cast<http_door::core*>(cls);
  if (code == MHD_CONNECTION_NOTIFY_STARTED) {
    auto* info = new connection_info;
    if (const auto* ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD))
      info->fd = ci->connect_fd;
    info->client = self->service->new_client_id();
    info->since_ns.store(now_ns());
    *socket_context = info;
    self->metrics().connections.fetch_add(1);
    std::lock_guard guard{self->mu};
    self->connections.insert(info);
  } else if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
    auto* info = static_cast<connection_info*>(*socket_context);
    if (info == nullptr)
      return;
    {
      std::lock_guard guard{self->mu};
      self->connections.erase(info);
    }
    self->metrics().connections.fetch_sub(1);
    delete info;
    *socket_context = nullptr;
  }
}

void on_log(void* cls, const char* fmt, va_list ap) {
  auto* self = static_cast<http_door::core*>(cls);
  char buf[512];
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  std::string line{buf};
  while (!line.empty() && line.back() == '\n')
    line.pop_back();
  self->log->debug("libmicrohttpd: {}", line);
}

} // namespace

MHD_Result http_door::core::dispatch(const request_ptr& r) {
  auto path = split_path(r->url);
  bool get = r->method == "GET" || r->method == "HEAD";
  bool post = r->method == "POST";
  auto wrong_method = [&](const char* allowed) {
    auto a = error_answer(405, r->method + " is not allowed on " + r->url + " (use " +
                                 allowed + ")");
    a.headers.emplace_back("Allow", allowed);
    return send(*r, std::move(a));
  };
  auto& svc = *service;
  // -- metrics and health (every door) -------------------------------------
  if (path.size() == 1 && path[0] == "metrics") {
    if (!get)
      return wrong_method("GET");
    suspend(r);
    svc.metrics_text(finisher<caf::expected<std::string>>(r, [](caf::expected<std::string> text) {
      if (!text)
        return error_answer(text.error());
      return answer{200, prometheus_content_type, std::move(*text), {}};
    }));
    return MHD_YES;
  }
  if (path.size() == 3 && path[0] == "v2" && path[1] == "health") {
    if (!get)
      return wrong_method("GET");
    if (path[2] == "live")
      return send(*r, json_answer(200, json{{"live", true}}));
    if (path[2] == "ready")
      return send(*r, json_answer(svc.ready() ? 200 : 503, json{{"ready", svc.ready()}}));
  }
  if (options.metrics_only)
    return send(*r, error_answer(404, "this port serves /metrics and /v2/health/* only"));
  if (path.size() == 1 && path[0] == "v2") {
    if (!get)
      return wrong_method("GET");
    return send(*r, json_answer(200, json{{"name", oip::service::name},
                                           {"version", svc.version()},
                                           {"extensions", oip::service::extensions()}}));
  }
  // /v2/models/{name}[/versions/{v}][/ready|/infer]
  if (path.size() >= 3 && path[0] == "v2" && path[1] == "models") {
    const auto& model = path[2];
    size_t rest = 3;
    if (path.size() >= 5 && path[3] == "versions")
      rest = 5; // one version per model: any version names it
    auto tail = path.size() == rest ? std::string{} : path.size() == rest + 1 ? path[rest] : "?";
    if (tail.empty()) {
      if (!get)
        return wrong_method("GET");
      auto meta = svc.metadata(model);
      if (!meta)
        return send(*r, error_answer(404, "unknown model '" + model + "' (GET "
                                          "/v2/repository/index lists the catalog)"));
      return send(*r, json_answer(200, metadata_json(*meta)));
    }
    if (tail == "ready") {
      if (!get)
        return wrong_method("GET");
      if (!svc.metadata(model))
        return send(*r, error_answer(404, "unknown model '" + model + "'"));
      suspend(r);
      svc.model_ready(model, finisher<caf::expected<bool>>(r, [model](caf::expected<bool> ok) {
        if (!ok)
          return error_answer(ok.error());
        return json_answer(*ok ? 200 : 503, json{{"name", model}, {"ready", *ok}});
      }));
      return MHD_YES;
    }
    if (tail == "infer") {
      if (!post)
        return wrong_method("POST");
      return infer(r, model);
    }
  }
  if (path.size() == 3 && path[0] == "v2" && path[1] == "repository" && path[2] == "index") {
    if (!post)
      return wrong_method("POST");
    bool ready_only = false;
    if (!r->body.empty()) {
      auto doc = json::parse(r->body, nullptr, false);
      if (doc.is_discarded() || !doc.is_object())
        return send(*r, error_answer(400, "the index request must be a JSON object"));
      if (doc.contains("ready") && doc["ready"].is_boolean())
        ready_only = doc["ready"].get<bool>();
    }
    suspend(r);
    svc.index(ready_only, finisher<caf::expected<std::vector<oip::index_entry>>>(
                            r, [](caf::expected<std::vector<oip::index_entry>> entries) {
                              if (!entries)
                                return error_answer(entries.error());
                              auto out = json::array();
                              for (const auto& e : *entries) {
                                json j{{"name", e.name}, {"version", "1"}, {"state", e.state}};
                                if (!e.reason.empty())
                                  j["reason"] = e.reason;
                                out.push_back(std::move(j));
                              }
                              return json_answer(200, out);
                            }));
    return MHD_YES;
  }
  if (path.size() == 5 && path[0] == "v2" && path[1] == "repository" && path[2] == "models" &&
      (path[4] == "load" || path[4] == "unload")) {
    if (!post)
      return wrong_method("POST");
    const auto& model = path[3];
    auto done = finisher<caf::error>(r, [](caf::error err) {
      if (err)
        return error_answer(err);
      return json_answer(200, json::object());
    });
    suspend(r);
    if (path[4] == "load")
      svc.load(model, options.role, std::move(done));
    else
      svc.unload(model, options.role, std::move(done));
    return MHD_YES;
  }
  return send(*r, error_answer(404, "no such endpoint: " + r->method + " " + r->url +
                                      " (the Open Inference Protocol's /v2/..., and /metrics; "
                                      "see docs/serve.md)"));
}

MHD_Result http_door::core::infer(const request_ptr& r, const std::string& model) {
  auto& svc = *service;
  // The JSON part, and the binary part that follows it (binary extension).
  std::string_view whole{r->body};
  std::string_view header = whole;
  std::string_view binary;
  if (r->has_header_length) {
    if (r->header_length > whole.size())
      return send(*r, error_answer(400, "Inference-Header-Content-Length is " +
                                          std::to_string(r->header_length) + " but the body has " +
                                          std::to_string(whole.size()) + " bytes"));
    header = whole.substr(0, r->header_length);
    binary = whole.substr(r->header_length);
  }
  auto decoded = decode_infer_request(header, binary);
  if (!decoded)
    return send(*r, error_answer(decoded.error()));
  auto req = std::make_shared<infer_call>(std::move(*decoded));
  auto client = r->info != nullptr ? r->info->client : svc.new_client_id();
  auto inputs = std::move(req->inputs);
  suspend(r);
  svc.infer(model, std::move(inputs), client,
            finisher<caf::expected<tensor_map>>(
              r, [req, model, svc = service](caf::expected<tensor_map> out) {
                if (!out)
                  return error_answer(out.error());
                auto encoded = encode_infer_response(model, *req, *out, [&](const std::string& n) {
                  return svc->text_tensor(model, n, true);
                });
                if (!encoded)
                  return error_answer(encoded.error());
                answer a;
                a.body = std::move(encoded->body);
                if (encoded->json_length != a.body.size()) {
                  a.content_type = "application/octet-stream";
                  a.headers.emplace_back("Inference-Header-Content-Length",
                                         std::to_string(encoded->json_length));
                }
                return a;
              }));
  return MHD_YES;
}

caf::expected<int> listen_tcp(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  auto service = std::to_string(port);
  if (int rc = ::getaddrinfo(host.c_str(), service.c_str(), &hints, &found); rc != 0)
    return make_error(errc::unavailable, "cannot resolve '" + host + "': " + gai_strerror(rc));
  std::string why = "no address";
  for (auto* a = found; a != nullptr; a = a->ai_next) {
    int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) {
      why = std::strerror(errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, a->ai_addr, a->ai_addrlen) == 0 && ::listen(fd, 512) == 0) {
      ::freeaddrinfo(found);
      return fd;
    }
    why = std::strerror(errno);
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return make_error(errc::unavailable, host + ":" + service + ": " + why);
}

caf::expected<std::unique_ptr<http_door>> http_door::start(std::shared_ptr<oip::service> service,
                                                           http_options options) {
  std::unique_ptr<http_door> door{new http_door};
  auto c = std::make_shared<core>();
  c->service = std::move(service);
  c->options = options;
  if (options.listen_fd >= 0) {
    c->listen_fd = options.listen_fd;
  } else {
    auto fd = listen_tcp(options.host, options.port);
    if (!fd)
      return fd.error();
    c->listen_fd = *fd;
  }
  sockaddr_storage addr{};
  socklen_t len = sizeof addr;
  if (::getsockname(c->listen_fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    if (addr.ss_family == AF_INET)
      c->port = ntohs(reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    else if (addr.ss_family == AF_INET6)
      c->port = ntohs(reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port);
  }
  unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
  // Mutual TLS: the key, the certificate and the clients' CA (the CA makes
  // libmicrohttpd ask for a client certificate; on_request checks it).
  MHD_OptionItem tls_items[] = {{MHD_OPTION_END, 0, nullptr}, {MHD_OPTION_END, 0, nullptr},
                                {MHD_OPTION_END, 0, nullptr}, {MHD_OPTION_END, 0, nullptr}};
  if (!options.tls_cert.empty()) {
    c->tls = true;
    c->tls_key = read_pem(options.tls_key);
    c->tls_cert = read_pem(options.tls_cert);
    c->tls_ca = read_pem(options.tls_ca);
    flags |= MHD_USE_TLS;
    tls_items[0] = {MHD_OPTION_HTTPS_MEM_KEY, 0, c->tls_key.data()};
    tls_items[1] = {MHD_OPTION_HTTPS_MEM_CERT, 0, c->tls_cert.data()};
    tls_items[2] = {MHD_OPTION_HTTPS_MEM_TRUST, 0, c->tls_ca.data()};
  }
  // One event thread, or a pool of them (each with its own epoll set).
  MHD_OptionItem pool[] = {{MHD_OPTION_THREAD_POOL_SIZE, options.threads, nullptr},
                           {MHD_OPTION_END, 0, nullptr}};
  if (options.threads <= 1)
    pool[0] = {MHD_OPTION_END, 0, nullptr};
  c->daemon = MHD_start_daemon(
    flags, 0, nullptr, nullptr, &on_request, c.get(), MHD_OPTION_LISTEN_SOCKET, c->listen_fd,
    MHD_OPTION_ARRAY, pool, MHD_OPTION_ARRAY, tls_items, MHD_OPTION_CONNECTION_LIMIT,
    options.max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT, options.max_connections_per_ip,
    MHD_OPTION_CONNECTION_TIMEOUT, static_cast<unsigned>(options.idle_timeout.count()),
    MHD_OPTION_CONNECTION_MEMORY_LIMIT, size_t{64} << 10, MHD_OPTION_NOTIFY_COMPLETED,
    &on_completed, c.get(), MHD_OPTION_NOTIFY_CONNECTION, &on_connection, c.get(),
    MHD_OPTION_EXTERNAL_LOGGER, &on_log, c.get(), MHD_OPTION_END);
  if (c->daemon == nullptr) {
    if (options.listen_fd < 0)
      ::close(c->listen_fd);
    return make_error(errc::unavailable, "libmicrohttpd did not start on port " +
                                           std::to_string(c->port));
  }
  c->reaper = std::thread{[c = c.get()] { c->reap_loop(); }};
  door->core_ = std::move(c);
  return door;
}

http_door::~http_door() {
  stop();
}

uint16_t http_door::port() const noexcept {
  return core_ ? core_->port : 0;
}

void http_door::stop() {
  if (!core_ || core_->daemon == nullptr)
    return;
  auto& c = *core_;
  {
    std::lock_guard guard{c.mu};
    c.live = false;
    // libmicrohttpd may not stop with suspended connections: each gets its
    // answer now.
    for (const auto& r : c.suspended) {
      r->ready = [] { return error_answer(503, "shutting_down: the node is stopping"); };
      MHD_resume_connection(r->conn);
    }
    c.suspended.clear();
  }
  c.reaper_cv.notify_all();
  if (c.reaper.joinable())
    c.reaper.join();
  MHD_stop_daemon(c.daemon);
  c.daemon = nullptr;
  ::close(c.listen_fd);
}

} // namespace modelreg::doors

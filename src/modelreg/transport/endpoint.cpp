#include "modelreg/transport/endpoint.hpp"

#include <algorithm>
#include <cstring>
#include <string_view>
#include <thread>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg::transport {

namespace {

constexpr uint32_t socket_magic = 0x4752454d; // "MERG" little-endian: modelreg
constexpr size_t max_datagram = 64 * 1024;
constexpr uint32_t max_ring_slots = 1 << 20;

enum class socket_message : uint32_t {
  hello = 1,
  segment = 2,
  inline_fragment = 3,
  ping = 4, // answered with a pong: liveness of an idle peer
  pong = 5,
  ring = 6, // wake-up: the sender published descriptors while this side slept
};

/// Every datagram on the socket starts with this header.
struct socket_header {
  uint32_t magic = socket_magic;
  uint32_t type = 0;
  uint64_t a = 0; // segment: id; inline_fragment: total bytes
  uint64_t b = 0; // inline_fragment: offset
};

std::vector<std::byte> make_datagram(socket_message type, uint64_t a, uint64_t b,
                                     const void* payload = nullptr, size_t size = 0) {
  std::vector<std::byte> out(sizeof(socket_header) + size);
  socket_header h{socket_magic, static_cast<uint32_t>(type), a, b};
  std::memcpy(out.data(), &h, sizeof(h));
  if (size > 0)
    std::memcpy(out.data() + sizeof(h), payload, size);
  return out;
}

caf::expected<socket_header> header_of(const datagram& d) {
  socket_header h;
  if (d.bytes.size() < sizeof(h))
    return make_error(errc::malformed_frame, "datagram shorter than its header");
  std::memcpy(&h, d.bytes.data(), sizeof(h));
  if (h.magic != socket_magic)
    return make_error(errc::malformed_frame, "datagram has a bad magic number");
  return h;
}

std::vector<std::byte> hello_datagram(const endpoint_options& opts, bool offer_shm) {
  capnp::MallocMessageBuilder msg;
  auto hello = msg.initRoot<wire::Frame>().initHello();
  hello.setProtocolVersion(wire::PROTOCOL_VERSION);
  hello.setCapabilities(offer_shm ? wire::CAP_SHARED_MEMORY : 0);
  hello.setMaxLoanBytes(opts.peer_quota.max_bytes);
  hello.setMaxLoans(opts.peer_quota.max_loans);
  hello.setPid(::getpid());
  hello.setRingSlots(opts.ring_slots);
  auto flat = capnp::messageToFlatArray(msg);
  auto bytes = flat.asBytes();
  return make_datagram(socket_message::hello, 0, 0, bytes.begin(), bytes.size());
}

struct hello_info {
  uint64_t capabilities = 0;
  uint32_t ring_slots = 0;
  int32_t pid = 0;
};

caf::expected<hello_info> parse_hello(const datagram& d) {
  auto h = header_of(d);
  if (!h)
    return h.error();
  if (h->type != static_cast<uint32_t>(socket_message::hello))
    return make_error(errc::malformed_frame, "expected a hello");
  auto payload = d.bytes.size() - sizeof(socket_header);
  if (payload % sizeof(capnp::word) != 0 || payload == 0)
    return make_error(errc::malformed_frame, "hello of a bad size");
  auto words = kj::heapArray<capnp::word>(payload / sizeof(capnp::word));
  std::memcpy(words.begin(), d.bytes.data() + sizeof(socket_header), payload);
  hello_info info;
  caf::error err;
  auto decode = checked([&] {
    capnp::ReaderOptions opts;
    opts.traversalLimitInWords = 1024;
    capnp::FlatArrayMessageReader reader{kj::arrayPtr(words.begin(), words.size()), opts};
    auto root = reader.getRoot<wire::Frame>();
    if (!root.isHello()) {
      err = make_error(errc::malformed_frame, "first frame is not a hello");
      return;
    }
    auto hello = root.getHello();
    if (hello.getProtocolVersion() != wire::PROTOCOL_VERSION) {
      err = make_error(errc::unsupported, "protocol version " +
                                            std::to_string(hello.getProtocolVersion()) +
                                            " (this side speaks " +
                                            std::to_string(wire::PROTOCOL_VERSION) + ")");
      return;
    }
    info.capabilities = hello.getCapabilities();
    info.ring_slots = hello.getRingSlots();
    info.pid = hello.getPid();
  });
  if (decode)
    return decode;
  if (err)
    return err;
  return info;
}

/// Logs a libuv call that failed. The calls checked this way fail only on a
/// programming error (a closed handle): nothing to undo, but never silent.
void check_uv(int rc, const char* what) {
  if (rc != 0)
    log::get("modelreg.transport")->error("{}: {}", what, uv_strerror(rc));
}

/// A listening socket's poll callback: its data is the accept function.
void on_listener_readable(uv_poll_t* p, int status, int) {
  if (status >= 0)
    (*static_cast<std::function<void()>*>(p->data))();
}

void close_then(uv_handle_t* h) {
  if (!uv_is_closing(h))
    uv_close(h, [](uv_handle_t* handle) {
      auto* done = static_cast<std::function<void()>*>(handle->data);
      if (done) {
        (*done)();
        delete done;
      }
    });
}

/// The allocator behind connection::allocator(): shared-memory tensors.
class shm_allocator final : public tensor_allocator {
public:
  explicit shm_allocator(connection& conn) : conn_(conn) {}
  caf::expected<tensor> allocate(dtype type, std::vector<int64_t> shape) override {
    return conn_.allocate_tensor(type, std::move(shape));
  }

private:
  connection& conn_;
};

} // namespace

// -- the loop -----------------------------------------------------------------

struct endpoint::loop {
  uv_loop_t uv{};
  uv_async_t wake{};
  std::thread thread;
  std::mutex mutex;
  std::vector<std::function<void()>> tasks;
  std::vector<std::pair<uv_poll_t*, unique_fd>> listeners;
  uv_timer_t sweep{};      // heartbeats, hello deadlines
  uv_timer_t accept_retry{}; // listeners paused after EMFILE
  std::vector<uv_poll_t*> paused;
  unique_fd spare_fd;      // given up to accept-and-close when out of fds
  bool stopping = false;
};

struct connection::state {
  uv_poll_t sock_poll{};
  uv_timer_t flush_timer{}; // runs while the backlog holds something
  bool flushing = false;
  std::atomic<bool> rung{false}; // a `ring` datagram came: drain the ring
  bool handshaken = false;
  bool final_drain = false; // the ring was emptied once after end-of-file
  bool closing = false;
  /// How long the next spin on the empty ring lasts (adapts; see
  /// endpoint_options::spin). Zero until the first one.
  std::chrono::microseconds spin{0};
  std::shared_ptr<endpoint::handlers> handlers;
  connection_ptr keep_alive; // until the poll handles are closed
};

// -- connection ---------------------------------------------------------------

connection::connection(std::shared_ptr<endpoint> owner, uint64_t id, unique_fd sock,
                       peer_credentials peer)
  : owner_(std::move(owner)),
    id_(id),
    pool_(shm::pool::create(owner_->budget_)),
    allocator_(std::make_unique<shm_allocator>(*this)),
    sock_(std::move(sock)),
    peer_(peer) {
  std::lock_guard guard{owner_->pools_mutex_};
  auto& pools = owner_->pools_;
  pools.erase(std::remove_if(pools.begin(), pools.end(), [](const auto& w) { return w.expired(); }),
              pools.end());
  pools.push_back(pool_);
}

connection::~connection() = default;

outgoing_frame connection::new_frame() {
  return outgoing_frame{pool_, shared_memory_, owner_->counters_};
}

namespace {

int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

} // namespace

void connection::touch() noexcept {
  last_heard_.store(steady_now_ns(), std::memory_order_relaxed);
}

void connection::misbehaved(const caf::error& err) {
  if (failing_.exchange(true))
    return;
  ++owner_->misbehaving_;
  auto self = shared_from_this();
  owner_->post([self, err] {
    if (self->loop_state_)
      self->owner_->fail(self, self->loop_state_->handlers, err);
  });
}

caf::error connection::queue(outbound item) {
  const auto& opts = owner_->options_;
  auto bytes = item.is_descriptor ? sizeof(descriptor) : item.bytes.size();
  if (backlog_.size() >= opts.max_backlog || backlog_bytes_ + bytes > opts.max_backlog_bytes) {
    auto err = make_error(errc::overloaded, "peer does not drain what it is sent (" +
                                              std::to_string(backlog_.size()) + " items, " +
                                              std::to_string(backlog_bytes_) +
                                              " bytes queued: the limit)");
    misbehaved(err);
    return err;
  }
  backlog_bytes_ += bytes;
  backlog_.push_back(std::move(item));
  if (!flush_scheduled_) {
    flush_scheduled_ = true;
    auto self = shared_from_this();
    owner_->post([self] { self->owner_->start_flushing(self); });
  }
  return {};
}

caf::error connection::put_descriptor(const descriptor& d) {
  if (backlog_.empty() && writer_.try_push(d)) {
    pushed_ = true;
    return {};
  }
  outbound item;
  item.desc = d;
  return queue(std::move(item));
}

caf::error connection::put_datagram(std::vector<std::byte> bytes, int fd) {
  if (backlog_.empty()) {
    std::vector<int> fds;
    if (fd >= 0)
      fds.push_back(fd);
    auto sent = try_send_datagram(sock_.get(), bytes.data(), bytes.size(), fds);
    if (!sent)
      return sent.error();
    if (*sent)
      return {};
  }
  outbound item;
  item.is_descriptor = false;
  item.bytes = std::move(bytes);
  if (fd >= 0) // a segment of ours: keep a descriptor of it until it goes out
    item.fd = unique_fd{::fcntl(fd, F_DUPFD_CLOEXEC, 0)};
  return queue(std::move(item));
}

caf::error connection::ring_doorbell() {
  if (!pushed_)
    return {};
  pushed_ = false;
  if (!writer_.peer_armed())
    return {};
  // Never waits: if the peer's socket is full, it has unread datagrams and
  // wakes for those anyway.
  static const auto ring = make_datagram(socket_message::ring, 0, 0);
  auto sent = try_send_datagram(sock_.get(), ring.data(), ring.size());
  return sent ? caf::error{} : sent.error();
}

bool connection::flush_backlog() {
  std::lock_guard guard{send_mutex_};
  while (!backlog_.empty() && open_.load()) {
    auto& item = backlog_.front();
    if (item.is_descriptor) {
      if (!writer_.try_push(item.desc))
        break;
      pushed_ = true;
      backlog_bytes_ -= sizeof(descriptor);
    } else {
      std::vector<int> fds;
      if (item.fd)
        fds.push_back(item.fd.get());
      auto sent = try_send_datagram(sock_.get(), item.bytes.data(), item.bytes.size(), fds);
      if (!sent) {
        misbehaved(sent.error());
        break;
      }
      if (!*sent)
        break;
      backlog_bytes_ -= item.bytes.size();
    }
    backlog_.pop_front();
  }
  ring_doorbell();
  if (backlog_.empty() || !open_.load()) {
    flush_scheduled_ = false;
    return true;
  }
  return false;
}

caf::error connection::announce_segment(uint32_t id) {
  if (announced_.count(id) > 0)
    return {};
  const auto* seg = pool_->find_segment(id);
  if (seg == nullptr)
    return make_error(errc::invalid_argument, "no segment " + std::to_string(id));
  if (auto err = put_datagram(make_datagram(socket_message::segment, id, seg->size()), seg->fd()))
    return err;
  announced_.insert(id);
  return {};
}

caf::error connection::send_inline(outgoing_frame& frame) {
  auto flat = frame.finish_flat();
  auto total = flat.size() * sizeof(capnp::word);
  if (total > max_inline_frame_bytes)
    return make_error(errc::invalid_argument, "frame too large to send inline");
  const auto* bytes = reinterpret_cast<const std::byte*>(flat.begin());
  constexpr size_t piece = max_datagram - sizeof(socket_header);
  for (uint64_t off = 0; off < total; off += piece) {
    auto n = std::min<uint64_t>(piece, total - off);
    if (auto err = put_datagram(make_datagram(socket_message::inline_fragment, total, off, bytes + off, n)))
      return err;
  }
  return {};
}

caf::error connection::send(outgoing_frame& frame) {
  std::lock_guard guard{send_mutex_};
  if (!open_.load() || failing_.load())
    return make_error(errc::peer_disconnected, "connection closed");
  if (!shared_memory_)
    return send_inline(frame);
  auto finished = frame.finish_in_place();
  if (!finished)
    return finished.error();
  auto& [control, length] = *finished;
  // Lend every referenced chunk and the control chunk; all or nothing.
  std::vector<shm::chunk_id> lent;
  auto lend = [&](const shm::chunk_ptr& c) -> caf::error {
    auto id = pool_->lend(c, id_, c->capacity());
    if (!id)
      return id.error();
    lent.push_back(*id);
    return {};
  };
  caf::error err;
  for (const auto& c : frame.referenced())
    if (!err)
      err = lend(c);
  if (!err)
    err = lend(control);
  if (err && frame.referenced().empty()) {
    // A frame with no tensors (an answer such as `quota_exceeded` itself)
    // needs no loan: it goes inline, so every request gets its answer.
    for (const auto& id : lent)
      pool_->give_back(id_, id);
    return send_inline(frame);
  }
  for (const auto& c : frame.referenced())
    if (!err)
      err = announce_segment(c->id().segment);
  if (!err)
    err = announce_segment(control->id().segment);
  auto cid = control->id();
  if (!err)
    err = put_descriptor({static_cast<uint32_t>(descriptor_kind::frame), cid.segment, cid.offset,
                          length, cid.generation});
  if (err) {
    for (const auto& id : lent)
      pool_->give_back(id_, id);
    return err;
  }
  return ring_doorbell();
}

void connection::give_back(const std::vector<shm::chunk_id>& loans) {
  std::lock_guard guard{send_mutex_};
  if (!open_.load() || failing_.load() || !shared_memory_)
    return;
  for (const auto& id : loans)
    if (put_descriptor({static_cast<uint32_t>(descriptor_kind::give_back), id.segment, id.offset,
                        0, id.generation}))
      return;
  ring_doorbell();
}

caf::error connection::send_raw_descriptor(const descriptor& d) {
  std::lock_guard guard{send_mutex_};
  if (!shared_memory_)
    return make_error(errc::unsupported, "no ring on an inline connection");
  if (auto err = put_descriptor(d))
    return err;
  return ring_doorbell();
}

caf::error connection::send_raw_datagram(const void* data, size_t size) {
  std::lock_guard guard{send_mutex_};
  const auto* p = static_cast<const std::byte*>(data);
  return put_datagram(std::vector<std::byte>(p, p + size));
}

bool connection::poll() {
  return owner_->poll(shared_from_this());
}

void connection::close() {
  auto self = shared_from_this();
  owner_->post([self] { self->owner_->drop(self); });
}

// -- endpoint -----------------------------------------------------------------

endpoint::endpoint(endpoint_options opts)
  : options_(std::move(opts)), loop_(std::make_unique<loop>()) {
  if (options_.max_shared_memory_bytes > 0)
    budget_ = std::make_shared<shm::memory_budget>(options_.max_shared_memory_bytes);
}

std::shared_ptr<endpoint> endpoint::start(endpoint_options opts) {
  auto ep = try_start(std::move(opts));
  if (!ep)
    throw std::runtime_error(describe(ep.error()));
  return std::move(*ep);
}

caf::expected<std::shared_ptr<endpoint>> endpoint::try_start(endpoint_options opts) {
  std::shared_ptr<endpoint> ep{new endpoint(std::move(opts))};
  auto& lp = *ep->loop_;
  auto fail = [](const char* what, int rc) {
    return make_error(errc::unavailable, std::string{"the transport's event loop: "} + what +
                                           ": " + uv_strerror(rc));
  };
  if (int rc = uv_loop_init(&lp.uv); rc != 0) {
    ep->loop_->stopping = true; // nothing to stop: no thread, no handles
    return fail("uv_loop_init", rc);
  }
  lp.wake.data = ep.get();
  int rc = uv_async_init(&lp.uv, &lp.wake, [](uv_async_t* h) {
    auto* self = static_cast<endpoint*>(h->data);
    std::vector<std::function<void()>> tasks;
    {
      std::lock_guard guard{self->loop_->mutex};
      tasks.swap(self->loop_->tasks);
    }
    for (auto& t : tasks)
      t();
  });
  if (rc != 0) {
    ep->loop_->stopping = true;
    check_uv(uv_loop_close(&lp.uv), "uv_loop_close");
    return fail("uv_async_init", rc);
  }
  // One timer for every connection's heartbeat and hello deadline. (Timers
  // cannot fail to initialise or start on an open loop; checked all the same.)
  check_uv(uv_timer_init(&lp.uv, &lp.sweep), "uv_timer_init");
  lp.sweep.data = ep.get();
  auto period = std::min(ep->options_.heartbeat_interval.count() > 0
                           ? ep->options_.heartbeat_interval
                           : std::chrono::milliseconds{1000},
                         std::chrono::milliseconds{250});
  check_uv(uv_timer_start(
             &lp.sweep, [](uv_timer_t* t) { static_cast<endpoint*>(t->data)->sweep(); },
             static_cast<uint64_t>(period.count()), static_cast<uint64_t>(period.count())),
           "uv_timer_start (sweep)");
  check_uv(uv_timer_init(&lp.uv, &lp.accept_retry), "uv_timer_init");
  lp.accept_retry.data = ep.get();
  lp.spare_fd = unique_fd{::open("/dev/null", O_RDONLY | O_CLOEXEC)};
  lp.thread = std::thread{[&lp] {
    uv_run(&lp.uv, UV_RUN_DEFAULT); // returns when no handle is left: stop() closed them
    check_uv(uv_loop_close(&lp.uv), "uv_loop_close (a handle is still open)");
  }};
  return ep;
}

endpoint::~endpoint() {
  stop();
}

void endpoint::post(std::function<void()> task) {
  {
    std::lock_guard guard{loop_->mutex};
    // Once stopping, the loop may already have run its last tasks: a task
    // queued now would never run and, holding the endpoint, never be freed.
    if (loop_->stopping)
      return;
    loop_->tasks.push_back(std::move(task));
  }
  check_uv(uv_async_send(&loop_->wake), "uv_async_send");
}

void endpoint::stop() {
  {
    std::lock_guard guard{loop_->mutex};
    if (loop_->stopping)
      return;
    loop_->stopping = true;
    loop_->tasks.push_back([this] {
      for (auto& [handle, fd] : loop_->listeners)
        uv_close(reinterpret_cast<uv_handle_t*>(handle), [](uv_handle_t* h) {
          delete static_cast<std::function<void()>*>(h->data);
          delete reinterpret_cast<uv_poll_t*>(h);
        });
      std::vector<connection_ptr> all;
      {
        std::lock_guard guard{connections_mutex_};
        for (auto& [id, c] : connections_)
          all.push_back(c);
      }
      for (auto& c : all)
        drop(c);
      uv_close(reinterpret_cast<uv_handle_t*>(&loop_->sweep), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&loop_->accept_retry), nullptr);
      uv_close(reinterpret_cast<uv_handle_t*>(&loop_->wake), nullptr);
    });
  }
  check_uv(uv_async_send(&loop_->wake), "uv_async_send");
  if (loop_->thread.joinable()) {
    if (on_loop_thread())
      loop_->thread.detach(); // the last owner let go inside a loop callback
    else
      loop_->thread.join();
  }
  if (!on_loop_thread()) {
    loop_->listeners.clear();
    std::lock_guard guard{loop_->mutex};
    loop_->tasks.clear(); // anything queued after the loop's last round
  }
}

uint64_t endpoint::next_connection_id() {
  return next_id_.fetch_add(1);
}

bool endpoint::peer_allowed(uid_t uid) const {
  if (options_.allowed_uids.empty())
    return uid == ::getuid();
  for (auto allowed : options_.allowed_uids)
    if (allowed == uid)
      return true;
  return false;
}

caf::error endpoint::listen(const std::string& path, frame_handler on_frame,
                            error_handler on_error) {
  // Other uids may connect: the socket must be reachable by them (SO_PEERCRED
  // still decides who stays).
  bool others = std::any_of(options_.allowed_uids.begin(), options_.allowed_uids.end(),
                            [](uid_t u) { return u != ::getuid(); });
  auto fd = listen_seqpacket(path, others);
  if (!fd)
    return fd.error();
  return listen_on(std::move(*fd), path, std::move(on_frame), std::move(on_error));
}

caf::error endpoint::listen_socket(int listener, frame_handler on_frame, error_handler on_error) {
  unique_fd fd{listener};
  int type = 0;
  socklen_t len = sizeof type;
  sockaddr_storage addr{};
  socklen_t alen = sizeof addr;
  int accepting = 0;
  socklen_t plen = sizeof accepting;
  if (::getsockopt(listener, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_SEQPACKET ||
      ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &alen) != 0 ||
      addr.ss_family != AF_UNIX ||
      ::getsockopt(listener, SOL_SOCKET, SO_ACCEPTCONN, &accepting, &plen) != 0 || !accepting)
    return make_error(errc::invalid_argument,
                      "descriptor " + std::to_string(listener) +
                        " is not a listening Unix SOCK_SEQPACKET socket "
                        "(ListenSequentialPacket= in the .socket unit)");
  ::fcntl(listener, F_SETFL, ::fcntl(listener, F_GETFL) | O_NONBLOCK);
  ::fcntl(listener, F_SETFD, FD_CLOEXEC);
  return listen_on(std::move(fd), "fd " + std::to_string(listener), std::move(on_frame),
                   std::move(on_error));
}

caf::error endpoint::listen_on(unique_fd fd, const std::string& path, frame_handler on_frame,
                               error_handler on_error) {
  auto h = std::make_shared<handlers>(handlers{std::move(on_frame), std::move(on_error)});
  auto raw = fd.get();
  auto self = shared_from_this();
  auto owned = std::make_shared<unique_fd>(std::move(fd));
  post([self, raw, h, owned, path] {
    auto* poll = new uv_poll_t{};
    if (int rc = uv_poll_init(&self->loop_->uv, poll, raw); rc != 0) {
      // The socket file stays, but nobody accepts: say so loudly.
      log::get("modelreg.transport")->error("cannot watch the socket {}: {}", path, uv_strerror(rc));
      delete poll;
      return;
    }
    poll->data = new std::function<void()>{[self, raw, h] { self->accept_pending(raw, h); }};
    if (int rc = uv_poll_start(poll, UV_READABLE, on_listener_readable); rc != 0)
      log::get("modelreg.transport")->error("cannot watch the socket {}: {}", path, uv_strerror(rc));
    self->loop_->listeners.emplace_back(poll, std::move(*owned));
  });
  return {};
}

void endpoint::accept_pending(int listener, const std::shared_ptr<handlers>& h) {
  auto log = log::get("modelreg.transport");
  for (;;) {
    auto fd = accept_seqpacket(listener);
    if (!fd) {
      if (!is(fd.error(), errc::overloaded)) {
        log->warn("accept: {}", describe(fd.error()));
        return;
      }
      // Out of descriptors: pending peers would keep the listener readable
      // and this loop spinning. Give up the spare descriptor to accept and
      // close each of them (they see EOF at once), then pause accepting for
      // a moment.
      loop_->spare_fd = unique_fd{};
      size_t refused = 0;
      for (;;) { // each is closed before the next: one descriptor is all it takes
        auto victim = accept_seqpacket(listener);
        if (!victim || !*victim)
          break;
        ++refused;
      }
      loop_->spare_fd = unique_fd{::open("/dev/null", O_RDONLY | O_CLOEXEC)};
      log->warn("out of file descriptors: refused {} pending connection(s), pausing accept "
                "for 100 ms",
                refused);
      for (auto& [poll, owned] : loop_->listeners) {
        if (owned.get() == listener) {
          check_uv(uv_poll_stop(poll), "uv_poll_stop (listener)");
          loop_->paused.push_back(poll);
        }
      }
      check_uv(uv_timer_start(
                 &loop_->accept_retry,
                 [](uv_timer_t* t) {
                   auto* self = static_cast<endpoint*>(t->data);
                   for (auto* poll : self->loop_->paused)
                     check_uv(uv_poll_start(poll, UV_READABLE, on_listener_readable),
                              "uv_poll_start (listener)");
                   self->loop_->paused.clear();
                 },
                 100, 0),
               "uv_timer_start (accept retry)");
      return;
    }
    if (!*fd)
      return;
    auto cred = peer_of(fd->get());
    if (!cred || !peer_allowed(cred->uid)) {
      log->warn("refused a connection from uid {}", cred ? static_cast<long>(cred->uid) : -1L);
      continue; // fd closes: the peer sees EOF at once
    }
    auto conn = connection_ptr{new connection(shared_from_this(), next_connection_id(),
                                              std::move(*fd), *cred)};
    conn->touch();
    adopt(conn, h);
  }
}

void endpoint::start_flushing(const connection_ptr& conn) {
  if (!conn->loop_state_ || conn->loop_state_->closing)
    return;
  auto& st = *conn->loop_state_;
  if (st.flushing)
    return;
  if (conn->flush_backlog())
    return;
  st.flushing = true;
  st.flush_timer.data = conn.get();
  // The ring has no "room again" signal: retry every millisecond while
  // something waits (the socket's backlog too, simplest the same way).
  check_uv(uv_timer_start(
             &st.flush_timer,
             [](uv_timer_t* t) {
               auto* c = static_cast<connection*>(t->data);
               if (c->flush_backlog() || !c->open_.load()) {
                 c->loop_state_->flushing = false;
                 check_uv(uv_timer_stop(t), "uv_timer_stop (flush)");
               }
             },
             1, 1),
           "uv_timer_start (flush)");
}

void endpoint::sweep() {
  std::vector<connection_ptr> all;
  {
    std::lock_guard guard{connections_mutex_};
    for (auto& [id, c] : connections_)
      all.push_back(c);
  }
  auto now = std::chrono::steady_clock::now();
  auto now_ns = steady_now_ns();
  for (auto& c : all) {
    if (!c->loop_state_ || c->loop_state_->closing)
      continue;
    auto& st = *c->loop_state_;
    if (!st.handshaken) {
      if (now - c->created_ > options_.handshake_timeout) {
        ++timed_out_;
        fail(c, st.handlers,
             make_error(errc::unavailable, "no hello within " +
                                             std::to_string(options_.handshake_timeout.count()) +
                                             " ms: closing the connection"));
      }
      continue;
    }
    auto silent = std::chrono::nanoseconds{now_ns - c->last_heard_.load()};
    if (options_.peer_timeout.count() > 0 && silent > options_.peer_timeout) {
      ++timed_out_;
      fail(c, st.handlers,
           make_error(errc::unavailable,
                      "the peer (pid " + std::to_string(c->peer_.pid) + ") sent nothing for " +
                        std::to_string(options_.peer_timeout.count()) +
                        " ms, not even a heartbeat: it is frozen or gone"));
      continue;
    }
    if (options_.heartbeat_interval.count() > 0 && silent >= options_.heartbeat_interval / 2) {
      std::lock_guard guard{c->send_mutex_};
      if (c->backlog_.empty() && c->open_.load() && !c->failing_.load())
        c->put_datagram(make_datagram(socket_message::ping, 0, 0));
    }
  }
}

caf::error endpoint::setup_shared_memory(connection& conn, uint32_t peer_slots,
                                         std::vector<unique_fd>& fds) {
  if (fds.size() != 1)
    return make_error(errc::malformed_frame,
                      "a shared-memory hello carries its control segment and nothing else (" +
                        std::to_string(fds.size()) + " fds)");
  if (peer_slots == 0 || peer_slots > max_ring_slots)
    return make_error(errc::malformed_frame, "bad ring size " + std::to_string(peer_slots));
  auto control = shm::segment::map_readonly(fds[0].release());
  if (!control)
    return control.error();
  if (control->size() < control_bytes(peer_slots))
    return make_error(errc::malformed_frame, "peer control segment smaller than its ring");
  conn.peer_control_ = std::make_shared<const shm::segment>(std::move(*control));
  auto* mine = reinterpret_cast<control_block*>(conn.my_control_.data());
  auto* peer = reinterpret_cast<const control_block*>(conn.peer_control_->data());
  conn.writer_ = ring_writer{mine, peer, options_.ring_slots};
  conn.reader_ = ring_reader{peer, mine, peer_slots};
  conn.shared_memory_ = true;
  conn.pool_->set_quota(conn.id_, options_.peer_quota);
  return {};
}

namespace {

/// Creates this side's control segment.
caf::error make_control(const endpoint_options& opts, shm::segment& control) {
  auto seg = shm::segment::create(control_bytes(opts.ring_slots), "control");
  if (!seg)
    return seg.error();
  new (seg->data()) control_block{};
  control = std::move(*seg);
  return {};
}

} // namespace

caf::expected<connection_ptr> endpoint::connect(const std::string& path, frame_handler on_frame,
                                                error_handler on_error) {
  auto fd = connect_seqpacket(path);
  if (!fd)
    return fd.error();
  auto cred = peer_of(fd->get());
  if (!cred)
    return cred.error();
  auto conn = connection_ptr{new connection(shared_from_this(), next_connection_id(),
                                            std::move(*fd), *cred)};
  bool offer = options_.shared_memory;
  if (auto err = send_hello(*conn, offer))
    return err;
  if (!wait_readable(conn->sock_.get(), static_cast<int>(options_.handshake_timeout.count())))
    return make_error(errc::unavailable, "no hello from " + path);
  auto reply = receive_datagram(conn->sock_.get(), max_datagram);
  if (!reply)
    return reply.error();
  if (reply->eof)
    return make_error(errc::peer_disconnected, path + " closed the connection (not allowed?)");
  auto info = parse_hello(*reply);
  if (!info)
    return info.error();
  if (offer && (info->capabilities & wire::CAP_SHARED_MEMORY) != 0) {
    if (auto err = setup_shared_memory(*conn, info->ring_slots, reply->fds))
      return err;
  }
  ::fcntl(conn->sock_.get(), F_SETFL, ::fcntl(conn->sock_.get(), F_GETFL) | O_NONBLOCK);
  conn->touch();
  auto h = std::make_shared<handlers>(handlers{std::move(on_frame), std::move(on_error)});
  auto self = shared_from_this();
  post([self, conn, h] {
    self->adopt(conn, h);
    conn->loop_state_->handshaken = true;
    conn->adopted_ = true;
    if (conn->shared_memory_) // anything published before we watched
      self->on_doorbell(conn, h);
  });
  return conn;
}

caf::error endpoint::send_hello(connection& conn, bool shared_memory) {
  // Offering shared memory means handing over our control segment with the
  // hello.
  if (shared_memory)
    if (auto err = make_control(options_, conn.my_control_))
      return err;
  auto hello = hello_datagram(options_, shared_memory);
  std::vector<int> fds;
  if (shared_memory)
    fds = {conn.my_control_.fd()};
  std::lock_guard guard{conn.send_mutex_};
  // The first datagram on a fresh socket: if even that cannot go out, the
  // peer is not reading at all.
  auto sent = try_send_datagram(conn.sock_.get(), hello.data(), hello.size(), fds);
  if (!sent)
    return sent.error();
  if (!*sent)
    return make_error(errc::unavailable, "the peer does not read its socket");
  return {};
}

caf::error endpoint::server_handshake(const connection_ptr& conn, datagram& hello) {
  auto info = parse_hello(hello);
  if (!info)
    return info.error();
  bool offered = (info->capabilities & wire::CAP_SHARED_MEMORY) != 0;
  if (offered && hello.fds.size() != 1)
    return make_error(errc::malformed_frame,
                      "a shared-memory hello carries its control segment and nothing else (" +
                        std::to_string(hello.fds.size()) + " fds)");
  if (!offered && !hello.fds.empty())
    return make_error(errc::malformed_frame, "a hello without shared memory carries no fds");
  bool shm = options_.shared_memory && offered;
  if (auto err = send_hello(*conn, shm))
    return err;
  if (shm)
    return setup_shared_memory(*conn, info->ring_slots, hello.fds);
  return {};
}

void endpoint::adopt(const connection_ptr& conn, std::shared_ptr<handlers> h) {
  {
    std::lock_guard guard{connections_mutex_};
    connections_[conn->id_] = conn;
  }
  conn->loop_state_ = std::make_unique<connection::state>();
  auto& st = *conn->loop_state_;
  st.handlers = h;
  st.keep_alive = conn;
  check_uv(uv_timer_init(&loop_->uv, &st.flush_timer), "uv_timer_init (flush)");
  auto self = shared_from_this();
  // A socket the loop cannot watch is closed at once: the peer sees it
  // close, its owner hears why.
  auto refuse = [&](int rc) {
    log::get("modelreg.transport")->warn("connection {}: cannot watch its socket: {}", conn->id_,
                                         uv_strerror(rc));
    if (h && h->on_error)
      h->on_error(conn, make_error(errc::unavailable,
                                   std::string{"cannot watch the socket: "} + uv_strerror(rc)));
  };
  if (int rc = uv_poll_init(&loop_->uv, &st.sock_poll, conn->sock_.get()); rc != 0) {
    // The poll handle does not exist, so `drop` cannot close it: only the
    // timer is there to close.
    st.closing = true;
    conn->open_ = false;
    {
      std::lock_guard guard{connections_mutex_};
      connections_.erase(conn->id_);
    }
    conn->pool_->reclaim(conn->id_);
    st.flush_timer.data = new std::function<void()>{[conn] { conn->loop_state_->keep_alive.reset(); }};
    close_then(reinterpret_cast<uv_handle_t*>(&st.flush_timer));
    ::shutdown(conn->sock_.get(), SHUT_RDWR);
    return refuse(rc);
  }
  st.sock_poll.data = new std::function<void()>{[self, conn, h] { self->on_readable(conn, h); }};
  if (int rc = uv_poll_start(&st.sock_poll, UV_READABLE | UV_DISCONNECT,
                             [](uv_poll_t* p, int, int) {
                               (*static_cast<std::function<void()>*>(p->data))();
                             });
      rc != 0) {
    drop(conn);
    return refuse(rc);
  }
}

void endpoint::on_readable(const connection_ptr& conn, const std::shared_ptr<handlers>& h) {
  if (!conn->loop_state_ || conn->loop_state_->closing)
    return;
  bool open;
  {
    std::lock_guard guard{conn->recv_mutex_};
    open = process_socket(conn, h);
  }
  auto& st = *conn->loop_state_;
  if (open && st.rung.exchange(false))
    on_doorbell(conn, h);
}

bool endpoint::process_socket(const connection_ptr& conn, const std::shared_ptr<handlers>& h) {
  auto& st = *conn->loop_state_;
  for (;;) {
    if (!conn->open_.load() || conn->failing_.load())
      return false;
    auto d = receive_datagram(conn->sock_.get(), max_datagram);
    if (!d) {
      fail(conn, h, d.error());
      return false;
    }
    if (d->would_block)
      return true;
    if (d->eof) {
      // What the peer published before it closed (its last answers, and
      // the `ring` datagram for them read just now) is still ours to take.
      if (conn->shared_memory_ && st.handshaken && !st.final_drain) {
        st.final_drain = true;
        uint32_t taken = 0;
        drain_ring(conn, h, UINT32_MAX, taken);
      }
      fail(conn, h, make_error(errc::peer_disconnected, "peer closed the connection"));
      return false;
    }
    conn->touch();
    if (!st.handshaken) {
      if (auto err = server_handshake(conn, *d)) {
        fail(conn, h, err);
        return false;
      }
      st.handshaken = true;
      if (conn->shared_memory_) {
        // Anything published before we watched; posted, because the caller
        // holds the connection's receive lock.
        auto self = shared_from_this();
        post([self, conn, h] { self->on_doorbell(conn, h); });
      }
      continue;
    }
    auto hdr = header_of(*d);
    if (!hdr) {
      fail(conn, h, hdr.error());
      return false;
    }
    switch (static_cast<socket_message>(hdr->type)) {
      case socket_message::segment: {
        if (d->fds.size() != 1 || hdr->a > UINT32_MAX) {
          fail(conn, h, make_error(errc::malformed_frame, "segment announcement without its fd"));
          return false;
        }
        if (conn->remote_segments_.size() >= options_.max_peer_segments &&
            conn->remote_segments_.count(static_cast<uint32_t>(hdr->a)) == 0) {
          ++misbehaving_;
          fail(conn, h, make_error(errc::quota_exceeded,
                                   "the peer announced more than " +
                                     std::to_string(options_.max_peer_segments) +
                                     " segments (max_peer_segments)"));
          return false;
        }
        auto seg = shm::segment::map_readonly(d->fds[0].release());
        if (!seg) {
          fail(conn, h, seg.error());
          return false;
        }
        conn->remote_segments_[static_cast<uint32_t>(hdr->a)] =
          std::make_shared<const shm::segment>(std::move(*seg));
        break;
      }
      case socket_message::inline_fragment: {
        auto payload = d->bytes.size() - sizeof(socket_header);
        auto total = hdr->a;
        auto offset = hdr->b;
        if (total > max_inline_frame_bytes || total % sizeof(capnp::word) != 0 ||
            offset != conn->inline_buffer_.size() || payload > total - offset ||
            (offset > 0 && total != conn->inline_expected_)) {
          fail(conn, h, make_error(errc::malformed_frame, "inline fragment out of order or too large"));
          return false;
        }
        if (offset == 0) {
          conn->inline_expected_ = total;
          conn->inline_buffer_.reserve(total);
        }
        conn->inline_buffer_.insert(conn->inline_buffer_.end(),
                                    d->bytes.begin() + sizeof(socket_header), d->bytes.end());
        if (conn->inline_buffer_.size() == total) {
          auto words = kj::heapArray<capnp::word>(total / sizeof(capnp::word));
          std::memcpy(words.begin(), conn->inline_buffer_.data(), total);
          conn->inline_buffer_.clear();
          conn->inline_buffer_.shrink_to_fit();
          deliver(conn, h, std::move(words));
        }
        break;
      }
      case socket_message::ping: {
        std::lock_guard guard{conn->send_mutex_};
        if (conn->backlog_.empty()) // a peer that does not read gets no more
          conn->put_datagram(make_datagram(socket_message::pong, 0, 0));
        break;
      }
      case socket_message::pong:
        break; // heard: that is all a pong is for
      case socket_message::ring:
        // Several may be queued (the peer rang while we had not disarmed
        // yet): one drain answers them all, after the socket is read empty.
        if (conn->shared_memory_)
          st.rung = true;
        break;
      default:
        fail(conn, h, make_error(errc::malformed_frame,
                                 "unknown datagram type " + std::to_string(hdr->type)));
        return false;
    }
  }
}

void endpoint::deliver(const connection_ptr& conn, const std::shared_ptr<handlers>& h,
                       kj::Array<capnp::word> bytes) {
  std::weak_ptr<connection> weak = conn;
  auto lookup = [&](uint32_t id) -> std::shared_ptr<const shm::segment> {
    auto i = conn->remote_segments_.find(id);
    if (i == conn->remote_segments_.end() && conn->shared_memory_) {
      // The sender announced the segment on the socket before it published
      // this frame: read the announcement now.
      process_socket(conn, h);
      i = conn->remote_segments_.find(id);
    }
    return i == conn->remote_segments_.end() ? nullptr : i->second;
  };
  auto frame = inbound_frame::decode(
    std::move(bytes), lookup,
    [weak](const std::vector<shm::chunk_id>& loans) {
      if (auto c = weak.lock())
        c->give_back(loans);
    },
    counters_);
  if (!frame) {
    ++rejected_;
    fail(conn, h, frame.error());
    return;
  }
  // Resolving a segment may have read the peer's end-of-file: a closed
  // connection delivers nothing more (its owner already retired it).
  if (!conn->open_.load() || conn->failing_.load())
    return;
  if (h->on_frame)
    h->on_frame(conn, std::move(*frame));
}

bool endpoint::drain_ring(const connection_ptr& conn, const std::shared_ptr<handlers>& h,
                          uint32_t budget, uint32_t& taken) {
  descriptor d;
  taken = 0;
  auto usable = [&] { return conn->open_.load() && !conn->failing_.load(); };
  // The control chunks of every frame taken in this pass go back together:
  // one lock of the send side and at most one doorbell, not one per frame.
  std::vector<shm::chunk_id> read;
  struct give_back_at_exit {
    const connection_ptr& conn;
    std::vector<shm::chunk_id>& read;
    ~give_back_at_exit() {
      if (!read.empty())
        conn->give_back(read);
    }
  } at_exit{conn, read};
  while (taken < budget && usable() && conn->reader_.try_pop(d)) {
    if (taken++ == 0)
      conn->touch();
    switch (static_cast<descriptor_kind>(d.kind)) {
      case descriptor_kind::frame: {
        auto i = conn->remote_segments_.find(d.segment);
        if (i == conn->remote_segments_.end()) {
          // The announcement was sent first; pick it up from the socket.
          if (!process_socket(conn, h))
            return false;
          i = conn->remote_segments_.find(d.segment);
        }
        if (i == conn->remote_segments_.end() || d.length < sizeof(capnp::word) ||
            d.length > max_control_bytes || d.length % sizeof(capnp::word) != 0 ||
            d.offset > i->second->size() || d.length > i->second->size() - d.offset) {
          ++rejected_;
          fail(conn, h, make_error(errc::malformed_frame, "frame descriptor outside its segment"));
          return false;
        }
        // Copy the control message out before parsing it: the sender cannot
        // change what we check. Then its chunk goes back at once.
        auto words = kj::heapArray<capnp::word>(d.length / sizeof(capnp::word));
        std::memcpy(words.begin(), i->second->data() + d.offset, d.length);
        read.push_back({d.segment, d.offset, d.generation});
        deliver(conn, h, std::move(words));
        break;
      }
      case descriptor_kind::give_back: {
        if (auto err = conn->pool_->give_back(conn->id_, {d.segment, d.offset, d.generation})) {
          ++rejected_;
          fail(conn, h, err);
          return false;
        }
        break;
      }
      default:
        ++rejected_;
        fail(conn, h, make_error(errc::malformed_frame,
                                 "unknown descriptor kind " + std::to_string(d.kind)));
        return false;
    }
  }
  return usable();
}

void endpoint::on_doorbell(const connection_ptr& conn, const std::shared_ptr<handlers>& h) {
  auto& st = *conn->loop_state_;
  if (st.closing)
    return;
  conn->reader_.disarm();
  // One turn takes at most `drain_budget` descriptors, however fast the peer
  // sends: then the other connections, their end-of-files and the loop's
  // timers (heartbeats) run before this peer's next turn. The ring stays
  // disarmed meanwhile.
  uint32_t turn = 0;
  for (;;) {
    uint32_t taken = 0;
    {
      std::lock_guard guard{conn->recv_mutex_};
      if (!drain_ring(conn, h, options_.drain_budget - turn, taken))
        return;
    }
    turn += taken;
    if (turn >= options_.drain_budget) {
      auto self = shared_from_this();
      post([self, conn, h] { self->on_doorbell(conn, h); });
      return;
    }
    // Spin briefly: a busy peer's next frame usually arrives within it.
    // Longer while that keeps paying off, shorter while it does not.
    auto longest = options_.spin;
    auto shortest = std::min(std::max(longest / 16, std::chrono::microseconds{1}), longest);
    if (st.spin < shortest)
      st.spin = shortest;
    auto until = std::chrono::steady_clock::now() + st.spin;
    // Yield while spinning: on two cores the thread that will produce the
    // next frame may need this one.
    while (!conn->reader_.ready() && std::chrono::steady_clock::now() < until)
      std::this_thread::yield();
    if (conn->reader_.ready()) {
      st.spin = std::min(st.spin * 2, longest);
      continue;
    }
    st.spin = std::max(st.spin / 2, shortest);
    if (conn->reader_.arm())
      return; // sleep until the peer's next `ring` datagram
  }
}

bool endpoint::on_loop_thread() const {
  return std::this_thread::get_id() == loop_->thread.get_id();
}

bool endpoint::poll(const connection_ptr& conn) {
  if (!conn->adopted_.load() || !conn->shared_memory_ || !conn->open_.load() ||
      conn->failing_.load())
    return false;
  std::unique_lock guard{conn->recv_mutex_, std::try_to_lock};
  if (!guard.owns_lock() || !conn->reader_.ready())
    return false;
  uint32_t taken = 0;
  drain_ring(conn, conn->loop_state_->handlers, options_.drain_budget, taken);
  return true;
}

void endpoint::fail(const connection_ptr& conn, const std::shared_ptr<handlers>& h,
                    const caf::error& err) {
  if (!on_loop_thread()) {
    // Found by a thread in poll(): closing is the loop's job.
    if (!conn->failing_.exchange(true)) {
      auto self = shared_from_this();
      post([self, conn, h, err] { self->fail(conn, h, err); });
    }
    return;
  }
  if (!conn->loop_state_ || conn->loop_state_->closing)
    return;
  if (!is(err, errc::peer_disconnected))
    log::get("modelreg.transport")->warn("connection {} (pid {}): {}", conn->id_, conn->peer_.pid,
                                         describe(err));
  drop(conn);
  if (h && h->on_error)
    h->on_error(conn, err);
}

void endpoint::drop(const connection_ptr& conn) {
  if (!conn->loop_state_ || conn->loop_state_->closing)
    return;
  auto& st = *conn->loop_state_;
  st.closing = true;
  conn->open_ = false;
  {
    std::lock_guard guard{connections_mutex_};
    connections_.erase(conn->id_);
  }
  // Everything the peer held of ours comes back now.
  auto reclaimed = conn->pool_->reclaim(conn->id_);
  if (reclaimed > 0)
    log::get("modelreg.transport")->info("connection {}: reclaimed {} loans", conn->id_, reclaimed);
  auto pending = std::make_shared<int>(2);
  auto finish = [conn, pending] {
    if (--*pending == 0) {
      conn->remote_segments_.clear();
      conn->loop_state_->keep_alive.reset(); // may destroy conn
    }
  };
  // The poll's callback closure may be running right now (we may have been
  // called from it): free it only in the close callback, after it returned.
  auto close_poll = [&finish](uv_poll_t& p) {
    auto* old = static_cast<std::function<void()>*>(p.data);
    p.data = new std::function<void()>{[finish, old] {
      delete old;
      finish();
    }};
    check_uv(uv_poll_stop(&p), "uv_poll_stop");
    close_then(reinterpret_cast<uv_handle_t*>(&p));
  };
  close_poll(st.sock_poll);
  st.flush_timer.data = new std::function<void()>{finish};
  check_uv(uv_timer_stop(&st.flush_timer), "uv_timer_stop");
  close_then(reinterpret_cast<uv_handle_t*>(&st.flush_timer));
  ::shutdown(conn->sock_.get(), SHUT_RDWR);
}

caf::expected<tensor> connection::allocate_tensor(dtype type, std::vector<int64_t> shape) {
  auto probe = tensor::allocate(type, {0}); // validates the dtype
  if (!probe)
    return probe.error();
  size_t count = 1;
  for (auto d : shape)
    if (d < 0 || __builtin_mul_overflow(count, static_cast<size_t>(d), &count))
      return make_error(errc::invalid_argument, "invalid or overflowing shape");
  size_t bytes;
  if (__builtin_mul_overflow(count, itemsize(type), &bytes))
    return make_error(errc::invalid_argument, "tensor size overflows");
  auto c = pool_->allocate(std::max<size_t>(bytes, 1));
  if (!c)
    return c.error();
  auto base = (*c)->data();
  auto capacity = (*c)->capacity();
  return tensor::wrap(std::move(*c), base, capacity, {type, std::move(shape), {}, 0}, true);
}

tensor_allocator& connection::allocator() {
  return *allocator_;
}

endpoint_stats endpoint::stats() const {
  endpoint_stats s;
  s.connections = connection_count();
  s.zero_copy_tensors = counters_.zero_copy_tensors.load();
  s.copied_bytes = counters_.copied_bytes.load();
  s.rejected_frames = rejected_.load();
  s.misbehaving_peers = misbehaving_.load();
  s.timed_out_peers = timed_out_.load();
  std::lock_guard guard{pools_mutex_};
  for (const auto& weak : pools_) {
    if (auto p = weak.lock()) {
      auto ps = p->stats();
      s.pool.segments += ps.segments;
      s.pool.bytes_mapped += ps.bytes_mapped;
      s.pool.chunks_in_use += ps.chunks_in_use;
      s.pool.loans_outstanding += ps.loans_outstanding;
      s.pool.bytes_lent += ps.bytes_lent;
    }
  }
  return s;
}

size_t endpoint::connection_count() const {
  std::lock_guard guard{connections_mutex_};
  return connections_.size();
}

} // namespace modelreg::transport

#include "modelreg/transport/endpoint.hpp"

#include <algorithm>
#include <cstring>
#include <thread>

#include <fcntl.h>
#include <sys/eventfd.h>
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

enum class socket_message : uint32_t { hello = 1, segment = 2, inline_fragment = 3 };

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
  bool stopping = false;
};

struct connection::state {
  uv_poll_t sock_poll{};
  uv_poll_t bell_poll{};
  bool bell_started = false;
  bool handshaken = false;
  bool closing = false;
  std::shared_ptr<endpoint::handlers> handlers;
  connection_ptr keep_alive; // until the poll handles are closed
};

// -- connection ---------------------------------------------------------------

connection::connection(std::shared_ptr<endpoint> owner, uint64_t id, unique_fd sock,
                       peer_credentials peer)
  : owner_(std::move(owner)),
    id_(id),
    pool_(shm::pool::create()),
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

caf::error connection::announce_segment(uint32_t id) {
  if (announced_.count(id) > 0)
    return {};
  const auto* seg = pool_->find_segment(id);
  if (seg == nullptr)
    return make_error(errc::invalid_argument, "no segment " + std::to_string(id));
  auto d = make_datagram(socket_message::segment, id, seg->size());
  if (auto err = send_datagram(sock_.get(), d.data(), d.size(), {seg->fd()}))
    return err;
  announced_.insert(id);
  return {};
}

caf::error connection::push(const descriptor& d) {
  // Spin, then yield, while the ring is full; a peer that never drains its
  // ring is overloaded (or frozen): give up after a few seconds.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds{5};
  for (int spins = 0; !writer_.try_push(d); ++spins) {
    if (!open_.load())
      return make_error(errc::peer_disconnected, "connection closed");
    if (spins > 64)
      std::this_thread::yield();
    if (std::chrono::steady_clock::now() > deadline)
      return make_error(errc::overloaded, "peer does not drain its ring");
  }
  return {};
}

caf::error connection::send(outgoing_frame& frame) {
  std::lock_guard guard{send_mutex_};
  if (!open_.load())
    return make_error(errc::peer_disconnected, "connection closed");
  if (!shared_memory_) {
    auto flat = frame.finish_flat();
    auto total = flat.size() * sizeof(capnp::word);
    if (total > max_inline_frame_bytes)
      return make_error(errc::invalid_argument, "frame too large to send inline");
    const auto* bytes = reinterpret_cast<const std::byte*>(flat.begin());
    constexpr size_t piece = max_datagram - sizeof(socket_header);
    for (uint64_t off = 0; off < total; off += piece) {
      auto n = std::min<uint64_t>(piece, total - off);
      auto d = make_datagram(socket_message::inline_fragment, total, off, bytes + off, n);
      if (auto err = send_datagram(sock_.get(), d.data(), d.size()))
        return err;
    }
    return {};
  }
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
  for (const auto& c : frame.referenced())
    if (!err)
      err = announce_segment(c->id().segment);
  if (!err)
    err = announce_segment(control->id().segment);
  auto cid = control->id();
  if (!err)
    err = push({static_cast<uint32_t>(descriptor_kind::frame), cid.segment, cid.offset, length,
                cid.generation});
  if (err) {
    for (const auto& id : lent)
      pool_->give_back(id_, id);
    return err;
  }
  writer_.ring_doorbell();
  return {};
}

void connection::give_back(const std::vector<shm::chunk_id>& loans) {
  std::lock_guard guard{send_mutex_};
  if (!open_.load() || !shared_memory_)
    return;
  for (const auto& id : loans)
    if (push({static_cast<uint32_t>(descriptor_kind::give_back), id.segment, id.offset, 0,
              id.generation}))
      return;
  writer_.ring_doorbell();
}

caf::error connection::send_raw_descriptor(const descriptor& d) {
  std::lock_guard guard{send_mutex_};
  if (!shared_memory_)
    return make_error(errc::unsupported, "no ring on an inline connection");
  if (auto err = push(d))
    return err;
  writer_.ring_doorbell();
  return {};
}

caf::error connection::send_raw_datagram(const void* data, size_t size) {
  std::lock_guard guard{send_mutex_};
  return send_datagram(sock_.get(), data, size);
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
  : options_(std::move(opts)), loop_(std::make_unique<loop>()) {}

std::shared_ptr<endpoint> endpoint::start(endpoint_options opts) {
  std::shared_ptr<endpoint> ep{new endpoint(std::move(opts))};
  auto& lp = *ep->loop_;
  uv_loop_init(&lp.uv);
  lp.wake.data = ep.get();
  uv_async_init(&lp.uv, &lp.wake, [](uv_async_t* h) {
    auto* self = static_cast<endpoint*>(h->data);
    std::vector<std::function<void()>> tasks;
    {
      std::lock_guard guard{self->loop_->mutex};
      tasks.swap(self->loop_->tasks);
    }
    for (auto& t : tasks)
      t();
  });
  lp.thread = std::thread{[&lp] {
    uv_run(&lp.uv, UV_RUN_DEFAULT);
    uv_loop_close(&lp.uv);
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
  uv_async_send(&loop_->wake);
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
      uv_close(reinterpret_cast<uv_handle_t*>(&loop_->wake), nullptr);
    });
  }
  uv_async_send(&loop_->wake);
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
  auto fd = listen_seqpacket(path);
  if (!fd)
    return fd.error();
  auto h = std::make_shared<handlers>(handlers{std::move(on_frame), std::move(on_error)});
  auto raw = fd->get();
  auto self = shared_from_this();
  auto owned = std::make_shared<unique_fd>(std::move(*fd));
  post([self, raw, h, owned] {
    auto* poll = new uv_poll_t{};
    uv_poll_init(&self->loop_->uv, poll, raw);
    poll->data = new std::function<void()>{[self, raw, h] { self->accept_pending(raw, h); }};
    uv_poll_start(poll, UV_READABLE, [](uv_poll_t* p, int status, int) {
      if (status >= 0)
        (*static_cast<std::function<void()>*>(p->data))();
    });
    self->loop_->listeners.emplace_back(poll, std::move(*owned));
  });
  return {};
}

void endpoint::accept_pending(int listener, const std::shared_ptr<handlers>& h) {
  for (;;) {
    auto fd = accept_seqpacket(listener);
    if (!fd || !*fd)
      return;
    auto cred = peer_of(fd->get());
    if (!cred || !peer_allowed(cred->uid)) {
      log::get("modelreg.transport")
        ->warn("refused a connection from uid {}", cred ? static_cast<long>(cred->uid) : -1L);
      continue; // fd closes: the peer sees EOF at once
    }
    auto conn = connection_ptr{new connection(shared_from_this(), next_connection_id(),
                                              std::move(*fd), *cred)};
    adopt(conn, h);
  }
}

caf::error endpoint::setup_shared_memory(connection& conn, uint32_t peer_slots,
                                         std::vector<unique_fd>& fds) {
  if (fds.size() != 2)
    return make_error(errc::malformed_frame, "shared-memory hello without control fds");
  if (peer_slots == 0 || peer_slots > max_ring_slots)
    return make_error(errc::malformed_frame, "bad ring size " + std::to_string(peer_slots));
  auto control = shm::segment::map_readonly(fds[0].release());
  if (!control)
    return control.error();
  if (control->size() < control_bytes(peer_slots))
    return make_error(errc::malformed_frame, "peer control segment smaller than its ring");
  conn.peer_control_ = std::make_shared<const shm::segment>(std::move(*control));
  conn.peer_doorbell_ = std::move(fds[1]);
  auto* mine = reinterpret_cast<control_block*>(conn.my_control_.data());
  auto* peer = reinterpret_cast<const control_block*>(conn.peer_control_->data());
  conn.writer_ = ring_writer{mine, peer, options_.ring_slots, conn.peer_doorbell_.get()};
  conn.reader_ = ring_reader{peer, mine, peer_slots};
  conn.shared_memory_ = true;
  conn.pool_->set_quota(conn.id_, options_.peer_quota);
  return {};
}

namespace {

/// Creates this side's control segment and doorbell.
caf::error make_control(const endpoint_options& opts, shm::segment& control, unique_fd& bell) {
  auto seg = shm::segment::create(control_bytes(opts.ring_slots), "control");
  if (!seg)
    return seg.error();
  new (seg->data()) control_block{};
  control = std::move(*seg);
  bell = unique_fd{::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
  if (!bell)
    return make_error(errc::unavailable, "eventfd failed");
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
  auto h = std::make_shared<handlers>(handlers{std::move(on_frame), std::move(on_error)});
  auto self = shared_from_this();
  post([self, conn, h] {
    self->adopt(conn, h);
    conn->loop_state_->handshaken = true;
    if (conn->shared_memory_)
      self->start_doorbell(conn, h);
    conn->adopted_ = true;
  });
  return conn;
}

caf::error endpoint::send_hello(connection& conn, bool shared_memory) {
  // Offering shared memory means handing over our control segment and
  // doorbell with the hello.
  if (shared_memory)
    if (auto err = make_control(options_, conn.my_control_, conn.my_doorbell_))
      return err;
  auto hello = hello_datagram(options_, shared_memory);
  std::vector<int> fds;
  if (shared_memory)
    fds = {conn.my_control_.fd(), conn.my_doorbell_.get()};
  std::lock_guard guard{conn.send_mutex_};
  return send_datagram(conn.sock_.get(), hello.data(), hello.size(), fds);
}

caf::error endpoint::server_handshake(const connection_ptr& conn, datagram& hello) {
  auto info = parse_hello(hello);
  if (!info)
    return info.error();
  bool shm = options_.shared_memory && (info->capabilities & wire::CAP_SHARED_MEMORY) != 0 &&
             hello.fds.size() == 2;
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
  uv_poll_init(&loop_->uv, &st.sock_poll, conn->sock_.get());
  auto self = shared_from_this();
  st.sock_poll.data = new std::function<void()>{[self, conn, h] { self->on_readable(conn, h); }};
  uv_poll_start(&st.sock_poll, UV_READABLE | UV_DISCONNECT, [](uv_poll_t* p, int, int) {
    (*static_cast<std::function<void()>*>(p->data))();
  });
}

void endpoint::on_readable(const connection_ptr& conn, const std::shared_ptr<handlers>& h) {
  if (!conn->loop_state_ || conn->loop_state_->closing)
    return;
  std::lock_guard guard{conn->recv_mutex_};
  process_socket(conn, h);
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
      fail(conn, h, make_error(errc::peer_disconnected, "peer closed the connection"));
      return false;
    }
    if (!st.handshaken) {
      if (auto err = server_handshake(conn, *d)) {
        fail(conn, h, err);
        return false;
      }
      st.handshaken = true;
      if (conn->shared_memory_)
        start_doorbell(conn, h);
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
  if (h->on_frame)
    h->on_frame(conn, std::move(*frame));
}

bool endpoint::drain_ring(const connection_ptr& conn, const std::shared_ptr<handlers>& h) {
  descriptor d;
  auto usable = [&] { return conn->open_.load() && !conn->failing_.load(); };
  while (usable() && conn->reader_.try_pop(d)) {
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
        conn->give_back({{d.segment, d.offset, d.generation}});
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

void endpoint::start_doorbell(const connection_ptr& conn, const std::shared_ptr<handlers>& h) {
  auto& st = *conn->loop_state_;
  uv_poll_init(&loop_->uv, &st.bell_poll, conn->my_doorbell_.get());
  st.bell_started = true;
  auto self = shared_from_this();
  st.bell_poll.data = new std::function<void()>{[self, conn, h] { self->on_doorbell(conn, h); }};
  uv_poll_start(&st.bell_poll, UV_READABLE, [](uv_poll_t* p, int, int) {
    (*static_cast<std::function<void()>*>(p->data))();
  });
  // Anything published before we watched; posted, because the caller may
  // hold the connection's receive lock.
  post([self, conn, h] { self->on_doorbell(conn, h); });
}

void endpoint::on_doorbell(const connection_ptr& conn, const std::shared_ptr<handlers>& h) {
  auto& st = *conn->loop_state_;
  if (st.closing)
    return;
  uint64_t count;
  [[maybe_unused]] auto n = ::read(conn->my_doorbell_.get(), &count, sizeof(count));
  conn->reader_.disarm();
  for (;;) {
    {
      std::lock_guard guard{conn->recv_mutex_};
      if (!drain_ring(conn, h))
        return;
    }
    // Spin briefly: a busy peer's next frame usually arrives within it.
    auto until = std::chrono::steady_clock::now() + options_.spin;
    // Yield while spinning: on two cores the thread that will produce the
    // next frame may need this one.
    while (!conn->reader_.ready() && std::chrono::steady_clock::now() < until)
      std::this_thread::yield();
    if (conn->reader_.ready())
      continue;
    if (conn->reader_.arm())
      return; // sleep until the doorbell
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
  drain_ring(conn, conn->loop_state_->handlers);
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
  auto pending = std::make_shared<int>(st.bell_started ? 2 : 1);
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
    uv_poll_stop(&p);
    close_then(reinterpret_cast<uv_handle_t*>(&p));
  };
  close_poll(st.sock_poll);
  if (st.bell_started)
    close_poll(st.bell_poll);
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

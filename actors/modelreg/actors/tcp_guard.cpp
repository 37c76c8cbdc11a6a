#include "modelreg/actors/tcp_guard.hpp"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/socket.h>

#include <caf/io/basp/header.hpp>
#include <caf/io/basp/message_type.hpp>
#include <caf/io/basp_broker.hpp>
#include <caf/io/middleman.hpp>
#include <caf/io/network/default_multiplexer.hpp>
#include <caf/io/network/doorman_impl.hpp>
#include <caf/io/network/scribe_impl.hpp>
#include <caf/send.hpp>

#include "modelreg/log.hpp"

namespace modelreg {

namespace {

namespace net = caf::io::network;
using clock_type = std::chrono::steady_clock;

/// One accepted connection, as the deadline sweep sees it. `open` turns
/// false (under `mutex`) before the scribe closes the socket, so the sweep
/// never shuts down a descriptor number that has been reused.
struct tracked_connection {
  int fd;
  clock_type::time_point opened = clock_type::now();
  std::mutex mutex;
  bool open = true;
  std::atomic<bool> handshaken{false};
};

} // namespace

struct tcp_guard::state {
  tcp_guard_options options;
  std::atomic<uint64_t> buffered{0};
  std::shared_ptr<spdlog::logger> logger = log::get("modelreg.tcp");

  std::mutex mutex; // guards everything below
  std::vector<std::shared_ptr<tracked_connection>> waiting; // no handshake yet
  std::condition_variable wake;
  bool stopping = false;

  std::shared_ptr<tracked_connection> track(int fd) {
    auto c = std::make_shared<tracked_connection>();
    c->fd = fd;
    std::lock_guard lock{mutex};
    waiting.push_back(c);
    return c;
  }

  /// Closes connections past the handshake deadline; forgets the others
  /// once they completed it or went.
  void sweep() {
    auto now = clock_type::now();
    std::lock_guard lock{mutex};
    std::erase_if(waiting, [&](const std::shared_ptr<tracked_connection>& c) {
      if (c->handshaken.load())
        return true;
      std::lock_guard conn_lock{c->mutex};
      if (!c->open)
        return true;
      if (now - c->opened < options.handshake_timeout)
        return false;
      // Read and write ends both: CAF's loop sees end-of-file and retires
      // the connection as it does any other.
      ::shutdown(c->fd, SHUT_RDWR);
      logger->info("closed a TCP peer that did not complete CAF's handshake within {} ms",
                   options.handshake_timeout.count());
      return true;
    });
  }
};

namespace {

/// A BASP connection that refuses oversized messages before CAF allocates
/// them, and reports when the peer's client handshake has arrived.
class guarded_scribe final : public net::scribe_impl {
public:
  guarded_scribe(net::default_multiplexer& mx, net::native_socket fd,
                 std::shared_ptr<tcp_guard::state> st, std::shared_ptr<tracked_connection> conn)
    : net::scribe_impl(mx, fd), st_(std::move(st)), conn_(std::move(conn)) {
  }

  ~guarded_scribe() override {
    {
      std::lock_guard lock{conn_->mutex};
      conn_->open = false;
    }
    st_->buffered -= reserved_;
  }

  void configure_read(caf::io::receive_policy::config config) override {
    uint64_t want = config.second;
    if (!reserve(want)) {
      refuse(want);
      // Nothing large: the next read sees the end-of-file shutdown made.
      config = caf::io::receive_policy::exactly(1);
    }
    net::scribe_impl::configure_read(config);
  }

  bool consume(caf::execution_unit* ctx, const void* buf, size_t size) override {
    if (!conn_->handshaken.load(std::memory_order_relaxed))
      observe(static_cast<const uint8_t*>(buf), size);
    return net::scribe_impl::consume(ctx, buf, size);
  }

private:
  /// Counts `want` bytes against the node-wide allowance, in place of what
  /// this connection had before.
  bool reserve(uint64_t want) {
    const auto& o = st_->options;
    if (want > o.max_message)
      return false;
    auto cur = st_->buffered.load();
    do {
      if (cur - reserved_ + want > o.max_buffered)
        return false;
    } while (!st_->buffered.compare_exchange_weak(cur, cur - reserved_ + want));
    reserved_ = want;
    return true;
  }

  void refuse(uint64_t want) {
    st_->buffered -= reserved_;
    reserved_ = 0;
    const auto& o = st_->options;
    st_->logger->warn("closed a TCP peer whose next read needs {} bytes: over {} "
                      "(--max-tcp-message {}, all peers together {})",
                      want, want > o.max_message ? "the per-message limit" : "what all peers may buffer",
                      o.max_message, o.max_buffered);
    ::shutdown(stream_.fd(), SHUT_RDWR);
  }

  /// Follows headers and payloads: the handshake is complete once the
  /// payload of the peer's client handshake has been read.
  void observe(const uint8_t* bytes, size_t size) {
    if (!in_payload_) {
      if (size != caf::io::basp::header_size)
        return;
      auto op = bytes[0];
      uint32_t len = (uint32_t{bytes[4]} << 24) | (uint32_t{bytes[5]} << 16) |
                     (uint32_t{bytes[6]} << 8) | uint32_t{bytes[7]};
      payload_op_ = op;
      in_payload_ = len > 0;
      return;
    }
    in_payload_ = false;
    if (payload_op_ == static_cast<uint8_t>(caf::io::basp::message_type::client_handshake))
      conn_->handshaken = true;
  }

  std::shared_ptr<tcp_guard::state> st_;
  std::shared_ptr<tracked_connection> conn_;
  uint64_t reserved_ = 0;
  bool in_payload_ = false;
  uint8_t payload_op_ = 0;
};

/// CAF's doorman, with guarded connections.
class guarded_doorman final : public net::doorman_impl {
public:
  guarded_doorman(net::default_multiplexer& mx, net::native_socket fd,
                  std::shared_ptr<tcp_guard::state> st)
    : net::doorman_impl(mx, fd), st_(std::move(st)) {
  }

  bool new_connection() override {
    if (detached())
      return false; // as doorman_impl: the broker let go of us already
    auto& mx = acceptor_.backend();
    auto fd = acceptor_.accepted_socket();
    auto scribe = caf::make_counted<guarded_scribe>(mx, fd, st_, st_->track(fd));
    auto hdl = scribe->hdl();
    parent()->add_scribe(std::move(scribe));
    return caf::io::doorman::new_connection(&mx, hdl);
  }

private:
  std::shared_ptr<tcp_guard::state> st_;
};

} // namespace

tcp_guard::tcp_guard(tcp_guard_options options) : state_(std::make_shared<state>()) {
  state_->options = options;
}

tcp_guard::~tcp_guard() {
  {
    std::lock_guard lock{state_->mutex};
    state_->stopping = true;
  }
  state_->wake.notify_all();
  if (sweeper_.joinable())
    sweeper_.join();
}

caf::expected<uint16_t> tcp_guard::publish(caf::actor_system& sys,
                                           const caf::strong_actor_ptr& whom,
                                           const std::set<std::string>& signatures,
                                           uint16_t port, const std::string& host) {
  auto fd = net::new_tcp_acceptor_impl(port, host.empty() ? nullptr : host.c_str(), true);
  if (!fd)
    return std::move(fd.error());
  auto& mx = static_cast<net::default_multiplexer&>(sys.middleman().backend());
  caf::io::doorman_ptr door = caf::make_counted<guarded_doorman>(mx, *fd, state_);
  auto actual = door->port();
  // What caf::io::middleman::publish has the middleman actor do.
  auto basp = sys.middleman().named_broker<caf::io::basp_broker>(caf::atom("BASP"));
  caf::anon_send(basp, caf::publish_atom::value, std::move(door), actual, whom, signatures);
  if (!sweeper_.joinable())
    sweeper_ = std::thread{[st = state_] {
      auto period = std::max(std::chrono::milliseconds{10}, st->options.handshake_timeout / 8);
      std::unique_lock lock{st->mutex};
      while (!st->wake.wait_for(lock, period, [&] { return st->stopping; })) {
        lock.unlock();
        st->sweep();
        lock.lock();
      }
    }};
  return actual;
}

} // namespace modelreg

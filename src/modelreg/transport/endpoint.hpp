// The shared-memory transport: one endpoint per process, one libuv loop
// thread, any number of connections (see docs/transport.md).
//
// A connection is a Unix SOCK_SEQPACKET socket (rendezvous, liveness, fd
// passing, wake-ups) plus, when both sides can map shared memory, a descriptor
// ring per direction. Frames (Cap'n Proto) are built in the
// sender's pool and referenced from the ring; tensors inside them are
// referenced, never copied. Without shared memory the same frames travel over
// the socket with tensor bytes inline.
//
// Threads: frame and error handlers run on the loop thread (or on a thread
// inside `connection::poll()`) and must not block; `send`, `close` and
// everything on `endpoint` may be called from any thread.
//
// Lifetime: call `stop()` when done: it closes every connection and listener
// and joins the loop thread (peers see EOF and reclaim what this process
// held). Until then the loop thread keeps the endpoint alive.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include <caf/expected.hpp>

#include "modelreg/shm/pool.hpp"
#include "modelreg/tensor/tensor.hpp"
#include "modelreg/transport/frame.hpp"
#include "modelreg/transport/ring.hpp"
#include "modelreg/transport/socket.hpp"

namespace modelreg::transport {

struct endpoint_options {
  /// Descriptors in each outbound ring.
  uint32_t ring_slots = 1024;
  /// Peers allowed to connect (SO_PEERCRED); empty: this process's uid.
  std::vector<uid_t> allowed_uids;
  /// What each peer may hold of this process's memory at once.
  shm::quota peer_quota;
  /// Offer shared memory; false: tensors always travel inline.
  bool shared_memory = true;
  /// The longest a receiver spins on an empty ring before it sleeps. Each
  /// connection adapts within [spin / 16, spin]: a spin that saw the next
  /// frame arrive doubles the next one, a spin that ended in sleep halves
  /// it; so a busy peer is waited for without a wake-up, and a quiet one
  /// costs little CPU per frame.
  std::chrono::microseconds spin{200};
  /// How long `connect` waits for the server's hello, and how long a server
  /// keeps a connection that has not sent its hello.
  std::chrono::milliseconds handshake_timeout{2000};
  /// An idle peer is pinged this often (0: never); see `peer_timeout`.
  std::chrono::milliseconds heartbeat_interval{1000};
  /// A peer that sent nothing (not even a pong) for this long is closed
  /// with `unavailable`: it froze, or its host is gone (0: never).
  std::chrono::milliseconds peer_timeout{3000};
  /// Descriptors and datagrams queued for a peer that does not drain its
  /// ring or socket; past either limit the peer is closed as misbehaving.
  size_t max_backlog = 16384;
  uint64_t max_backlog_bytes = uint64_t{1} << 30;
  /// Segments one peer may announce (each is a mapping in this process).
  uint32_t max_peer_segments = 1024;
  /// Shared memory this process may map for all its connections together
  /// (0: no limit); past it, what needs a new segment fails with
  /// `quota_exceeded`.
  uint64_t max_shared_memory_bytes = 0;
  /// Descriptors taken from one peer's ring before other peers get a turn.
  uint32_t drain_budget = 256;
};

class endpoint;
class connection;
using connection_ptr = std::shared_ptr<connection>;
using frame_ptr = std::shared_ptr<const inbound_frame>;

/// A frame arrived (on the loop thread, or a thread inside poll()).
using frame_handler = std::function<void(const connection_ptr&, frame_ptr)>;
/// A connection failed: `malformed_frame` (then closed) or
/// `peer_disconnected` (closed); on the loop thread.
using error_handler = std::function<void(const connection_ptr&, const caf::error&)>;

class connection : public std::enable_shared_from_this<connection> {
public:
  ~connection();

  uint64_t id() const noexcept { return id_; }
  const peer_credentials& peer() const noexcept { return peer_; }
  bool shared_memory() const noexcept { return shared_memory_; }
  bool is_open() const noexcept { return open_.load(); }

  /// A frame to fill and `send`.
  outgoing_frame new_frame();

  /// A tensor in this connection's shared memory: sent by reference, no
  /// copy. Each connection has its own pool, so a peer can map only memory
  /// meant for it.
  caf::expected<tensor> allocate_tensor(dtype type, std::vector<int64_t> shape);

  /// An allocator handing out this connection's shared-memory tensors.
  tensor_allocator& allocator();

  /// This connection's pool (the memory its peer may map).
  const std::shared_ptr<shm::pool>& pool() const noexcept { return pool_; }

  /// Sends `frame`, lending every chunk it references to the peer. Fails
  /// with `quota_exceeded` (nothing sent, the connection stays usable),
  /// `peer_disconnected`, or `overloaded` if the ring stays full.
  caf::error send(outgoing_frame& frame);

  /// Closes the connection (from any thread).
  void close();


  /// Processes what has arrived on this connection on the calling thread,
  /// unless another thread (the loop) is doing so; true if it found anything.
  /// A caller waiting for a reply polls instead of waiting for the loop
  /// thread to hand the reply over: one thread wake-up less per round trip.
  bool poll();

  /// Test hook: publishes a raw descriptor (forged or garbage) as is.
  caf::error send_raw_descriptor(const descriptor& d);
  /// Test hook: sends raw bytes on the socket.
  caf::error send_raw_datagram(const void* data, size_t size);

private:
  friend class endpoint;
  struct state;

  connection(std::shared_ptr<endpoint> owner, uint64_t id, unique_fd sock, peer_credentials peer);

  /// Something waiting for room in the ring (a descriptor) or in the
  /// socket (a datagram, with the fd it carries).
  struct outbound {
    bool is_descriptor = true;
    descriptor desc;
    std::vector<std::byte> bytes;
    unique_fd fd;
  };

  // Sending never waits for the peer: what does not fit goes to the
  // backlog, in order, which the loop thread flushes. All under send_mutex_.
  caf::error announce_segment(uint32_t id);
  void give_back(const std::vector<shm::chunk_id>& loans);
  caf::error put_descriptor(const descriptor& d);
  caf::error put_datagram(std::vector<std::byte> bytes, int fd = -1);
  caf::error queue(outbound item);
  caf::error ring_doorbell();
  caf::error send_inline(outgoing_frame& frame);
  /// Sends what the backlog holds; true once it is empty.
  bool flush_backlog();
  /// The peer misbehaved (from any thread): closed by the loop thread.
  void misbehaved(const caf::error& err);
  void touch() noexcept;

  std::shared_ptr<endpoint> owner_;
  uint64_t id_;
  std::shared_ptr<shm::pool> pool_;
  std::unique_ptr<tensor_allocator> allocator_;
  unique_fd sock_;
  peer_credentials peer_;
  bool shared_memory_ = false;
  std::atomic<bool> open_{true};

  // Shared-memory state (valid if shared_memory_).
  shm::segment my_control_;
  std::shared_ptr<const shm::segment> peer_control_;
  ring_writer writer_;
  ring_reader reader_;

  mutable std::mutex send_mutex_;   // guards writer_, announced_, backlog_, socket sends
  std::set<uint32_t> announced_;
  std::deque<outbound> backlog_;
  uint64_t backlog_bytes_ = 0;
  bool flush_scheduled_ = false;
  bool pushed_ = false;             // a descriptor went out since the last doorbell

  // Liveness: steady-clock nanoseconds of the last thing heard from the peer.
  std::atomic<int64_t> last_heard_{0};
  std::chrono::steady_clock::time_point created_ = std::chrono::steady_clock::now();

  // Receive-side state: used by the loop thread, or by a thread in poll(),
  // always under recv_mutex_.
  std::mutex recv_mutex_;
  std::atomic<bool> adopted_{false}; // the loop watches this connection
  std::atomic<bool> failing_{false}; // a failure is on its way to the loop
  std::map<uint32_t, std::shared_ptr<const shm::segment>> remote_segments_;
  std::vector<std::byte> inline_buffer_;
  uint64_t inline_expected_ = 0;
  std::unique_ptr<state> loop_state_;
};

/// Endpoint-wide counters.
struct endpoint_stats {
  uint64_t connections = 0;
  uint64_t misbehaving_peers = 0; ///< peers closed for not draining or over a limit
  uint64_t timed_out_peers = 0;   ///< peers closed for silence or a missing hello
  uint64_t zero_copy_tensors = 0;
  uint64_t copied_bytes = 0;
  uint64_t rejected_frames = 0;
  shm::pool_stats pool; ///< summed over the pools of every connection still alive
};

class endpoint : public std::enable_shared_from_this<endpoint> {
public:
  /// Starts the loop thread; `unavailable` (naming libuv's reason) if the
  /// loop cannot be set up, e.g. when the process is out of descriptors.
  static caf::expected<std::shared_ptr<endpoint>> try_start(endpoint_options opts = {});
  /// try_start for callers that cannot go on without one (tests, tools):
  /// throws std::runtime_error with the reason.
  static std::shared_ptr<endpoint> start(endpoint_options opts = {});
  ~endpoint();

  /// Closes every connection and listener, joins the loop thread.
  void stop();

  /// Listens on a Unix socket at `path` (see `listen_seqpacket` for the
  /// folder and socket modes; reachable by others when `allowed_uids` names
  /// another uid).
  caf::error listen(const std::string& path, frame_handler on_frame, error_handler on_error = {});

  /// Listens on `listener`, a listening Unix SOCK_SEQPACKET socket made by
  /// someone else (socket activation); the endpoint owns it from now on.
  /// `invalid_argument` if it is not such a socket.
  caf::error listen_socket(int listener, frame_handler on_frame, error_handler on_error = {});

  /// Connects to a listening endpoint at `path` (blocking handshake).
  caf::expected<connection_ptr> connect(const std::string& path, frame_handler on_frame,
                                        error_handler on_error = {});

  copy_counters& counters() noexcept { return counters_; }
  const endpoint_options& options() const noexcept { return options_; }
  endpoint_stats stats() const;
  size_t connection_count() const;

private:
  friend class connection;
  struct loop;
  struct handlers {
    frame_handler on_frame;
    error_handler on_error;
  };

  explicit endpoint(endpoint_options opts);

  void post(std::function<void()> task);
  void adopt(const connection_ptr& conn, std::shared_ptr<handlers> h);
  void on_readable(const connection_ptr& conn, const std::shared_ptr<handlers>& h);
  /// Takes what the peer's ring holds, spins briefly, then arms and sleeps
  /// until the peer's next `ring` datagram.
  void on_doorbell(const connection_ptr& conn, const std::shared_ptr<handlers>& h);
  /// Reads the socket until it is empty; false if the connection failed.
  bool process_socket(const connection_ptr& conn, const std::shared_ptr<handlers>& h);
  /// Takes up to `budget` descriptors; false if the connection failed.
  bool drain_ring(const connection_ptr& conn, const std::shared_ptr<handlers>& h,
                  uint32_t budget, uint32_t& taken);
  void deliver(const connection_ptr& conn, const std::shared_ptr<handlers>& h,
               kj::Array<capnp::word> bytes);
  void fail(const connection_ptr& conn, const std::shared_ptr<handlers>& h, const caf::error& err);
  bool poll(const connection_ptr& conn);
  bool on_loop_thread() const;
  void drop(const connection_ptr& conn);
  void accept_pending(int listener, const std::shared_ptr<handlers>& h);
  caf::error listen_on(unique_fd fd, const std::string& path, frame_handler on_frame,
                       error_handler on_error);
  void sweep();
  void start_flushing(const connection_ptr& conn);
  caf::error send_hello(connection& conn, bool shared_memory);
  caf::error server_handshake(const connection_ptr& conn, datagram& hello);
  caf::error setup_shared_memory(connection& conn, uint32_t peer_slots,
                                 std::vector<unique_fd>& fds);
  bool peer_allowed(uid_t uid) const;
  uint64_t next_connection_id();

  endpoint_options options_;
  copy_counters counters_;
  mutable std::mutex pools_mutex_;
  std::vector<std::weak_ptr<shm::pool>> pools_; // for stats
  std::atomic<uint64_t> rejected_{0};
  std::shared_ptr<shm::memory_budget> budget_; // null: no node-wide limit
  std::atomic<uint64_t> misbehaving_{0};
  std::atomic<uint64_t> timed_out_{0};
  std::atomic<uint64_t> next_id_{1};
  std::unique_ptr<loop> loop_;
  mutable std::mutex connections_mutex_;
  std::map<uint64_t, connection_ptr> connections_;
};

} // namespace modelreg::transport

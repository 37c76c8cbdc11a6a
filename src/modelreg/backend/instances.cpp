#include "modelreg/backend/instances.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "modelreg/log.hpp"
#include "modelreg/messages/error.hpp"
#include "modelreg/transport/rpc.hpp"

extern char** environ;

// The zygote's control channel is one stream socket (its stdin and stdout),
// one line per message:
//
//   zygote -> node   ready <pid> <memory_bytes> <description>
//                    error <text>                      (then it exits)
//   node -> zygote   fork <n>
//   instance -> node instance <n> <pid>               (it listens on <dir>/instance-<n>.sock)
//                    failed <n> <text>
//
// The node ends the zygote by closing the channel: the zygote kills its
// instances, removes their sockets and exits. That end-of-file, not
// PR_SET_PDEATHSIG, ties the zygote to the node: the death signal follows
// the parent *thread*, and the node spawns from a loader thread that ends
// right after the load. Instances do use PR_SET_PDEATHSIG: their parent,
// the zygote, is single-threaded.

namespace modelreg {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

namespace {

constexpr auto zygote_ready_timeout = 300s;
constexpr auto instance_ready_timeout = 120s;
/// How long a call to an instance may take before the node gives up on it.
constexpr auto instance_call_timeout = std::chrono::milliseconds{10min};
/// How long an instance waits for the node to connect.
constexpr auto instance_connect_timeout = 60s;

// -- lines over a stream socket ---------------------------------------------

bool write_line(int fd, const std::string& line) {
  auto s = line + "\n";
  size_t off = 0;
  while (off < s.size()) {
    auto n = ::send(fd, s.data() + off, s.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

/// Reads lines from `fd`, keeping what follows the first newline.
class line_reader {
public:
  explicit line_reader(int fd) : fd_(fd) {}

  /// The next line; nothing on end-of-file, an error or the deadline.
  std::optional<std::string> next(std::chrono::steady_clock::time_point deadline) {
    for (;;) {
      if (auto nl = buffer_.find('\n'); nl != std::string::npos) {
        auto line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        return line;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return std::nullopt;
      pollfd p{fd_, POLLIN, 0};
      auto r = ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
      if (r < 0 && errno != EINTR)
        return std::nullopt;
      if (r <= 0)
        continue;
      char buf[512];
      auto n = ::read(fd_, buf, sizeof(buf));
      if (n < 0 && errno == EINTR)
        continue;
      if (n <= 0)
        return std::nullopt;
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

private:
  int fd_;
  std::string buffer_;
};

/// The words of `line` up to `count - 1`, then the rest as the last one.
std::vector<std::string> split(const std::string& line, size_t count) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (out.size() + 1 < count) {
    auto sp = line.find(' ', pos);
    if (sp == std::string::npos)
      break;
    out.push_back(line.substr(pos, sp - pos));
    pos = sp + 1;
  }
  out.push_back(line.substr(pos));
  return out;
}

std::string socket_path(const std::string& dir, uint64_t n) {
  return dir + "/instance-" + std::to_string(n) + ".sock";
}

// -- instances loaded in this process ---------------------------------------

/// Instances that are separate loads (a backend that cannot be forked).
class loaded_set final : public instance_set {
public:
  loaded_set(std::vector<model_ptr> first, backend_factory factory, model_spec spec)
    : initial_(std::move(first)), factory_(std::move(factory)), spec_(std::move(spec)) {
    for (const auto& m : initial_)
      bytes_ += m->memory_bytes();
    describe_ = initial_.size() == 1
                  ? initial_.front()->describe()
                  : initial_.front()->describe() + " x" + std::to_string(initial_.size()) +
                      " (loaded " + std::to_string(initial_.size()) + " times)";
    caps_ = initial_.front()->capabilities();
  }

  std::vector<model_ptr> take_initial() override {
    std::lock_guard guard{mutex_};
    return std::exchange(initial_, {});
  }

  caf::expected<model_ptr> make_instance() override {
    if (!factory_)
      return make_error(errc::unsupported, describe_ + " has one instance");
    auto m = factory_(spec_);
    if (m && *m)
      bytes_ += (*m)->memory_bytes();
    return m;
  }

  size_t limit() const override { return spec_.instance_limit(); }
  bool forked() const override { return false; }
  uint64_t memory_bytes() const override { return bytes_.load(); }
  model_capabilities capabilities() const override { return caps_; }
  std::string describe() const override { return describe_; }

private:
  std::mutex mutex_;
  std::vector<model_ptr> initial_;
  backend_factory factory_;
  model_spec spec_;
  std::atomic<uint64_t> bytes_{0};
  std::string describe_;
  model_capabilities caps_;
};

// -- the zygote, seen from the node -------------------------------------------

/// The zygote process and the channel to it. Forks are asked one at a
/// time. Destroying it ends the zygote and with it every instance.
class zygote_process {
public:
  static caf::expected<std::shared_ptr<zygote_process>> start(const model_spec& spec) {
    auto z = std::shared_ptr<zygote_process>(new zygote_process);
    std::error_code ec;
    auto base = fs::temp_directory_path(ec);
    std::string templ = (ec ? std::string{"/tmp"} : base.string()) + "/modelreg-instances-XXXXXX";
    if (::mkdtemp(templ.data()) == nullptr)
      return make_error(errc::load_failed, "cannot create a folder for instance sockets: " +
                                             std::string{std::strerror(errno)});
    z->dir_ = templ;
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      return make_error(errc::load_failed,
                        "cannot open a channel to the zygote: " + std::string{std::strerror(errno)});
    z->ctl_ = sv[0];
    nlohmann::json j = {{"backend", spec.backend}, {"params", spec.params}};
    auto exe = zygote_executable();
    std::vector<std::string> argv{exe, "--spec", j.dump(), "--dir", z->dir_};
    std::vector<char*> args;
    for (auto& a : argv)
      args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, sv[1], 0);
    posix_spawn_file_actions_adddup2(&actions, sv[1], 1);
    auto rc = ::posix_spawn(&z->pid_, exe.c_str(), &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(sv[1]);
    if (rc != 0) {
      z->pid_ = -1;
      return make_error(errc::load_failed, "cannot start the zygote '" + exe +
                                             "': " + std::strerror(rc) +
                                             " (set MODELREG_ZYGOTE to modelreg-zygote's path)");
    }
    z->reader_ = std::make_unique<line_reader>(z->ctl_);
    auto line = z->reader_->next(std::chrono::steady_clock::now() + zygote_ready_timeout);
    if (!line)
      return make_error(errc::load_failed, "the zygote (" + exe + ") exited or did not answer "
                                           "while loading " + spec.backend);
    auto words = split(*line, 4);
    if (words[0] == "error")
      return make_error(errc::load_failed, line->substr(std::min<size_t>(line->size(), 6)));
    if (words.size() != 4 || words[0] != "ready")
      return make_error(errc::load_failed, "the zygote answered '" + *line + "'");
    z->memory_bytes_ = std::strtoull(words[2].c_str(), nullptr, 10);
    z->describe_ = words[3];
    // "ready PID BYTES streaming DESCRIPTION" from a model that streams.
    if (z->describe_.rfind("streaming ", 0) == 0) {
      z->streaming_ = true;
      z->describe_ = z->describe_.substr(10);
    }
    auto ep = transport::endpoint::try_start();
    if (!ep)
      return ep.error();
    z->endpoint_ = std::move(*ep);
    return z;
  }

  ~zygote_process() {
    if (endpoint_)
      endpoint_->stop();
    if (ctl_ >= 0)
      ::close(ctl_); // the zygote reads end-of-file: it ends its instances and exits
    if (pid_ > 0) {
      auto deadline = std::chrono::steady_clock::now() + 5s;
      int status = 0;
      while (::waitpid(pid_, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &status, 0);
          break;
        }
        ::usleep(2000);
      }
    }
    if (!dir_.empty()) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }

  zygote_process(const zygote_process&) = delete;
  zygote_process& operator=(const zygote_process&) = delete;

  /// Forks one instance and connects to it.
  struct forked {
    int64_t pid = 0;
    std::shared_ptr<transport::rpc_client> client;
  };
  caf::expected<forked> fork_instance() {
    std::lock_guard guard{mutex_};
    auto n = next_++;
    if (!write_line(ctl_, "fork " + std::to_string(n)))
      return make_error(errc::model_crashed, "the zygote of " + describe_ + " is gone");
    auto line = reader_->next(std::chrono::steady_clock::now() + instance_ready_timeout);
    if (!line)
      return make_error(errc::model_crashed,
                        "the zygote of " + describe_ + " exited or did not answer a fork");
    auto words = split(*line, 3);
    if (words[0] == "failed")
      return make_error(errc::load_failed, "an instance of " + describe_ + " did not start: " +
                                             (words.size() > 2 ? words[2] : *line));
    if (words.size() != 3 || words[0] != "instance" || words[1] != std::to_string(n))
      return make_error(errc::load_failed, "the zygote answered '" + *line + "'");
    forked f;
    f.pid = std::strtoll(words[2].c_str(), nullptr, 10);
    auto client = transport::rpc_client::connect(endpoint_, socket_path(dir_, n));
    if (!client) {
      ::kill(static_cast<pid_t>(f.pid), SIGKILL);
      return make_error(errc::load_failed, "cannot connect to instance process " +
                                             std::to_string(f.pid) + ": " +
                                             describe(client.error()));
    }
    f.client = std::move(*client);
    return f;
  }

  int64_t pid() const { return pid_; }
  uint64_t memory_bytes() const { return memory_bytes_; }
  const std::string& description() const { return describe_; }
  bool streaming() const { return streaming_; }

private:
  zygote_process() = default;

  std::mutex mutex_; // one fork at a time
  int ctl_ = -1;
  pid_t pid_ = -1;
  std::string dir_;
  std::unique_ptr<line_reader> reader_;
  std::shared_ptr<transport::endpoint> endpoint_;
  uint64_t next_ = 1;
  uint64_t memory_bytes_ = 0;
  std::string describe_;
  bool streaming_ = false;
};

/// One forked instance, seen from the node: requests go to its process.
class process_instance final : public model {
public:
  process_instance(std::shared_ptr<zygote_process> zygote, zygote_process::forked f)
    : zygote_(std::move(zygote)), pid_(f.pid), client_(std::move(f.client)) {
    caps_.blocking = true;
    caps_.streaming = zygote_->streaming();
  }

  ~process_instance() override {
    // The instance exits when its connection closes.
    client_->close();
  }

  caf::expected<tensor_map> infer(const tensor_map& inputs, tensor_allocator&) override {
    return transport::outputs_of(call([&](transport::outgoing_frame& f, wire::Request::Builder r) {
      return transport::put_infer(f, r, std::string{}, 0, inputs);
    }));
  }

  caf::expected<std::unique_ptr<model_stream>> open_stream() override;

  /// Sends one request to the instance process and waits for its answer;
  /// a dead process is `model_crashed`.
  caf::expected<transport::frame_ptr>
  call(const std::function<caf::error(transport::outgoing_frame&, wire::Request::Builder)>& fill) {
    if (!alive_.load())
      return gone("");
    auto answer = client_->call(fill, instance_call_timeout);
    if (!answer && (is(answer.error(), errc::peer_disconnected) ||
                    is(answer.error(), errc::shutting_down))) {
      alive_.store(false);
      return gone(modelreg::describe(answer.error()));
    }
    return answer;
  }

  uint64_t memory_bytes() const override { return memory_of_process(pid_).private_bytes; }
  model_capabilities capabilities() const override { return caps_; }
  std::string describe() const override {
    return zygote_->description() + " [instance process " + std::to_string(pid_) + "]";
  }

  int64_t pid() const { return pid_; }
  bool alive() const { return alive_.load() && client_->connection()->is_open(); }

private:
  caf::error gone(const std::string& why) const {
    return make_error(errc::model_crashed, "instance process " + std::to_string(pid_) + " of " +
                                             zygote_->description() + " died" +
                                             (why.empty() ? "" : " (" + why + ")") +
                                             "; a new one replaces it");
  }

  std::shared_ptr<zygote_process> zygote_;
  int64_t pid_;
  std::shared_ptr<transport::rpc_client> client_;
  std::atomic<bool> alive_{true};
  model_capabilities caps_;
};

/// A stream on an instance process: its one open utterance there.
class process_stream final : public model_stream {
public:
  explicit process_stream(process_instance& instance) : instance_(instance) {}
  ~process_stream() override {
    if (open_)
      (void) instance_.call([](transport::outgoing_frame&, wire::Request::Builder r) {
        r.setCancelSession(1);
        return caf::error{};
      });
  }

  caf::expected<tensor_map> push(const tensor_map& chunk, tensor_allocator&) override {
    return transport::outputs_of(
      instance_.call([&](transport::outgoing_frame& f, wire::Request::Builder r) {
        auto p = r.initPush();
        p.setSession(1);
        return f.put_tensors(p.initInputs(static_cast<uint32_t>(chunk.size())), chunk);
      }));
  }

  caf::expected<tensor_map> finish(tensor_allocator&) override {
    open_ = false;
    return transport::outputs_of(
      instance_.call([](transport::outgoing_frame&, wire::Request::Builder r) {
        r.setFinishSession(1);
        return caf::error{};
      }));
  }

private:
  process_instance& instance_;
  bool open_ = true;
};

caf::expected<std::unique_ptr<model_stream>> process_instance::open_stream() {
  auto answer = call([](transport::outgoing_frame&, wire::Request::Builder r) {
    r.initOpenSession();
    return caf::error{};
  });
  if (!answer)
    return answer.error();
  auto resp = (*answer)->root().getResponse();
  if (resp.isError())
    return transport::error_of(resp.getError());
  return std::unique_ptr<model_stream>{std::make_unique<process_stream>(*this)};
}

/// Instances forked from one copy the zygote loaded.
class forked_set final : public instance_set {
public:
  forked_set(std::shared_ptr<zygote_process> zygote, model_spec spec)
    : zygote_(std::move(zygote)), spec_(std::move(spec)) {}

  /// Forks the initial instances; the memory counted is the loaded copy
  /// once plus each instance's private memory after its warm-up.
  caf::error start() {
    for (uint32_t i = 0; i < spec_.initial_instances(); ++i) {
      auto m = make_instance();
      if (!m)
        return m.error();
      initial_.push_back(std::move(*m));
    }
    bytes_ = zygote_->memory_bytes();
    for (const auto& m : initial_)
      bytes_ += m->memory_bytes();
    return {};
  }

  std::vector<model_ptr> take_initial() override {
    std::lock_guard guard{mutex_};
    return std::exchange(initial_, {});
  }

  caf::expected<model_ptr> make_instance() override {
    auto f = zygote_->fork_instance();
    if (!f)
      return f.error();
    auto m = std::make_shared<process_instance>(zygote_, std::move(*f));
    std::lock_guard guard{mutex_};
    std::erase_if(all_, [](const std::weak_ptr<process_instance>& w) {
      auto p = w.lock();
      return !p || !p->alive();
    });
    all_.push_back(m);
    return model_ptr{m};
  }

  size_t limit() const override { return spec_.instance_limit(); }
  bool forked() const override { return true; }
  bool serving(const model& instance) const override {
    const auto* p = dynamic_cast<const process_instance*>(&instance);
    return p == nullptr || p->alive();
  }
  int64_t zygote_pid() const override { return zygote_->pid(); }

  std::vector<instance_report> processes() const override {
    std::vector<instance_report> out;
    std::lock_guard guard{mutex_};
    for (const auto& w : all_)
      if (auto p = w.lock(); p && p->alive())
        out.push_back({p->pid(), memory_of_process(p->pid()).private_bytes});
    return out;
  }

  uint64_t memory_bytes() const override { return bytes_; }
  model_capabilities capabilities() const override {
    model_capabilities caps;
    caps.blocking = true;
    caps.streaming = zygote_->streaming();
    return caps;
  }
  std::string describe() const override {
    return zygote_->description() + " x" + std::to_string(spec_.initial_instances()) +
           " (forked)";
  }

private:
  std::shared_ptr<zygote_process> zygote_;
  model_spec spec_;
  mutable std::mutex mutex_;
  std::vector<model_ptr> initial_;
  std::vector<std::weak_ptr<process_instance>> all_;
  uint64_t bytes_ = 0;
};

// -- the zygote process and its instances -------------------------------------

/// Calls the model once, turning exceptions into errors.
caf::expected<tensor_map> run_guarded(model& m, const tensor_map& in, tensor_allocator& out) {
  try {
    return m.infer(in, out);
  } catch (const std::exception& e) {
    return make_error(errc::infer_failed, m.describe() + " threw: " + e.what());
  } catch (...) {
    return make_error(errc::infer_failed, m.describe() + " threw a non-standard exception");
  }
}

/// A session request on an instance process (it has one stream at a time;
/// the node keeps the sessions).
void serve_stream_request(model& m, std::unique_ptr<model_stream>& stream,
                          const transport::connection_ptr& conn, transport::frame_ptr& frame) {
  auto request = frame->root().getRequest();
  auto id = request.getId();
  auto none = [&] {
    transport::respond_error(conn, id, make_error(errc::invalid_argument, "no open stream"));
  };
  switch (request.which()) {
    case wire::Request::OPEN_SESSION: {
      stream.reset();
      auto s = m.open_stream();
      if (!s)
        return transport::respond_error(conn, id, s.error());
      stream = std::move(*s);
      return transport::respond_outputs(conn, id, tensor_map{});
    }
    case wire::Request::PUSH: {
      if (!stream)
        return none();
      auto chunk = frame->tensors(request.getPush().getInputs());
      if (!chunk)
        return transport::respond_error(conn, id, chunk.error());
      caf::expected<tensor_map> out = make_error(errc::infer_failed, "not run");
      try {
        out = stream->push(*chunk, conn->allocator());
      } catch (const std::exception& e) {
        out = make_error(errc::infer_failed, m.describe() + " threw: " + e.what());
      }
      chunk->clear();
      frame.reset();
      if (out)
        return transport::respond_outputs(conn, id, *out);
      return transport::respond_error(conn, id, out.error());
    }
    case wire::Request::FINISH_SESSION: {
      if (!stream)
        return none();
      auto out = stream->finish(conn->allocator());
      stream.reset();
      if (out)
        return transport::respond_outputs(conn, id, *out);
      return transport::respond_error(conn, id, out.error());
    }
    case wire::Request::CANCEL_SESSION:
      stream.reset();
      return transport::respond_outputs(conn, id, tensor_map{});
    default:
      return transport::respond_error(
        conn, id, make_error(errc::unsupported, "an instance process answers Infer and sessions only"));
  }
}

/// An instance process: serves Infer requests of the one node that
/// connects, one at a time, until that connection closes.
int serve_instance(model& m, uint64_t n, const std::string& path, int ctl) {
  auto ep = transport::endpoint::try_start();
  if (!ep) {
    write_line(ctl, "failed " + std::to_string(n) + " " + describe(ep.error()));
    return 1;
  }
  std::mutex mutex;
  std::condition_variable cv;
  std::deque<std::pair<transport::connection_ptr, transport::frame_ptr>> work;
  transport::connection_ptr node;
  bool node_gone = false;
  auto err = (*ep)->listen(
    path,
    [&](const transport::connection_ptr& conn, transport::frame_ptr f) {
      std::lock_guard guard{mutex};
      if (!node)
        node = conn;
      if (conn != node) {
        conn->close(); // one node per instance
        return;
      }
      work.emplace_back(conn, std::move(f));
      cv.notify_one();
    },
    [&](const transport::connection_ptr& conn, const caf::error&) {
      std::lock_guard guard{mutex};
      if (node == nullptr || conn == node) {
        node_gone = true;
        cv.notify_one();
      }
    });
  if (err) {
    write_line(ctl, "failed " + std::to_string(n) + " " + describe(err));
    (*ep)->stop();
    return 1;
  }
  write_line(ctl, "instance " + std::to_string(n) + " " + std::to_string(::getpid()));
  // The channel is the zygote's: this process is done with it.
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  ::dup2(null, 1);
  ::close(null);
  std::unique_ptr<model_stream> stream; // the one open utterance, if any
  auto connect_deadline = std::chrono::steady_clock::now() + instance_connect_timeout;
  for (;;) {
    std::unique_lock lock{mutex};
    cv.wait_for(lock, 1s, [&] { return node_gone || !work.empty(); });
    if (node_gone)
      break;
    if (work.empty()) {
      if (!node && std::chrono::steady_clock::now() > connect_deadline)
        break; // the node never came
      continue;
    }
    auto [conn, frame] = std::move(work.front());
    work.pop_front();
    lock.unlock();
    auto root = frame->root();
    if (!root.isRequest())
      continue;
    auto request = root.getRequest();
    auto id = request.getId();
    if (!request.isInfer()) {
      serve_stream_request(m, stream, conn, frame);
      continue;
    }
    auto inputs = frame->tensors(request.getInfer().getInputs());
    if (!inputs) {
      transport::respond_error(conn, id, inputs.error());
      continue;
    }
    auto out = run_guarded(m, *inputs, conn->allocator());
    inputs->clear();
    frame.reset(); // the node's input memory goes back before the answer
    if (out)
      transport::respond_outputs(conn, id, *out);
    else
      transport::respond_error(conn, id, out.error());
  }
  (*ep)->stop();
  return 0;
}

struct zygote_args {
  model_spec spec;
  std::string dir;
};

std::optional<zygote_args> parse_zygote_args(int argc, char** argv, std::string& why) {
  zygote_args a;
  bool have_spec = false;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") {
      why = "help";
      return std::nullopt;
    }
    if ((flag != "--spec" && flag != "--dir") || i + 1 >= argc) {
      why = "unknown or incomplete argument '" + flag + "'";
      return std::nullopt;
    }
    std::string value = argv[++i];
    if (flag == "--dir") {
      a.dir = value;
      continue;
    }
    auto j = nlohmann::json::parse(value, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("backend") || !j["backend"].is_string()) {
      why = "--spec must be a JSON object with a \"backend\"";
      return std::nullopt;
    }
    a.spec.backend = j["backend"].get<std::string>();
    if (j.contains("params") && j["params"].is_object())
      for (auto& [k, v] : j["params"].items())
        if (v.is_string())
          a.spec.params[k] = v.get<std::string>();
    have_spec = true;
  }
  if (!have_spec || a.dir.empty()) {
    why = "--spec and --dir are both required";
    return std::nullopt;
  }
  return a;
}

/// Reaps instances that exited; true if `pid` is still ours.
void reap(std::set<pid_t>& children) {
  for (;;) {
    int status = 0;
    auto pid = ::waitpid(-1, &status, WNOHANG);
    if (pid <= 0)
      return;
    children.erase(pid);
  }
}

} // namespace

caf::expected<tensor_map> instance_set::infer(const tensor_map&, tensor_allocator&) {
  return make_error(errc::unsupported, describe() + ": requests go to its instances");
}

process_memory memory_of_process(int64_t pid) {
  process_memory out;
  std::ifstream in{"/proc/" + std::to_string(pid) + "/smaps_rollup"};
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream words{line};
    std::string key;
    uint64_t kib = 0;
    words >> key >> kib;
    if (key == "Private_Clean:" || key == "Private_Dirty:")
      out.private_bytes += kib * 1024;
    else if (key == "Pss:")
      out.pss_bytes = kib * 1024;
  }
  return out;
}

std::string zygote_executable() {
  if (const char* env = std::getenv("MODELREG_ZYGOTE"); env != nullptr && *env != '\0')
    return env;
#ifdef MODELREG_ZYGOTE_INSTALLED
  if (::access(MODELREG_ZYGOTE_INSTALLED, X_OK) == 0)
    return MODELREG_ZYGOTE_INSTALLED;
#endif
#ifdef MODELREG_ZYGOTE_BUILT
  return MODELREG_ZYGOTE_BUILT;
#else
  return "modelreg-zygote";
#endif
}

instance_set_ptr single_instance(model_ptr m) {
  return std::make_shared<loaded_set>(std::vector<model_ptr>{std::move(m)}, backend_factory{},
                                      model_spec{});
}

caf::expected<model_ptr> load_instances(const backend_factory& factory, const backend_info& info,
                                        const model_spec& spec) {
  auto one = spec;
  one.instances = 1;
  one.max_instances = 0;
  if (info.forkable) {
    auto zygote = zygote_process::start(one);
    if (!zygote)
      return zygote.error();
    auto set = std::make_shared<forked_set>(std::move(*zygote), spec);
    if (auto err = set->start())
      return err;
    return model_ptr{set};
  }
  std::vector<model_ptr> first;
  for (uint32_t i = 0; i < spec.initial_instances(); ++i) {
    auto m = factory(one);
    if (!m)
      return m.error();
    if (!*m)
      return make_error(errc::load_failed, "the backend returned no model");
    if ((*m)->capabilities().thread_safe)
      return *m; // thread-safe: one object serves every lane
    first.push_back(std::move(*m));
  }
  return model_ptr{std::make_shared<loaded_set>(std::move(first), factory, one)};
}

int zygote_main(int argc, char** argv) {
  std::string why;
  auto args = parse_zygote_args(argc, argv, why);
  if (!args) {
    if (why == "help") {
      std::printf("usage: modelreg-zygote --spec JSON --dir DIR\n\n"
                  "Started by a modelreg node for a model with several instances: loads the\n"
                  "model once, then forks one instance process per 'fork N' line on stdin.\n"
                  "Not meant to be run by hand (docs/instances.md).\n");
      return 0;
    }
    std::fprintf(stderr, "modelreg-zygote: %s (try --help)\n", why.c_str());
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  auto backends = backend_registry::with_builtins();
  const auto* info = backends->info(args->spec.backend);
  if (info == nullptr || !info->forkable) {
    write_line(1, "error backend '" + args->spec.backend +
                    "' is not one modelreg-zygote can fork (built-in forkable backends only)");
    return 1;
  }
  auto loader = backends->loader_for(args->spec);
  if (!loader) {
    write_line(1, "error " + describe(loader.error()));
    return 1;
  }
  caf::expected<model_ptr> loaded = make_error(errc::load_failed, "not loaded");
  try {
    loaded = (*loader)();
  } catch (const std::exception& e) {
    loaded = make_error(errc::load_failed, std::string{"the loader threw: "} + e.what());
  }
  if (!loaded || !*loaded) {
    write_line(1, "error " + (loaded ? std::string{"the backend returned no model"}
                                     : describe(loaded.error())));
    return 1;
  }
  auto m = std::move(*loaded);
  m->warm_up();
  std::string description = m->describe();
  std::replace(description.begin(), description.end(), '\n', ' ');
  write_line(1, "ready " + std::to_string(::getpid()) + " " + std::to_string(m->memory_bytes()) +
                  (m->capabilities().streaming ? " streaming " : " ") + description);
  auto self = ::getpid();
  std::set<pid_t> children;
  line_reader lines{0};
  for (;;) {
    auto line = lines.next(std::chrono::steady_clock::now() + 1s);
    reap(children);
    if (!line) {
      // Nothing for a second, or the node closed the channel (or died).
      pollfd p{0, POLLIN, 0};
      char c;
      if (::poll(&p, 1, 0) > 0 && ::recv(0, &c, 1, MSG_PEEK) <= 0)
        break;
      continue;
    }
    auto words = split(*line, 2);
    if (words.size() != 2 || words[0] != "fork") {
      write_line(1, "failed 0 unknown command '" + *line + "'");
      continue;
    }
    auto n = std::strtoull(words[1].c_str(), nullptr, 10);
    auto pid = ::fork();
    if (pid < 0) {
      write_line(1, "failed " + words[1] + " fork: " + std::strerror(errno));
      continue;
    }
    if (pid == 0) {
      // The instance: dies with the zygote (which is single-threaded, so
      // the death signal follows the right thread); warm, then serve.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != self)
        ::_exit(1);
      // Not close(0): the endpoint's next descriptor would take its number.
      int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
      ::dup2(null, 0);
      ::close(null);
      m->warm_up();
      auto rc = serve_instance(*m, n, socket_path(args->dir, n), 1);
      ::_exit(rc);
    }
    children.insert(pid);
  }
  // The node is gone or done: so are the instances.
  for (auto pid : children)
    ::kill(pid, SIGKILL);
  for (auto pid : children)
    ::waitpid(pid, nullptr, 0);
  std::error_code ec;
  fs::remove_all(args->dir, ec);
  return 0;
}

} // namespace modelreg

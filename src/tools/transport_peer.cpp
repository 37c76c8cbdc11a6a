#include "tools/transport_peer.hpp"

#include <cstring>
#include <atomic>
#include <iostream>
#include <mutex>
#include <thread>
#include <vector>

#include "modelreg/messages/error.hpp"
#include "modelreg/transport/rpc.hpp"

namespace modelreg::tools {

using namespace modelreg::transport;

uint64_t checksum(const std::byte* data, size_t n) {
  constexpr uint64_t prime = 0x100000001b3ULL;
  uint64_t h = 0xcbf29ce484222325ULL;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    std::memcpy(&w, data + i, 8);
    h = (h ^ w) * prime;
  }
  for (; i < n; ++i)
    h = (h ^ static_cast<uint64_t>(data[i])) * prime;
  return h;
}

void answer_echo(endpoint& ep, const connection_ptr& conn, const frame_ptr& frame) {
  auto request = frame->root().getRequest();
  auto id = request.getId();
  auto inputs = frame->tensors(request.getEcho());
  if (!inputs)
    return respond_error(conn, id, inputs.error());
  bool verify = inputs->count("__verify") > 0;
  tensor_map outputs;
  std::vector<uint64_t> sums;
  bool in_mapping = true;
  for (const auto& [name, t] : *inputs) {
    if (name.rfind("__", 0) == 0)
      continue;
    if (verify) {
      sums.push_back(checksum(t.data(), t.nbytes()));
      in_mapping = in_mapping && frame->in_readonly_mapping(t);
    }
    auto out = conn->shared_memory() ? conn->allocate_tensor(t.type(), t.shape())
                                     : tensor::allocate(t.type(), t.shape());
    if (!out)
      return respond_error(conn, id, out.error());
    outputs.emplace(name, std::move(*out));
  }
  if (verify) {
    // Written straight into our shared memory, so reporting copies none.
    auto put = [&](const std::string& name, dtype type, const void* data, size_t count) {
      auto t = conn->allocate_tensor(type, {static_cast<int64_t>(count)});
      if (t) {
        std::memcpy(t->mutable_data(), data, count * itemsize(type));
        outputs.emplace(name, std::move(*t));
      }
    };
    uint8_t mapped = in_mapping ? 1 : 0;
    uint64_t copied = ep.counters().copied_bytes.load();
    put("__checksum", dtype::u64, sums.data(), sums.size());
    put("__in_mapping", dtype::u8, &mapped, 1);
    put("__copied", dtype::u64, &copied, 1);
  }
  respond_outputs(conn, id, outputs);
}

int run_echo_server(const std::string& path, bool shared_memory, uint64_t quota_bytes) {
  endpoint_options opts;
  opts.shared_memory = shared_memory;
  if (quota_bytes > 0)
    opts.peer_quota.max_bytes = quota_bytes;
  auto ep = endpoint::start(opts);
  auto* raw = ep.get();
  auto err = ep->listen(path, [raw](const connection_ptr& conn, frame_ptr frame) {
    auto root = frame->root();
    if (root.isRequest() && root.getRequest().isEcho())
      answer_echo(*raw, conn, frame);
    else if (root.isRequest())
      respond_error(conn, root.getRequest().getId(),
                 make_error(errc::unsupported, "this peer only answers echo"));
  });
  if (err) {
    std::cerr << "echo server: " << describe(err) << std::endl;
    return 1;
  }
  std::cout << "ready" << std::endl;
  while (std::cin.get() != EOF) {
  }
  ep->stop();
  return 0;
}

int run_holding_client(const std::string& path, size_t count, size_t bytes) {
  auto ep = endpoint::start();
  auto client = rpc_client::connect(ep, path);
  if (!client) {
    std::cerr << "hold: " << describe(client.error()) << std::endl;
    return 1;
  }
  std::vector<frame_ptr> held;
  for (size_t i = 0; i < count; ++i) {
    auto reply = (*client)->call([&](outgoing_frame& f, wire::Request::Builder req) {
      auto t = (*client)->connection()->allocate_tensor(dtype::u8, {static_cast<int64_t>(bytes)});
      if (!t)
        return t.error();
      return f.put_tensors(req.initEcho(1), {{"x", *t}});
    });
    if (!reply) {
      std::cerr << "hold: " << describe(reply.error()) << std::endl;
      return 1;
    }
    held.push_back(*reply);
  }
  std::cout << "holding " << held.size() << std::endl;
  // Keep a stream of requests going until killed, so a kill lands mid-stream.
  std::atomic<bool> stop{false};
  std::thread stream{[&] {
    while (!stop.load()) {
      auto t = (*client)->connection()->allocate_tensor(dtype::u8, {static_cast<int64_t>(bytes)});
      if (!t)
        break;
      auto reply = (*client)->call([&](outgoing_frame& f, wire::Request::Builder req) {
        return f.put_tensors(req.initEcho(1), {{"x", *t}});
      });
      if (!reply)
        break;
    }
  }};
  while (std::cin.get() != EOF) {
  }
  stop = true;
  stream.join();
  ep->stop();
  return 0;
}

int run_flood_client(const std::string& path, size_t count, size_t bytes) {
  auto ep = endpoint::start();
  std::mutex mutex;
  std::vector<frame_ptr> held;
  auto conn = ep->connect(path, [&](const connection_ptr&, frame_ptr f) {
    std::lock_guard guard{mutex};
    held.push_back(std::move(f));
  });
  if (!conn) {
    std::cerr << "flood: " << describe(conn.error()) << std::endl;
    return 1;
  }
  auto t = (*conn)->allocate_tensor(dtype::u8, {static_cast<int64_t>(bytes)});
  if (!t) {
    std::cerr << "flood: " << describe(t.error()) << std::endl;
    return 1;
  }
  size_t sent = 0;
  for (; sent < count; ++sent) {
    auto frame = (*conn)->new_frame();
    auto req = frame.root().initRequest();
    req.setId(sent + 1);
    if (frame.put_tensors(req.initEcho(1), {{"x", *t}}) || (*conn)->send(frame))
      break;
  }
  std::cout << "sent " << sent << std::endl;
  while (std::cin.get() != EOF) {
  }
  ep->stop();
  return 0;
}

} // namespace modelreg::tools

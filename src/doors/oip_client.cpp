#include "doors/oip_client.hpp"

#include <cstring>

#include <grpcpp/grpcpp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "modelreg/messages/error.hpp"
#include "open_inference_grpc.grpc.pb.h"

namespace modelreg::doors {

namespace {

std::pair<std::string, std::string> split_address(const std::string& address) {
  auto colon = address.rfind(':');
  auto host = address.substr(0, colon);
  if (host.size() > 1 && host.front() == '[')
    host = host.substr(1, host.size() - 2);
  return {host, address.substr(colon + 1)};
}

/// HTTP/1.1 keep-alive over one socket, binary tensor data both ways.
class http_client final : public oip_client {
public:
  explicit http_client(int fd) : fd_(fd) {}
  ~http_client() override { ::close(fd_); }

  caf::expected<std::string> infer_f32(const std::string& model, const std::string& input,
                                       const std::vector<float>& values) override {
    auto bytes = values.size() * sizeof(float);
    std::string header = R"({"inputs":[{"name":")" + input + R"(","datatype":"FP32","shape":[)" +
                         std::to_string(values.size()) +
                         R"(],"parameters":{"binary_data_size":)" + std::to_string(bytes) +
                         R"(}}],"parameters":{"binary_data_output":true}})";
    std::string request = "POST /v2/models/" + model + "/infer HTTP/1.1\r\nHost: modelreg\r\n" +
                          "Inference-Header-Content-Length: " + std::to_string(header.size()) +
                          "\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
                          std::to_string(header.size() + bytes) + "\r\n\r\n" + header;
    request.append(reinterpret_cast<const char*>(values.data()), bytes);
    if (!send_all(request))
      return make_error(errc::peer_disconnected, "the HTTP connection closed");
    // Headers, then Content-Length bytes.
    std::string head;
    size_t end;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos)
      if (!fill())
        return make_error(errc::peer_disconnected, "the HTTP connection closed");
    head = buffer_.substr(0, end);
    buffer_.erase(0, end + 4);
    auto field = [&](const char* name) -> std::string {
      auto lower = head;
      for (auto& c : lower)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      auto at = lower.find(std::string{"\r\n"} + name + ":");
      if (at == std::string::npos)
        return {};
      auto from = at + 3 + std::strlen(name);
      auto to = head.find("\r\n", from);
      auto v = head.substr(from, to - from);
      while (!v.empty() && v.front() == ' ')
        v.erase(0, 1);
      return v;
    };
    auto length = std::stoull(field("content-length").empty() ? "0" : field("content-length"));
    while (buffer_.size() < length)
      if (!fill())
        return make_error(errc::peer_disconnected, "the HTTP connection closed");
    auto body = buffer_.substr(0, length);
    buffer_.erase(0, length);
    auto status = head.substr(9, 3);
    if (status != "200")
      return make_error(errc::infer_failed, "HTTP " + status + ": " + body);
    auto json_length = field("inference-header-content-length");
    if (json_length.empty())
      return make_error(errc::infer_failed, "no binary output: " + body.substr(0, 200));
    return body.substr(std::stoull(json_length));
  }

private:
  bool send_all(const std::string& s) {
    size_t done = 0;
    while (done < s.size()) {
      auto n = ::send(fd_, s.data() + done, s.size() - done, MSG_NOSIGNAL);
      if (n <= 0)
        return false;
      done += static_cast<size_t>(n);
    }
    return true;
  }
  bool fill() {
    char chunk[65536];
    auto n = ::recv(fd_, chunk, sizeof chunk, 0);
    if (n <= 0)
      return false;
    buffer_.append(chunk, static_cast<size_t>(n));
    return true;
  }

  int fd_;
  std::string buffer_;
};

class grpc_client final : public oip_client {
public:
  explicit grpc_client(const std::string& address) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1); // a connection of its own
    args.SetMaxReceiveMessageSize(-1);
    stub_ = inference::GRPCInferenceService::NewStub(
      grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
  }

  caf::expected<std::string> infer_f32(const std::string& model, const std::string& input,
                                       const std::vector<float>& values) override {
    inference::ModelInferRequest req;
    req.set_model_name(model);
    auto* in = req.add_inputs();
    in->set_name(input);
    in->set_datatype("FP32");
    in->add_shape(static_cast<int64_t>(values.size()));
    req.add_raw_input_contents(reinterpret_cast<const char*>(values.data()),
                               values.size() * sizeof(float));
    inference::ModelInferResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds{60});
    auto s = stub_->ModelInfer(&ctx, req, &resp);
    if (!s.ok())
      return make_error(errc::infer_failed, "gRPC " + std::to_string(s.error_code()) + ": " +
                                              s.error_message());
    if (resp.raw_output_contents_size() < 1)
      return make_error(errc::infer_failed, "no output");
    return std::move(*resp.mutable_raw_output_contents(0));
  }

private:
  std::unique_ptr<inference::GRPCInferenceService::Stub> stub_;
};

} // namespace

caf::expected<std::unique_ptr<oip_client>> make_oip_client(const std::string& protocol,
                                                           const std::string& address) {
  if (protocol == "grpc")
    return std::unique_ptr<oip_client>{new grpc_client(address)};
  if (protocol != "http")
    return make_error(errc::invalid_argument, "protocol is http or grpc, not " + protocol);
  auto [host, port] = split_address(address);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  if (::getaddrinfo(host.c_str(), port.c_str(), &hints, &found) != 0 || found == nullptr)
    return make_error(errc::unavailable, "cannot resolve " + address);
  int fd = ::socket(found->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int rc = fd < 0 ? -1 : ::connect(fd, found->ai_addr, found->ai_addrlen);
  ::freeaddrinfo(found);
  if (rc != 0) {
    if (fd >= 0)
      ::close(fd);
    return make_error(errc::unavailable, "cannot connect to " + address);
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return std::unique_ptr<oip_client>{new http_client(fd)};
}

} // namespace modelreg::doors

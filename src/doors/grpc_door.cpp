#include "doors/grpc_door.hpp"

#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <sstream>

#include <grpcpp/grpcpp.h>
#include <grpcpp/security/server_credentials.h>

#include "doors/tensor_codec.hpp"
#include "modelreg/messages/error.hpp"
#include "open_inference_grpc.grpc.pb.h"

namespace modelreg::doors {

namespace {

namespace pb = ::inference;

grpc::Status status_of(const caf::error& err) {
  return {static_cast<grpc::StatusCode>(oip::grpc_code(err)), oip::error_text(err)};
}

grpc::Status invalid(const std::string& what) {
  return {grpc::StatusCode::INVALID_ARGUMENT, "invalid_argument: " + what};
}

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

/// Typed contents of one input as a tensor.
caf::expected<tensor> from_contents(const pb::ModelInferRequest::InferInputTensor& in) {
  const auto& name = in.name();
  const auto& datatype = in.datatype();
  std::vector<int64_t> shape{in.shape().begin(), in.shape().end()};
  auto n = element_count(name, shape);
  if (!n)
    return n.error();
  const auto& c = in.contents();
  auto bad = [&](const std::string& what) { return make_error(errc::invalid_argument, what); };
  if (datatype == "BYTES") {
    if (c.bytes_contents_size() != 1 || *n != 1)
      return bad("'" + name + "': BYTES tensors of one element only (a modelreg tensor holds one "
                 "string as UINT8)");
    std::string framed(4, '\0');
    auto len = static_cast<uint32_t>(c.bytes_contents(0).size());
    std::memcpy(framed.data(), &len, 4);
    return tensor_from_raw(name, datatype, shape, framed + c.bytes_contents(0));
  }
  auto type = oip::parse_datatype(datatype);
  if (!type)
    return bad("'" + name + "': unknown datatype '" + datatype + "'");
  // The values, checked for count and range, as raw little-endian bytes.
  std::string raw;
  auto pack = [&](const auto& values, auto tag, auto lo, auto hi) -> caf::error {
    using T = decltype(tag);
    if (static_cast<size_t>(values.size()) != *n)
      return bad("'" + name + "': contents has " + std::to_string(values.size()) +
                 " values but shape needs " + std::to_string(*n));
    raw.resize(*n * sizeof(T));
    size_t i = 0;
    for (auto v : values) {
      if constexpr (!std::is_floating_point_v<T> && !std::is_same_v<T, bool>) {
        if (v < lo || v > hi)
          return bad("'" + name + "' element " + std::to_string(i) + " is out of range");
      }
      T x = static_cast<T>(v);
      std::memcpy(raw.data() + i * sizeof(T), &x, sizeof(T));
      ++i;
    }
    return {};
  };
  caf::error err;
  using L = std::numeric_limits<int64_t>;
  switch (*type) {
    case dtype::boolean: err = pack(c.bool_contents(), bool{}, 0, 1); break;
    case dtype::i8: err = pack(c.int_contents(), int8_t{}, -128, 127); break;
    case dtype::i16: err = pack(c.int_contents(), int16_t{}, -32768, 32767); break;
    case dtype::i32: err = pack(c.int_contents(), int32_t{}, INT32_MIN, INT32_MAX); break;
    case dtype::i64: err = pack(c.int64_contents(), int64_t{}, L::min(), L::max()); break;
    case dtype::u8: err = pack(c.uint_contents(), uint8_t{}, 0u, 255u); break;
    case dtype::u16: err = pack(c.uint_contents(), uint16_t{}, 0u, 65535u); break;
    case dtype::u32: err = pack(c.uint_contents(), uint32_t{}, 0u, UINT32_MAX); break;
    case dtype::u64: err = pack(c.uint64_contents(), uint64_t{}, 0ull, UINT64_MAX); break;
    case dtype::f32: err = pack(c.fp32_contents(), float{}, 0, 0); break;
    case dtype::f64: err = pack(c.fp64_contents(), double{}, 0, 0); break;
    case dtype::f16:
      return bad("'" + name + "': FP16 has no typed contents; send it in raw_input_contents");
  }
  if (err)
    return err;
  return tensor_from_raw(name, datatype, shape, raw);
}

} // namespace

struct grpc_door::impl final : pb::GRPCInferenceService::CallbackService {
  std::shared_ptr<oip::service> svc;
  grpc_options options;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  std::mutex mu;
  std::map<std::string, size_t> in_flight; ///< by peer
  std::map<std::string, uint64_t> clients; ///< fair-queue ids, by peer

  door_metrics& metrics() { return svc->metrics()->grpc; }

  void count(const grpc::Status& s) {
    switch (s.error_code()) {
      case grpc::StatusCode::OK: metrics().answers[2].add(); break;
      case grpc::StatusCode::INVALID_ARGUMENT:
      case grpc::StatusCode::NOT_FOUND:
      case grpc::StatusCode::PERMISSION_DENIED:
      case grpc::StatusCode::FAILED_PRECONDITION:
      case grpc::StatusCode::RESOURCE_EXHAUSTED:
      case grpc::StatusCode::UNIMPLEMENTED: metrics().answers[4].add(); break;
      default: metrics().answers[5].add();
    }
  }

  grpc::ServerUnaryReactor* finish(grpc::CallbackServerContext* ctx, grpc::Status s) {
    count(s);
    auto* r = ctx->DefaultReactor();
    r->Finish(std::move(s));
    return r;
  }

  grpc::ServerUnaryReactor* ServerLive(grpc::CallbackServerContext* ctx,
                                       const pb::ServerLiveRequest*,
                                       pb::ServerLiveResponse* out) override {
    out->set_live(true);
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ServerReady(grpc::CallbackServerContext* ctx,
                                        const pb::ServerReadyRequest*,
                                        pb::ServerReadyResponse* out) override {
    out->set_ready(svc->ready());
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ServerMetadata(grpc::CallbackServerContext* ctx,
                                           const pb::ServerMetadataRequest*,
                                           pb::ServerMetadataResponse* out) override {
    out->set_name(oip::service::name);
    out->set_version(svc->version());
    for (const auto& e : oip::service::extensions())
      out->add_extensions(e);
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ModelMetadata(grpc::CallbackServerContext* ctx,
                                          const pb::ModelMetadataRequest* in,
                                          pb::ModelMetadataResponse* out) override {
    auto meta = svc->metadata(in->name());
    if (!meta)
      return finish(ctx, {grpc::StatusCode::NOT_FOUND,
                          "model_not_found: unknown model '" + in->name() + "'"});
    out->set_name(meta->name);
    out->add_versions("1");
    out->set_platform(meta->platform);
    auto put = [](const oip::tensor_meta& t, pb::ModelMetadataResponse::TensorMetadata* m) {
      m->set_name(t.name);
      m->set_datatype(t.datatype);
      for (auto d : t.shape)
        m->add_shape(d);
    };
    for (const auto& t : meta->inputs)
      put(t, out->add_inputs());
    for (const auto& t : meta->outputs)
      put(t, out->add_outputs());
    return finish(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* ModelReady(grpc::CallbackServerContext* ctx,
                                       const pb::ModelReadyRequest* in,
                                       pb::ModelReadyResponse* out) override {
    if (!svc->metadata(in->name()))
      return finish(ctx, {grpc::StatusCode::NOT_FOUND,
                          "model_not_found: unknown model '" + in->name() + "'"});
    auto* r = ctx->DefaultReactor();
    svc->model_ready(in->name(), [this, r, out](caf::expected<bool> ok) {
      grpc::Status s = grpc::Status::OK;
      if (ok)
        out->set_ready(*ok);
      else
        s = status_of(ok.error());
      count(s);
      r->Finish(s);
    });
    return r;
  }

  grpc::ServerUnaryReactor* RepositoryIndex(grpc::CallbackServerContext* ctx,
                                            const pb::RepositoryIndexRequest* in,
                                            pb::RepositoryIndexResponse* out) override {
    auto* r = ctx->DefaultReactor();
    svc->index(in->ready(), [this, r, out](caf::expected<std::vector<oip::index_entry>> es) {
      grpc::Status s = grpc::Status::OK;
      if (es) {
        for (const auto& e : *es) {
          auto* m = out->add_models();
          m->set_name(e.name);
          m->set_version("1");
          m->set_state(e.state);
          m->set_reason(e.reason);
        }
      } else {
        s = status_of(es.error());
      }
      count(s);
      r->Finish(s);
    });
    return r;
  }

  std::function<void(caf::error)> done(grpc::ServerUnaryReactor* r) {
    return [this, r](caf::error err) {
      auto s = err ? status_of(err) : grpc::Status::OK;
      count(s);
      r->Finish(s);
    };
  }

  grpc::ServerUnaryReactor* RepositoryModelLoad(grpc::CallbackServerContext* ctx,
                                                const pb::RepositoryModelLoadRequest* in,
                                                pb::RepositoryModelLoadResponse*) override {
    auto* r = ctx->DefaultReactor();
    svc->load(in->model_name(), options.role, done(r));
    return r;
  }

  grpc::ServerUnaryReactor* RepositoryModelUnload(grpc::CallbackServerContext* ctx,
                                                  const pb::RepositoryModelUnloadRequest* in,
                                                  pb::RepositoryModelUnloadResponse*) override {
    auto* r = ctx->DefaultReactor();
    svc->unload(in->model_name(), options.role, done(r));
    return r;
  }

  grpc::ServerUnaryReactor* ModelInfer(grpc::CallbackServerContext* ctx,
                                       const pb::ModelInferRequest* in,
                                       pb::ModelInferResponse* out) override {
    const auto& model = in->model_name();
    tensor_map inputs;
    bool raw = in->raw_input_contents_size() > 0;
    if (raw && in->raw_input_contents_size() != in->inputs_size())
      return finish(ctx, invalid("raw_input_contents has " +
                                 std::to_string(in->raw_input_contents_size()) +
                                 " entries for " + std::to_string(in->inputs_size()) + " inputs"));
    if (in->inputs_size() == 0)
      return finish(ctx, invalid("the request has no inputs"));
    for (int i = 0; i < in->inputs_size(); ++i) {
      const auto& t = in->inputs(i);
      if (inputs.count(t.name()) != 0)
        return finish(ctx, invalid("input '" + t.name() + "' is given twice"));
      auto x = raw ? tensor_from_raw(t.name(), t.datatype(), {t.shape().begin(), t.shape().end()},
                                     in->raw_input_contents(i))
                   : from_contents(t);
      if (!x)
        return finish(ctx, status_of(x.error()));
      inputs.emplace(t.name(), std::move(*x));
    }
    std::vector<std::string> wanted;
    for (const auto& o : in->outputs())
      wanted.push_back(o.name());
    // One client per peer address: its in-flight calls are limited, and the
    // model's fair queue sees it as one client.
    auto peer = ctx->peer();
    uint64_t client;
    {
      std::lock_guard guard{mu};
      auto& n = in_flight[peer];
      if (n >= options.max_in_flight_per_peer) {
        metrics().refused.add();
        return finish(ctx, {grpc::StatusCode::RESOURCE_EXHAUSTED,
                            "quota_exceeded: " + std::to_string(n) +
                              " calls of this client are in flight (the limit)"});
      }
      ++n;
      auto& id = clients[peer];
      if (id == 0)
        id = svc->new_client_id();
      client = id;
    }
    auto* r = ctx->DefaultReactor();
    out->set_model_name(model);
    out->set_model_version("1");
    out->set_id(in->id());
    svc->infer(model, std::move(inputs), client,
               [this, r, out, model, wanted, peer](caf::expected<tensor_map> result) {
                 grpc::Status s = grpc::Status::OK;
                 if (!result) {
                   s = status_of(result.error());
                 } else {
                   std::vector<std::string> names = wanted;
                   if (names.empty())
                     for (const auto& [n, _] : *result)
                       names.push_back(n);
                   for (const auto& n : names) {
                     auto i = result->find(n);
                     if (i == result->end()) {
                       s = invalid("the model has no output '" + n + "'");
                       out->clear_outputs();
                       out->clear_raw_output_contents();
                       break;
                     }
                     bool text = svc->text_tensor(model, n, true);
                     auto [datatype, shape] = wire_form(i->second, text);
                     auto* o = out->add_outputs();
                     o->set_name(n);
                     o->set_datatype(datatype);
                     for (auto d : shape)
                       o->add_shape(d);
                     out->add_raw_output_contents(raw_of(i->second, text));
                   }
                 }
                 {
                   std::lock_guard guard{mu};
                   auto i = in_flight.find(peer);
                   if (i != in_flight.end() && --i->second == 0) {
                     in_flight.erase(i);
                     clients.erase(peer);
                   }
                 }
                 count(s);
                 r->Finish(s);
               });
    return r;
  }
};

caf::expected<std::unique_ptr<grpc_door>> grpc_door::start(std::shared_ptr<oip::service> service,
                                                           grpc_options options) {
  std::unique_ptr<grpc_door> door{new grpc_door};
  door->impl_ = std::make_unique<impl>();
  auto& d = *door->impl_;
  d.svc = std::move(service);
  d.options = options;
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (!options.tls_cert.empty()) {
    grpc::SslServerCredentialsOptions ssl{GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY};
    ssl.pem_root_certs = read_file(options.tls_ca);
    ssl.pem_key_cert_pairs.push_back({read_file(options.tls_key), read_file(options.tls_cert)});
    creds = grpc::SslServerCredentials(ssl);
  } else {
    creds = grpc::InsecureServerCredentials();
  }
  auto host = options.host.find(':') != std::string::npos ? "[" + options.host + "]" : options.host;
  auto address = host + ":" + std::to_string(options.port);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, creds, &d.port);
  builder.RegisterService(&d);
  builder.SetMaxReceiveMessageSize(static_cast<int>(std::min<size_t>(options.max_message, INT32_MAX)));
  builder.SetMaxSendMessageSize(-1);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(options.max_streams_per_connection));
  // A connection idle this long is closed; a peer that stops answering
  // pings is dropped.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, 60000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  d.server = builder.BuildAndStart();
  if (!d.server || d.port == 0)
    return make_error(errc::unavailable, "gRPC cannot listen on " + address +
                                           " (in use, or not an address of this host)");
  return door;
}

grpc_door::~grpc_door() {
  stop();
}

uint16_t grpc_door::port() const noexcept {
  return impl_ ? static_cast<uint16_t>(impl_->port) : 0;
}

void grpc_door::stop(std::chrono::milliseconds grace) {
  if (!impl_ || !impl_->server)
    return;
  impl_->server->Shutdown(std::chrono::system_clock::now() + grace);
  impl_->server->Wait();
  impl_->server.reset();
}

} // namespace modelreg::doors

#include "modelreg/actors/oip.hpp"

#include <caf/actor_system.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/send.hpp>

#include "modelreg/actors/detail/entry_block.hpp"
#include "modelreg/actors/detail/supervisor.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg::oip {

namespace {

/// A job the service's actor runs (with itself, for its requests).
struct job {
  std::function<void(caf::event_based_actor*)> run;
};

} // namespace
} // namespace modelreg::oip

CAF_ALLOW_UNSAFE_MESSAGE_TYPE(modelreg::oip::job)

namespace modelreg::oip {

namespace {

/// Calls `fn` exactly once: with the first value given, or with
/// `shutting_down` when the last copy goes (the job carrying it was dropped
/// by a stopped actor).
template <class T>
class once {
public:
  explicit once(std::function<void(T)> fn) : fn_(std::move(fn)) {}
  ~once() {
    if (!done_.exchange(true))
      fn_(T{make_error(errc::shutting_down, "the node is stopping")});
  }
  void operator()(T value) {
    if (!done_.exchange(true))
      fn_(std::move(value));
  }

private:
  std::function<void(T)> fn_;
  std::atomic<bool> done_{false};
};

template <class T>
std::shared_ptr<once<T>> make_once(std::function<void(T)> fn) {
  return std::make_shared<once<T>>(std::move(fn));
}

caf::behavior service_actor(caf::event_based_actor* self, int) {
  return {[self](job& j) { j.run(self); }};
}

constexpr std::pair<dtype, const char*> datatypes[] = {
  {dtype::boolean, "BOOL"}, {dtype::u8, "UINT8"},   {dtype::u16, "UINT16"}, {dtype::u32, "UINT32"},
  {dtype::u64, "UINT64"},   {dtype::i8, "INT8"},    {dtype::i16, "INT16"},  {dtype::i32, "INT32"},
  {dtype::i64, "INT64"},    {dtype::f16, "FP16"},   {dtype::f32, "FP32"},   {dtype::f64, "FP64"},
};

/// A backend's "i32|i64" or "*" in the protocol's spelling.
std::string datatypes_of(const std::string& spec) {
  if (spec == "*" || spec.empty())
    return "ANY";
  std::string out;
  size_t start = 0;
  while (start <= spec.size()) {
    auto bar = spec.find('|', start);
    auto one = spec.substr(start, bar == std::string::npos ? std::string::npos : bar - start);
    if (!out.empty())
      out += '|';
    auto t = parse_dtype(one);
    out += t ? datatype_name(*t) : one;
    if (bar == std::string::npos)
      break;
    start = bar + 1;
  }
  return out;
}

tensor_meta meta_of(const tensor_info& t) {
  tensor_meta m;
  m.name = t.name;
  m.optional = t.optional;
  if (t.text) {
    m.datatype = "BYTES";
    m.shape = {1};
  } else {
    m.datatype = datatypes_of(t.dtype);
    m.shape = t.shape ? *t.shape : std::vector<int64_t>{-1};
  }
  return m;
}

} // namespace

std::string datatype_name(dtype t) {
  for (const auto& [d, name] : datatypes)
    if (d == t)
      return name;
  return "UNKNOWN";
}

std::optional<dtype> parse_datatype(std::string_view name) {
  for (const auto& [d, n] : datatypes)
    if (name == n)
      return d;
  return std::nullopt;
}

int http_status(const caf::error& err) {
  errc code;
  if (!to_errc(err, code))
    return 500;
  switch (code) {
    case errc::model_not_found:
    case errc::backend_not_found: return 404;
    case errc::invalid_argument:
    case errc::malformed_frame:
    case errc::infer_failed:
    case errc::unsupported: return 400;
    case errc::permission_denied: return 403;
    case errc::busy: return 409;
    case errc::overloaded:
    case errc::quota_exceeded:
    case errc::out_of_memory: return 429;
    case errc::timeout:
    case errc::load_timeout: return 504;
    case errc::shutting_down:
    case errc::unavailable:
    case errc::peer_disconnected: return 503;
    default: return 500;
  }
}

int grpc_code(const caf::error& err) {
  // grpc::StatusCode values.
  enum : int {
    invalid_argument = 3, deadline_exceeded = 4, not_found = 5, permission_denied = 7,
    resource_exhausted = 8, failed_precondition = 9, aborted = 10, unimplemented = 12,
    internal = 13, unavailable = 14
  };
  errc code;
  if (!to_errc(err, code))
    return internal;
  switch (code) {
    case errc::model_not_found:
    case errc::backend_not_found: return not_found;
    case errc::invalid_argument:
    case errc::malformed_frame:
    case errc::infer_failed: return invalid_argument;
    case errc::unsupported: return unimplemented;
    case errc::permission_denied: return permission_denied;
    case errc::busy: return failed_precondition;
    case errc::overloaded:
    case errc::quota_exceeded:
    case errc::out_of_memory: return resource_exhausted;
    case errc::timeout:
    case errc::load_timeout: return deadline_exceeded;
    case errc::model_crashed: return aborted;
    case errc::shutting_down:
    case errc::unavailable:
    case errc::peer_disconnected: return unavailable;
    default: return internal;
  }
}

std::string error_text(const caf::error& err) {
  return describe(err);
}

struct service::impl {
  caf::actor actor;
};

service::service(caf::actor_system& sys, registry_actor registry, service_options options)
  : registry_(std::move(registry)), options_(std::move(options)), impl_(std::make_shared<impl>()) {
  if (!options_.metrics)
    options_.metrics = std::make_shared<node_metrics>();
  impl_->actor = sys.spawn(service_actor, 0);
}

service::~service() {
  stop();
}

void service::stop() {
  ready_.store(false);
  stopped_.store(true);
  if (impl_->actor) {
    caf::anon_send_exit(impl_->actor, caf::exit_reason::user_shutdown);
    impl_->actor = nullptr;
  }
}

void service::post(std::function<void(caf::event_based_actor*)> fn) {
  caf::anon_send(impl_->actor, job{std::move(fn)});
}

std::vector<std::string> service::extensions() {
  return {"model_repository", "binary_tensor_data", "metrics"};
}

std::optional<model_meta> service::metadata(const std::string& model) const {
  const auto* spec = options_.catalog ? options_.catalog->find(model) : nullptr;
  if (spec == nullptr)
    return std::nullopt;
  model_meta m;
  m.name = model;
  m.platform = "modelreg_" + spec->backend;
  if (const auto* info = options_.backends ? options_.backends->info(spec->backend) : nullptr) {
    for (const auto& t : info->inputs)
      m.inputs.push_back(meta_of(t));
    for (const auto& t : info->outputs)
      m.outputs.push_back(meta_of(t));
  }
  return m;
}

bool service::text_tensor(const std::string& model, const std::string& tensor, bool output) const {
  const auto* spec = options_.catalog ? options_.catalog->find(model) : nullptr;
  const auto* info =
    spec != nullptr && options_.backends ? options_.backends->info(spec->backend) : nullptr;
  if (info == nullptr)
    return false;
  for (const auto& t : output ? info->outputs : info->inputs)
    if (t.name == tensor)
      return t.text;
  return false;
}

uint64_t service::new_client_id() noexcept {
  // Shared-memory connections count up from 1; these ids live in the top
  // half, so the two never meet.
  return (uint64_t{1} << 63) | ++next_client_;
}

void service::model_ready(const std::string& model,
                          std::function<void(caf::expected<bool>)> done) {
  auto cb = make_once<caf::expected<bool>>(std::move(done));
  post([reg = registry_, model, cb](caf::event_based_actor* self) {
    self->request(reg, caf::infinite, list_atom::value)
      .then(
        [model, cb](const registry_snapshot& snap) {
          for (const auto& s : snap.models)
            if (s.key == model)
              return (*cb)(s.state == model_state::ready);
          (*cb)(false);
        },
        [cb](caf::error& err) {
          (*cb)(as_modelreg_error(std::move(err), errc::unavailable, "the registry"));
        });
  });
}

void service::infer(const std::string& model, tensor_map inputs, uint64_t client,
                    std::function<void(caf::expected<tensor_map>)> done) {
  auto cb = make_once<caf::expected<tensor_map>>(std::move(done));
  // A loaded model: straight to its actor from the caller's thread (a
  // door's), with a ticket that keeps it from eviction until it answers:
  // no hop through this service's actor or the supervisor.
  if (const auto& shared = options_.ready_models; shared && !stopped_.load()) {
    if (auto block = shared->find(model)) {
      if (auto ticket = detail::try_ticket(block)) {
        shared->fast_hits.fetch_add(1, std::memory_order_relaxed);
        auto sink = std::make_shared<reply_sink>(
          [cb](caf::expected<tensor_map> out) { (*cb)(std::move(out)); });
        caf::anon_send(block->actor,
                       infer_request{std::move(inputs), std::move(ticket), nullptr, sink, client});
        return;
      }
    }
  }
  auto in = std::make_shared<tensor_map>(std::move(inputs));
  post([reg = registry_, model, in, client, cb](caf::event_based_actor* self) {
    // By name, as a shared-memory peer's Infer by key: a catalog name loads
    // on first use; a loaded model is a hit.
    self->request(reg, caf::infinite, get_or_load_atom::value, model, model_spec{})
      .then(
        [in, client, cb](model_handle& h) {
          auto sink = std::make_shared<reply_sink>(
            [cb](caf::expected<tensor_map> out) { (*cb)(std::move(out)); });
          // The ticket keeps the model from eviction until it answers; the
          // handle's lease goes when this returns.
          caf::anon_send(h.actor(),
                         infer_request{std::move(*in), h.ticket(), nullptr, sink, client});
        },
        [cb](caf::error& err) {
          (*cb)(as_modelreg_error(std::move(err), errc::load_failed, "the model"));
        });
  });
}

void service::load(const std::string& model, peer_role role, std::function<void(caf::error)> done) {
  (void)role; // catalog names may be loaded by every role, as on the other doors
  auto cb = make_once<caf::error>(std::move(done));
  if (!options_.catalog || options_.catalog->find(model) == nullptr)
    return (*cb)(make_error(errc::model_not_found,
                            "'" + model + "' is not in the node's catalog"));
  post([reg = registry_, model, cb](caf::event_based_actor* self) {
    self->request(reg, caf::infinite, get_or_load_atom::value, model, model_spec{})
      .then([cb](model_handle&) { (*cb)(caf::error{}); },
            [cb](caf::error& err) {
              (*cb)(as_modelreg_error(std::move(err), errc::load_failed, "the load"));
            });
  });
}

void service::unload(const std::string& model, peer_role role,
                     std::function<void(caf::error)> done) {
  auto cb = make_once<caf::error>(std::move(done));
  if (role != peer_role::admin)
    return (*cb)(make_error(errc::permission_denied,
                            "unloading needs the admin role (docs/serve.md, \"Access and roles\")"));
  bool known = options_.catalog && options_.catalog->find(model) != nullptr;
  post([reg = registry_, model, known, cb](caf::event_based_actor* self) {
    self->request(reg, caf::infinite, unload_atom::value, model)
      .then([cb](const eviction_report&) { (*cb)(caf::error{}); },
            [cb, known](caf::error& err) {
              errc code;
              // A catalog model that is not loaded: nothing to do.
              if (known && to_errc(err, code) && code == errc::model_not_found)
                return (*cb)(caf::error{});
              (*cb)(as_modelreg_error(std::move(err), errc::unavailable, "the unload"));
            });
  });
}

void service::index(bool ready_only,
                    std::function<void(caf::expected<std::vector<index_entry>>)> done) {
  auto cb = make_once<caf::expected<std::vector<index_entry>>>(std::move(done));
  auto names = options_.catalog ? options_.catalog->names() : std::vector<std::string>{};
  post([reg = registry_, names, ready_only, cb](caf::event_based_actor* self) {
    self->request(reg, caf::infinite, list_atom::value)
      .then(
        [names, ready_only, cb](const registry_snapshot& snap) {
          std::map<std::string, index_entry> all;
          for (const auto& n : names)
            all[n] = index_entry{n, "UNAVAILABLE", "not loaded"};
          for (const auto& s : snap.models) {
            auto& e = all[s.key];
            e.name = s.key;
            e.state = s.state == model_state::ready ? "READY" : "LOADING";
            e.reason = s.state == model_state::ready ? "" : "loading";
          }
          std::vector<index_entry> out;
          for (auto& [_, e] : all)
            if (!ready_only || e.state == "READY")
              out.push_back(std::move(e));
          (*cb)(std::move(out));
        },
        [cb](caf::error& err) {
          (*cb)(as_modelreg_error(std::move(err), errc::unavailable, "the registry"));
        });
  });
}

void service::metrics_text(std::function<void(caf::expected<std::string>)> done) {
  auto cb = make_once<caf::expected<std::string>>(std::move(done));
  post([reg = registry_, metrics = options_.metrics, endpoint = options_.endpoint,
        cb](caf::event_based_actor* self) {
    self->request(reg, caf::infinite, list_atom::value)
      .then(
        [metrics, endpoint, cb](const registry_snapshot& snap) {
          std::optional<transport_figures> tf;
          if (auto ep = endpoint.lock()) {
            auto es = ep->stats();
            tf = transport_figures{es.connections,      es.zero_copy_tensors,
                                   es.copied_bytes,     es.pool.bytes_lent,
                                   es.pool.bytes_mapped, es.rejected_frames};
          }
          (*cb)(render_prometheus(*metrics, snap, tf ? &*tf : nullptr));
        },
        [cb](caf::error& err) {
          (*cb)(as_modelreg_error(std::move(err), errc::unavailable, "the registry"));
        });
  });
}

} // namespace modelreg::oip

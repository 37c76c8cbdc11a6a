#include "modelreg/backend/builtin.hpp"

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <unistd.h>

#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

/// Resident bytes standing in for weights: allocated and touched, so they are
/// really in memory and memory_bytes is what the process pays.
class reserved_memory {
public:
  explicit reserved_memory(uint64_t bytes) : bytes_(bytes) {
    if (!bytes_.empty())
      std::memset(bytes_.data(), 1, bytes_.size());
  }
  uint64_t size() const noexcept { return bytes_.size(); }

private:
  std::vector<std::byte> bytes_;
};

/// What both built-ins read from their spec before building.
struct common_params {
  uint64_t reserve_bytes = 0;
  bool batchable = false;
  std::chrono::milliseconds infer_delay{0};
};

caf::expected<common_params> prepare(const model_spec& spec) {
  auto reserve = param_u64(spec, "reserve_bytes", 0);
  if (!reserve)
    return reserve.error();
  auto delay = param_u64(spec, "load_delay_ms", 0);
  if (!delay)
    return delay.error();
  auto fail = param_bool(spec, "fail_load", false);
  if (!fail)
    return fail.error();
  auto batchable = param_bool(spec, "batchable", false);
  if (!batchable)
    return batchable.error();
  auto infer_delay = param_u64(spec, "infer_delay_ms", 0);
  if (!infer_delay)
    return infer_delay.error();
  if (*delay > 0)
    std::this_thread::sleep_for(std::chrono::milliseconds{*delay});
  if (*fail)
    return make_error(errc::load_failed, spec.backend + ": fail_load=true");
  return common_params{*reserve, *batchable, std::chrono::milliseconds{*infer_delay}};
}

/// The machine's monotonic clock (the same in every process), nanoseconds.
int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::steady_clock::now().time_since_epoch())
    .count();
}

/// One i64 tensor of one value.
caf::expected<tensor> scalar(tensor_allocator& out, int64_t v) {
  auto t = out.allocate(dtype::i64, {1});
  if (t)
    (*t->mutable_values<int64_t>())[0] = v;
  return t;
}

/// identity's stream: counts chunks and their elements. Each push answers
/// {count, total} so far (and pid with with_pid); finish answers the same.
class identity_stream final : public model_stream {
public:
  identity_stream(bool with_pid, std::chrono::milliseconds delay)
    : with_pid_(with_pid), delay_(delay) {}

  caf::expected<tensor_map> push(const tensor_map& chunk, tensor_allocator& out) override {
    if (done_)
      return make_error(errc::invalid_argument, "identity: the stream is finished");
    if (chunk.empty())
      return make_error(errc::invalid_argument, "identity: a chunk needs at least one tensor");
    if (delay_.count() > 0)
      std::this_thread::sleep_for(delay_);
    ++count_;
    for (const auto& [name, t] : chunk)
      total_ += t.element_count();
    return so_far(out);
  }

  caf::expected<tensor_map> finish(tensor_allocator& out) override {
    if (done_)
      return make_error(errc::invalid_argument, "identity: the stream is finished");
    done_ = true;
    return so_far(out);
  }

private:
  caf::expected<tensor_map> so_far(tensor_allocator& out) const {
    auto count = scalar(out, count_);
    auto total = scalar(out, total_);
    if (!count || !total)
      return make_error(errc::out_of_memory, "identity: cannot allocate outputs");
    tensor_map m{{"count", *count}, {"total", *total}};
    if (with_pid_) {
      auto pid = scalar(out, ::getpid());
      if (!pid)
        return pid.error();
      m.emplace("pid", *pid);
    }
    return m;
  }

  bool with_pid_;
  std::chrono::milliseconds delay_;
  int64_t count_ = 0;
  int64_t total_ = 0;
  bool done_ = false;
};

class identity_model final : public model {
public:
  identity_model(common_params common, bool thread_safe, bool with_pid, bool streaming)
    : memory_(common.reserve_bytes),
      thread_safe_(thread_safe),
      batchable_(common.batchable),
      with_pid_(with_pid),
      streaming_(streaming),
      delay_(common.infer_delay) {}

  caf::expected<std::unique_ptr<model_stream>> open_stream() override {
    if (!streaming_)
      return model::open_stream();
    return std::unique_ptr<model_stream>{std::make_unique<identity_stream>(with_pid_, delay_)};
  }

  caf::expected<tensor_map> infer(const tensor_map& inputs, tensor_allocator& out) override {
    auto started = monotonic_ns();
    if (delay_.count() > 0)
      std::this_thread::sleep_for(delay_);
    if (!with_pid_)
      return inputs;
    auto pid = out.allocate(dtype::i64, {1});
    auto span = out.allocate(dtype::i64, {2});
    if (!pid || !span)
      return make_error(errc::out_of_memory, "identity: cannot allocate outputs");
    (*pid->mutable_values<int64_t>())[0] = ::getpid();
    (*span->mutable_values<int64_t>())[0] = started;
    (*span->mutable_values<int64_t>())[1] = monotonic_ns();
    auto result = inputs;
    result.insert_or_assign("pid", std::move(*pid));
    result.insert_or_assign("span", std::move(*span));
    return result;
  }
  uint64_t memory_bytes() const override { return sizeof(*this) + memory_.size(); }
  model_capabilities capabilities() const override {
    model_capabilities caps{thread_safe_, delay_.count() > 0, batchable_};
    caps.streaming = streaming_;
    caps.quick = delay_.count() == 0;
    return caps;
  }
  std::string describe() const override { return "identity"; }

private:
  reserved_memory memory_;
  bool thread_safe_;
  bool batchable_;
  bool with_pid_;
  bool streaming_;
  std::chrono::milliseconds delay_;
};

class gain_model final : public model {
public:
  gain_model(float gain, common_params common)
    : gain_(gain),
      memory_(common.reserve_bytes),
      batchable_(common.batchable),
      delay_(common.infer_delay) {}

  caf::expected<tensor_map> infer(const tensor_map& inputs, tensor_allocator& out) override {
    auto i = inputs.find("audio");
    if (i == inputs.end())
      return make_error(errc::invalid_argument, "gain: missing input tensor 'audio'");
    auto in = i->second.values<float>();
    if (!in)
      return make_error(errc::invalid_argument, "gain: input 'audio': " + describe_error(in));
    if (delay_.count() > 0) // after the checks: a refused input answers at once
      std::this_thread::sleep_for(delay_);
    auto result = out.allocate(dtype::f32, i->second.shape());
    if (!result)
      return result.error();
    auto dst = result->mutable_values<float>();
    if (!dst)
      return dst.error();
    const auto& src = *in;
    for (size_t n = 0; n < src.size(); ++n)
      (*dst)[n] = src[n] * gain_;
    return tensor_map{{"audio", std::move(*result)}};
  }
  uint64_t memory_bytes() const override { return sizeof(*this) + memory_.size(); }
  model_capabilities capabilities() const override {
    model_capabilities caps{true, delay_.count() > 0, batchable_};
    caps.quick = delay_.count() == 0;
    return caps;
  }
  std::string describe() const override { return fmt::format("gain(x{})", gain_); }

private:
  static std::string describe_error(const caf::expected<std::span<const float>>& x) {
    return modelreg::describe(x.error());
  }

  float gain_;
  reserved_memory memory_;
  bool batchable_;
  std::chrono::milliseconds delay_;
};

/// The parameters both built-ins read (see `prepare`).
std::vector<param_info> common_param_infos() {
  using k = param_info::kind;
  return {
    {"reserve_bytes", k::count, "0", "resident bytes the model holds, standing in for weights"},
    {"load_delay_ms", k::count, "0", "the load takes this long"},
    {"fail_load", k::boolean, "false", "the load fails (load_failed)"},
    {"batchable", k::boolean, "false", "requests may be batched along dimension 0"},
    {"infer_delay_ms", k::count, "0", "each inference takes this long"},
  };
}

} // namespace

void add_builtin_backends(backend_registry& registry) {
  backend_info identity;
  identity.doc = "returns its inputs unchanged (tests, benchmarks, the transport's echo)";
  identity.params = common_param_infos();
  identity.params.push_back({"thread_safe", param_info::kind::boolean, "false",
                             "infer may run on several threads at once"});
  identity.params.push_back({"with_pid", param_info::kind::boolean, "false",
                             "add outputs 'pid' (the process that ran the request) and 'span' "
                             "(when it ran: monotonic clock, ns)"});
  identity.params.push_back({"streaming", param_info::kind::boolean, "false",
                             "sessions: each chunk pushed answers {count, total} (chunks and "
                             "elements so far)"});
  identity.inputs = {{"*", "*", std::nullopt, "any tensors"}};
  identity.outputs = {{"*", "*", std::nullopt, "the inputs, unchanged"},
                      {"pid", "i64", std::vector<int64_t>{1}, "with_pid: the serving process", true},
                      {"span", "i64", std::vector<int64_t>{2},
                       "with_pid: start and end of the call (monotonic clock, ns)", true}};
  // Its instances may be forked from one loaded copy (the tests' zygote).
  identity.forkable = true;
  backend_info gain;
  gain.doc = "multiplies float audio by a constant";
  gain.params = common_param_infos();
  gain.params.push_back({"gain", param_info::kind::number, "1", "the factor"});
  gain.inputs = {{"audio", "f32", std::nullopt, "samples, any shape"}};
  gain.outputs = {{"audio", "f32", std::nullopt, "audio times gain, same shape"}};
  registry.add("identity", [](const model_spec& spec) -> caf::expected<model_ptr> {
    auto thread_safe = param_bool(spec, "thread_safe", false);
    if (!thread_safe)
      return thread_safe.error();
    auto with_pid = param_bool(spec, "with_pid", false);
    if (!with_pid)
      return with_pid.error();
    auto streaming = param_bool(spec, "streaming", false);
    if (!streaming)
      return streaming.error();
    if (*streaming && *thread_safe)
      return make_error(errc::invalid_argument,
                        "identity: streaming and thread_safe exclude each other (a stream holds "
                        "its model object)");
    auto common = prepare(spec);
    if (!common)
      return common.error();
    return std::make_shared<identity_model>(*common, *thread_safe, *with_pid, *streaming);
  }, std::move(identity));
  registry.add("gain", [](const model_spec& spec) -> caf::expected<model_ptr> {
    auto gain = param_double(spec, "gain", 1.0);
    if (!gain)
      return gain.error();
    auto common = prepare(spec);
    if (!common)
      return common.error();
    return std::make_shared<gain_model>(static_cast<float>(*gain), *common);
  }, std::move(gain));
}

} // namespace modelreg

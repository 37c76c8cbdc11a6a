#include "modelreg/backend/pocketsphinx.hpp"

#include "modelreg/backend/backend_registry.hpp"

#ifdef MODELREG_WITH_POCKETSPHINX

#include <algorithm>
#include <cstring>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include <unistd.h>

#include <pocketsphinx.h>
#include <sphinxbase/cmn.h>
#include <sphinxbase/feat.h>

#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

constexpr const char* default_hmm = "/usr/share/pocketsphinx/model/en-us/en-us";
constexpr const char* default_lm = "/usr/share/pocketsphinx/model/en-us/en-us.lm.bin";
constexpr const char* default_dict = "/usr/share/pocketsphinx/model/en-us/cmudict-en-us.dict";
constexpr int64_t sample_rate = 16000;
constexpr double frame_seconds = 0.01; // pocketsphinx's default frame rate: 100/s

caf::error bad(const std::string& what) {
  return make_error(errc::invalid_argument, "pocketsphinx: " + what);
}

bool is_filler(const char* w) {
  return w[0] == '<' || w[0] == '[' || std::strcmp(w, "<sil>") == 0;
}

/// The audio of a request or chunk, checked: int16 mono 16 kHz, [samples]
/// or [1, samples]. `allow_empty`: a chunk may hold no samples.
caf::expected<std::span<const int16_t>> audio_of(const tensor_map& inputs, bool allow_empty) {
  auto a = inputs.find("audio");
  if (a == inputs.end())
    return bad("missing input tensor 'audio' (int16 mono 16 kHz PCM)");
  const auto& audio = a->second;
  if (auto r = inputs.find("sample_rate"); r != inputs.end()) {
    int64_t rate = 0;
    if (r->second.element_count() != 1)
      return bad("'sample_rate' must be one number");
    if (auto v32 = r->second.values<int32_t>())
      rate = (*v32)[0];
    else if (auto v64 = r->second.values<int64_t>())
      rate = (*v64)[0];
    else
      return bad("'sample_rate' must be int32 or int64");
    if (rate != sample_rate)
      return bad("audio at " + std::to_string(rate) + " Hz; this model needs 16000 Hz (resample first)");
  }
  if (audio.type() != dtype::i16)
    return bad("'audio' is " + to_string(audio.type()) + "; it must be int16 PCM");
  if (audio.rank() == 2 && audio.shape()[0] != 1)
    return bad("'audio' " + audio.describe() +
               " is not mono; give [samples] or [1, samples] (for interleaved stereo "
               "[samples, 2], take one channel: a[:, 0])");
  if (audio.rank() != 1 && audio.rank() != 2)
    return bad("'audio' " + audio.describe() + " must be [samples] or [1, samples]");
  if (audio.element_count() == 0 && !allow_empty)
    return bad("'audio' is empty");
  return audio.values<int16_t>();
}

caf::expected<tensor> text_tensor(tensor_allocator& out, const std::string& s) {
  auto t = out.allocate(dtype::u8, {static_cast<int64_t>(s.size())});
  if (t && !s.empty())
    std::memcpy(t->mutable_data(), s.data(), s.size());
  return t;
}

/// The decoder's current hypothesis as outputs: `text`, and with `words`
/// the words with their times and confidences.
caf::expected<tensor_map> hypothesis(ps_decoder_t* ps, tensor_allocator& out, bool words_too) {
  int32 score = 0;
  const char* hyp = ps_get_hyp(ps, &score);
  auto text_t = text_tensor(out, hyp != nullptr ? hyp : "");
  if (!text_t)
    return make_error(errc::out_of_memory, "pocketsphinx: cannot allocate outputs");
  if (!words_too)
    return tensor_map{{"text", *text_t}};
  std::string words;
  std::vector<float> times;
  auto* lmath = ps_get_logmath(ps);
  for (auto* seg = ps_seg_iter(ps); seg != nullptr; seg = ps_seg_next(seg)) {
    const char* w = ps_seg_word(seg);
    if (w == nullptr || is_filler(w))
      continue;
    int sf = 0, ef = 0;
    ps_seg_frames(seg, &sf, &ef);
    int32 ascr = 0, lscr = 0, lback = 0;
    auto prob = ps_seg_prob(seg, &ascr, &lscr, &lback);
    words += w;
    words += '\n';
    times.push_back(static_cast<float>(sf * frame_seconds));
    times.push_back(static_cast<float>((ef + 1) * frame_seconds));
    // logmath's fixed-point rounding can land a hair above 1.
    times.push_back(static_cast<float>(std::min(1.0, logmath_exp(lmath, prob))));
  }
  auto words_t = text_tensor(out, words);
  auto times_t = out.allocate(dtype::f32, {static_cast<int64_t>(times.size() / 3), 3});
  if (!words_t || !times_t)
    return make_error(errc::out_of_memory, "pocketsphinx: cannot allocate outputs");
  if (!times.empty())
    std::memcpy(times_t->mutable_data(), times.data(), times.size() * sizeof(float));
  return tensor_map{{"text", *text_t}, {"words", *words_t}, {"word_times", *times_t}};
}

class pocketsphinx_model;

/// A streaming utterance on the model's one decoder.
class pocketsphinx_stream final : public model_stream {
public:
  explicit pocketsphinx_stream(ps_decoder_t* ps) : ps_(ps) {}
  ~pocketsphinx_stream() override {
    if (open_)
      ps_end_utt(ps_); // cancelled: the hypothesis is dropped
  }

  caf::expected<tensor_map> push(const tensor_map& chunk, tensor_allocator& out) override {
    if (!open_)
      return make_error(errc::invalid_argument, "pocketsphinx: the stream is finished");
    auto samples = audio_of(chunk, true);
    if (!samples)
      return samples.error();
    if (!samples->empty() && ps_process_raw(ps_, samples->data(), samples->size(), FALSE, FALSE) < 0)
      return make_error(errc::infer_failed, "pocketsphinx: decoding failed");
    return hypothesis(ps_, out, false);
  }

  caf::expected<tensor_map> finish(tensor_allocator& out) override {
    if (!open_)
      return make_error(errc::invalid_argument, "pocketsphinx: the stream is finished");
    open_ = false;
    ps_end_utt(ps_);
    return hypothesis(ps_, out, true);
  }

private:
  ps_decoder_t* ps_;
  bool open_ = true;
};

class pocketsphinx_model final : public model {
public:
  pocketsphinx_model(ps_decoder_t* ps, cmd_ln_t* config, uint64_t bytes, std::string describe)
    : ps_(ps), config_(config), bytes_(bytes), describe_(std::move(describe)) {
    // The normalisation a fresh decoder starts from: every utterance starts
    // from it again, so a transcript does not depend on what the decoder
    // heard before (a stream leaves live normalisation behind).
    auto* cmn = ps_get_feat(ps_)->cmn_struct;
    initial_cmn_.resize(static_cast<size_t>(cmn->veclen));
    cmn_live_get(cmn, initial_cmn_.data());
  }

  ~pocketsphinx_model() override {
    ps_free(ps_);
    cmd_ln_free_r(config_);
  }

  caf::expected<tensor_map> infer(const tensor_map& inputs, tensor_allocator& out) override {
    auto samples = audio_of(inputs, false);
    if (!samples)
      return samples.error();
    if (auto err = start_utterance())
      return err;
    if (ps_process_raw(ps_, samples->data(), samples->size(), FALSE, TRUE) < 0) {
      ps_end_utt(ps_);
      return make_error(errc::infer_failed, "pocketsphinx: decoding failed");
    }
    ps_end_utt(ps_);
    return hypothesis(ps_, out, true);
  }

  caf::expected<std::unique_ptr<model_stream>> open_stream() override {
    if (auto err = start_utterance())
      return err;
    return std::unique_ptr<model_stream>{std::make_unique<pocketsphinx_stream>(ps_)};
  }

  uint64_t memory_bytes() const override { return bytes_; }
  model_capabilities capabilities() const override {
    model_capabilities caps;
    caps.blocking = true;
    caps.streaming = true;
    return caps;
  }
  std::string describe() const override { return describe_; }

  /// Decodes two seconds of made-up sound (noise bursts over silence) that
  /// the search takes for speech: it builds its structures, so a zygote
  /// forks instances from a decoder that has run, and an instance's
  /// private memory is what decoding costs it.
  void warm_up() override {
    std::vector<int16_t> noise(2 * sample_rate);
    uint32_t x = 12345;
    for (size_t i = 0; i < noise.size(); ++i) {
      x = x * 1103515245u + 12345u;
      bool loud = (i / 4000) % 2 == 1; // quarter-second bursts
      int32_t span = loud ? 6000 : 64;
      noise[i] = static_cast<int16_t>(static_cast<int32_t>((x >> 16) % span) - span / 2);
    }
    if (start_utterance())
      return;
    ps_process_raw(ps_, noise.data(), noise.size(), FALSE, TRUE);
    ps_end_utt(ps_);
  }

private:
  caf::error start_utterance() {
    cmn_live_set(ps_get_feat(ps_)->cmn_struct, initial_cmn_.data());
    if (ps_start_utt(ps_) < 0)
      return make_error(errc::infer_failed, "pocketsphinx: cannot start an utterance");
    return {};
  }

  ps_decoder_t* ps_;
  cmd_ln_t* config_;
  uint64_t bytes_;
  std::string describe_;
  std::vector<mfcc_t> initial_cmn_;
};

/// pocketsphinx's own initialisation is not safe to run twice at once.
std::mutex init_mutex;

} // namespace

void add_pocketsphinx_backend(backend_registry& registry) {
  backend_info info;
  info.doc = "speech recognition (CMU pocketsphinx; Debian's en-us model by default)";
  info.params = {
    {"hmm", param_info::kind::text, default_hmm, "acoustic model folder"},
    {"lm", param_info::kind::text, default_lm, "language model file"},
    {"dict", param_info::kind::text, default_dict, "pronunciation dictionary"},
    {"fwdflat", param_info::kind::boolean, "true",
     "second, flat-lexicon search pass at the end of an utterance (false: faster finals, "
     "for streaming)"},
    {"bestpath", param_info::kind::boolean, "true",
     "lattice best-path search at the end of an utterance (false: faster finals)"},
    {"maxhmmpf", param_info::kind::count, "30000",
     "most HMMs searched per frame (fewer: less CPU per stream; 3000 keeps the pinned "
     "transcripts)"},
    {"maxwpf", param_info::kind::count, "0",
     "most distinct words ending per frame (0: no limit; 10 with maxhmmpf 3000 for streaming)"},
  };
  // One decoder holds ~95 MiB of which ~70 stay shared after a fork.
  info.forkable = true;
  info.inputs = {
    {"audio", "i16", std::vector<int64_t>{-1}, "16 kHz mono PCM: [samples] or [1, samples]"},
    {"sample_rate", "i32|i64", std::vector<int64_t>{1}, "16000 if given (int32 or int64)", true},
  };
  info.outputs = {
    {"text", "u8", std::vector<int64_t>{-1}, "the transcript, UTF-8", false, true},
    {"words", "u8", std::vector<int64_t>{-1}, "one word per line, UTF-8", false, true},
    {"word_times", "f32", std::vector<int64_t>{-1, 3}, "start s, end s, confidence per word"},
  };
  registry.add("pocketsphinx", [](const model_spec& spec) -> caf::expected<model_ptr> {
    auto hmm = param_string(spec, "hmm", default_hmm);
    auto lm = param_string(spec, "lm", default_lm);
    auto dict = param_string(spec, "dict", default_dict);
    auto fwdflat = param_bool(spec, "fwdflat", true);
    if (!fwdflat)
      return fwdflat.error();
    auto bestpath = param_bool(spec, "bestpath", true);
    if (!bestpath)
      return bestpath.error();
    auto maxhmmpf = param_u64(spec, "maxhmmpf", 30000);
    if (!maxhmmpf)
      return maxhmmpf.error();
    auto maxwpf = param_u64(spec, "maxwpf", 0);
    if (!maxwpf)
      return maxwpf.error();
    if (*maxhmmpf == 0 || *maxhmmpf > 1000000 || *maxwpf > 100000)
      return make_error(errc::invalid_argument,
                        "pocketsphinx: maxhmmpf must be from 1 to 1000000 and maxwpf at most 100000");
    for (const auto& [what, path] : {std::pair{"hmm", hmm}, {"lm", lm}, {"dict", dict}})
      if (::access(path.c_str(), R_OK) != 0)
        return make_error(errc::load_failed, std::string{"pocketsphinx: "} + what + " '" + path +
                                               "' is not readable (install pocketsphinx-en-us?)");
    std::lock_guard guard{init_mutex};
    auto before = process_resident_bytes();
    cmd_ln_t* config = cmd_ln_init(nullptr, ps_args(), TRUE, "-hmm", hmm.c_str(), "-lm", lm.c_str(),
                                   "-dict", dict.c_str(), "-logfn", "/dev/null", "-fwdflat",
                                   *fwdflat ? "yes" : "no", "-bestpath", *bestpath ? "yes" : "no",
                                   nullptr);
    if (config == nullptr)
      return make_error(errc::load_failed, "pocketsphinx: bad configuration");
    cmd_ln_set_int32_r(config, "-maxhmmpf", static_cast<int32>(*maxhmmpf));
    cmd_ln_set_int32_r(config, "-maxwpf", *maxwpf == 0 ? -1 : static_cast<int32>(*maxwpf));
    ps_decoder_t* ps = ps_init(config);
    if (ps == nullptr) {
      cmd_ln_free_r(config);
      return make_error(errc::load_failed, "pocketsphinx: cannot load the model from " + hmm);
    }
    auto after = process_resident_bytes();
    auto name = lm.substr(lm.rfind('/') + 1);
    if (!*fwdflat || !*bestpath)
      name += ", streaming";
    return std::make_shared<pocketsphinx_model>(ps, config, after > before ? after - before : 0,
                                                "pocketsphinx(" + name + ")");
  }, std::move(info));
}

bool have_pocketsphinx() noexcept {
  return true;
}

} // namespace modelreg

#else

namespace modelreg {

void add_pocketsphinx_backend(backend_registry&) {}

bool have_pocketsphinx() noexcept {
  return false;
}

} // namespace modelreg

#endif

#include "modelreg/backend/flite.hpp"

#include "modelreg/backend/backend_registry.hpp"

#ifdef MODELREG_WITH_FLITE

#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include <dlfcn.h>

extern "C" {
#include <flite/flite.h>
}

#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

constexpr const char* default_voice = "cmu_us_kal16";
constexpr uint64_t default_max_text_bytes = 16384;

caf::error bad(const std::string& what) {
  return make_error(errc::invalid_argument, "flite: " + what);
}

/// Where `text` stops being UTF-8 (its length if it is).
size_t utf8_prefix(const unsigned char* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    unsigned char c = s[i];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (len == 0 || i + len > n)
      return i;
    uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xc0) != 0x80)
        return i;
      cp = (cp << 6) | (s[i + k] & 0x3f);
    }
    // Overlong forms, surrogates and code points past U+10FFFF are not UTF-8.
    static constexpr uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[len] || (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
      return i;
    i += len;
  }
  return n;
}

/// A voice from its Debian library (libflite_<voice>.so.1), loaded once per
/// process and kept: flite's voices are not meant to be unloaded while any
/// synthesis might still use them, and a second load of the same voice
/// would only take another reference to the same library.
struct voice_library {
  void* library = nullptr;
  cst_voice* voice = nullptr;
};

std::mutex voices_mutex;

caf::expected<cst_voice*> load_voice(const std::string& name) {
  static std::map<std::string, voice_library> loaded;
  std::lock_guard guard{voices_mutex};
  static std::once_flag init;
  std::call_once(init, [] { flite_init(); });
  if (auto i = loaded.find(name); i != loaded.end())
    return i->second.voice;
  auto library = "libflite_" + name + ".so.1";
  void* h = ::dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (h == nullptr)
    return make_error(errc::load_failed, "flite: voice '" + name + "': " + ::dlerror() +
                                           " (Debian's voices: cmu_us_kal16, cmu_us_kal, "
                                           "cmu_us_awb, cmu_us_rms, cmu_us_slt; install flite1-dev "
                                           "or libflite1)");
  auto symbol = "register_" + name;
  using register_fn = cst_voice* (*)(const char*);
  auto reg = reinterpret_cast<register_fn>(::dlsym(h, symbol.c_str()));
  if (reg == nullptr) {
    ::dlclose(h);
    return make_error(errc::load_failed, "flite: " + library + " has no " + symbol);
  }
  cst_voice* v = reg(nullptr);
  if (v == nullptr) {
    ::dlclose(h);
    return make_error(errc::load_failed, "flite: voice '" + name + "' did not register");
  }
  loaded[name] = voice_library{h, v};
  return v;
}

class flite_model final : public model {
public:
  flite_model(cst_voice* voice, std::string voice_name, uint64_t max_text, uint64_t bytes)
    : voice_(voice), voice_name_(std::move(voice_name)), max_text_(max_text), bytes_(bytes) {}

  caf::expected<tensor_map> infer(const tensor_map& inputs, tensor_allocator& out) override {
    auto t = inputs.find("text");
    if (t == inputs.end())
      return bad("missing input tensor 'text' (uint8, UTF-8 bytes)");
    const auto& text = t->second;
    if (text.type() != dtype::u8)
      return bad("'text' is " + to_string(text.type()) + "; it must be uint8 (UTF-8 bytes)");
    if (text.rank() != 1)
      return bad("'text' " + text.describe() + " must be one row of bytes: [bytes]");
    if (text.nbytes() == 0)
      return bad("'text' is empty: nothing to say");
    if (text.nbytes() > max_text_)
      return bad("'text' has " + std::to_string(text.nbytes()) + " bytes; this model takes at most " +
                 std::to_string(max_text_) + " per request (max_text_bytes); split it into sentences");
    auto bytes = text.values<uint8_t>();
    if (!bytes)
      return bytes.error();
    const auto* s = bytes->data();
    auto n = bytes->size();
    if (std::memchr(s, 0, n) != nullptr)
      return bad("'text' holds a NUL byte at " +
                 std::to_string(static_cast<const unsigned char*>(std::memchr(s, 0, n)) - s));
    if (auto valid = utf8_prefix(s, n); valid != n)
      return bad("'text' is not UTF-8 (byte " + std::to_string(valid) + ")");
    std::string sentence{reinterpret_cast<const char*>(s), n};
    cst_wave* wave = flite_text_to_wave(sentence.c_str(), voice_);
    if (wave == nullptr)
      return make_error(errc::infer_failed, "flite: synthesis failed");
    struct release {
      cst_wave* w;
      ~release() { delete_wave(w); }
    } guard{wave};
    auto samples = static_cast<int64_t>(wave->num_samples) * std::max(wave->num_channels, 1);
    auto audio = out.allocate(dtype::i16, {samples});
    auto rate = out.allocate(dtype::i32, {1});
    if (!audio || !rate)
      return make_error(errc::out_of_memory, "flite: cannot allocate outputs");
    if (samples > 0)
      std::memcpy(audio->mutable_data(), wave->samples, static_cast<size_t>(samples) * sizeof(int16_t));
    int32_t hz = wave->sample_rate;
    std::memcpy(rate->mutable_data(), &hz, sizeof(hz));
    return tensor_map{{"audio", *audio}, {"sample_rate", *rate}};
  }

  uint64_t memory_bytes() const override { return bytes_; }
  // Synthesis computes for milliseconds: its own threads (lanes).
  model_capabilities capabilities() const override { return {true, true, false}; }
  std::string describe() const override { return "flite(" + voice_name_ + ")"; }

private:
  cst_voice* voice_;
  std::string voice_name_;
  uint64_t max_text_;
  uint64_t bytes_;
};

bool valid_voice_name(const std::string& v) {
  if (v.empty() || v.size() > 64)
    return false;
  for (char c : v)
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
      return false;
  return true;
}

} // namespace

void add_flite_backend(backend_registry& registry) {
  backend_info info;
  info.doc = "text to speech (CMU Flite; Debian's cmu_us_kal16 voice by default)";
  info.params = {
    {"voice", param_info::kind::text, default_voice,
     "flite voice: cmu_us_kal16 (16 kHz), cmu_us_kal (8 kHz), cmu_us_awb, cmu_us_rms, cmu_us_slt"},
    {"max_text_bytes", param_info::kind::count, std::to_string(default_max_text_bytes),
     "the longest text one request may carry"},
  };
  info.inputs = {
    {"text", "u8", std::vector<int64_t>{-1}, "UTF-8 text", false, true},
  };
  info.outputs = {
    {"audio", "i16", std::vector<int64_t>{-1}, "mono PCM at sample_rate"},
    {"sample_rate", "i32", std::vector<int64_t>{1}, "the voice's rate in Hz"},
  };
  registry.add("flite", [](const model_spec& spec) -> caf::expected<model_ptr> {
    auto voice = param_string(spec, "voice", default_voice);
    if (!valid_voice_name(voice))
      return make_error(errc::invalid_argument,
                        "flite: voice '" + voice + "' is not a voice name (such as cmu_us_kal16)");
    auto max_text = param_u64(spec, "max_text_bytes", default_max_text_bytes);
    if (!max_text)
      return max_text.error();
    if (*max_text == 0)
      return make_error(errc::invalid_argument, "flite: max_text_bytes must be at least 1");
    auto before = process_resident_bytes();
    auto v = load_voice(voice);
    if (!v)
      return v.error();
    // One sentence at load: the voice's and lexicon's pages are touched now
    // (counted below, and not paid by the first request).
    if (auto* warm = flite_text_to_wave("Ready to speak, with numbers like 42.", *v))
      delete_wave(warm);
    auto after = process_resident_bytes();
    return std::make_shared<flite_model>(*v, voice, *max_text, after > before ? after - before : 0);
  }, std::move(info));
}

bool have_flite() noexcept {
  return true;
}

} // namespace modelreg

#else

namespace modelreg {

void add_flite_backend(backend_registry&) {}

bool have_flite() noexcept {
  return false;
}

} // namespace modelreg

#endif

// The pocketsphinx backend with Debian's en-us model and recordings: pinned
// transcripts, a phrase spoken by espeak-ng, and the clear errors for audio
// it cannot take.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "tools/asr_demo.hpp"
#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/backend/pocketsphinx.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg::test {
namespace {

std::string read_file(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

tensor pcm_tensor(const std::string& bytes) {
  auto t = tensor::allocate(dtype::i16, {static_cast<int64_t>(bytes.size() / 2)});
  std::memcpy(t->mutable_data(), bytes.data(), bytes.size() / 2 * 2);
  return *t;
}

std::string as_string(const tensor& t) {
  return {reinterpret_cast<const char*>(t.data()), t.nbytes()};
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in{s};
  for (std::string w; in >> w;)
    out.push_back(w);
  return out;
}

/// Word error rate: word-level edit distance / reference words.
double word_error_rate(const std::string& reference, const std::string& hypothesis) {
  auto r = split(reference), h = split(hypothesis);
  std::vector<std::vector<size_t>> d(r.size() + 1, std::vector<size_t>(h.size() + 1));
  for (size_t i = 0; i <= r.size(); ++i)
    d[i][0] = i;
  for (size_t j = 0; j <= h.size(); ++j)
    d[0][j] = j;
  for (size_t i = 1; i <= r.size(); ++i)
    for (size_t j = 1; j <= h.size(); ++j)
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (r[i - 1] != h[j - 1])});
  return static_cast<double>(d[r.size()][h.size()]) / static_cast<double>(r.size());
}

class asr_test : public ::testing::Test {
protected:
  static void SetUpTestSuite() {
    if (!have_pocketsphinx())
      return;
    auto loader = backend_registry::with_builtins()->loader_for({"pocketsphinx", {}});
    ASSERT_TRUE(loader);
    auto m = (*loader)();
    ASSERT_TRUE(m) << describe(m.error());
    recogniser = *m;
  }
  static void TearDownTestSuite() { recogniser.reset(); }

  void SetUp() override {
    if (!have_pocketsphinx())
      GTEST_SKIP() << "built without pocketsphinx";
  }

  caf::expected<tensor_map> recognise(const tensor_map& in) {
    return recogniser->infer(in, heap_allocator());
  }

  static inline model_ptr recogniser;
};

TEST_F(asr_test, DebiansRecordingsGiveThePinnedTranscripts) {
  EXPECT_GT(recogniser->memory_bytes(), 10u << 20); // measured: tens of MiB
  EXPECT_FALSE(recogniser->capabilities().thread_safe);
  for (const auto& r : tools::default_recordings()) {
    auto out = recognise({{"audio", pcm_tensor(read_file(r.file))}});
    ASSERT_TRUE(out) << describe(out.error());
    EXPECT_EQ(as_string(out->at("text")), r.expected) << r.file;
  }
  // Word segments: one row per word, ordered, inside the recording.
  auto out = recognise({{"audio", pcm_tensor(read_file(tools::default_recordings()[0].file))}});
  ASSERT_TRUE(out);
  EXPECT_EQ(as_string(out->at("words")), "go\nforward\nten\nmeters\n");
  const auto& times = out->at("word_times");
  ASSERT_EQ(times.shape(), (std::vector<int64_t>{4, 3}));
  auto v = *times.values<float>();
  for (size_t w = 0; w < 4; ++w) {
    EXPECT_LT(v[w * 3], v[w * 3 + 1]);
    EXPECT_GE(v[w * 3 + 2], 0.f);
    EXPECT_LE(v[w * 3 + 2], 1.f);
    if (w > 0) {
      EXPECT_LE(v[(w - 1) * 3 + 1], v[w * 3]);
    }
  }
}

// espeak-ng's formant voice is far from the natural speech the en-us model
// was trained on: measured on Debian 12 with every voice and rate tried
// (en, en-us, en-gb-x-rp; 110..170 wpm), pocketsphinx gets almost no word of
// a synthetic phrase right (see docs/asr.md). What this test
// can hold is the pipeline: espeak-ng -> sox resampling to 16 kHz -> the
// backend, answered with a transcript of about the phrase's length, and the
// WER pinned at what was measured.
TEST_F(asr_test, APhraseSpokenByEspeakGoesThroughTheWholePipeline) {
  auto dir = std::filesystem::temp_directory_path() / ("modelreg-asr-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto wav = (dir / "phrase.wav").string();
  auto raw = (dir / "phrase.raw").string();
  const std::string phrase = "go forward ten meters and turn left";
  ASSERT_EQ(std::system(("espeak-ng -v en-gb-x-rp -s 140 -w " + wav + " '" + phrase + "' 2>/dev/null").c_str()), 0);
  ASSERT_EQ(std::system(("sox " + wav + " -r 16000 -c 1 -b 16 -e signed-integer -t raw " + raw +
                         " 2>/dev/null").c_str()),
            0);
  auto out = recognise({{"audio", pcm_tensor(read_file(raw))}});
  std::filesystem::remove_all(dir);
  ASSERT_TRUE(out) << describe(out.error());
  auto text = as_string(out->at("text"));
  auto wer = word_error_rate(phrase, text);
  std::cout << "[ measured ] espeak-ng phrase -> \"" << text << "\", WER " << wer << "\n";
  auto words = split(text).size();
  EXPECT_GE(words, 4u) << text;
  EXPECT_LE(words, 14u) << text;
  EXPECT_LE(wer, 1.25) << text; // measured 1.0 with this voice and rate
}

TEST_F(asr_test, AudioItCannotTakeGetsAClearError) {
  auto pcm = read_file(tools::default_recordings()[0].file);
  auto check = [&](const tensor_map& in, const std::string& mentions) {
    auto out = recognise(in);
    ASSERT_FALSE(out) << mentions;
    EXPECT_TRUE(is(out.error(), errc::invalid_argument));
    EXPECT_NE(describe(out.error()).find(mentions), std::string::npos) << describe(out.error());
  };
  check({{"audio", *tensor::from_values<float>({0.1f, 0.2f})}}, "int16");
  auto stereo = tensor::allocate(dtype::i16, {2, 8000});
  std::memset(stereo->mutable_data(), 0, stereo->nbytes());
  check({{"audio", *stereo}}, "mono");
  check({{"audio", *tensor::allocate(dtype::i16, {0})}}, "empty");
  check({{"audio", pcm_tensor(pcm)}, {"sample_rate", *tensor::from_values<int32_t>({8000}, {})}},
        "8000 Hz");
  check({{"pcm", pcm_tensor(pcm)}}, "missing input tensor 'audio'");
  // And the decoder keeps serving after each of them.
  auto out = recognise({{"audio", pcm_tensor(pcm)}, {"sample_rate", *tensor::from_values<int32_t>({16000}, {})}});
  ASSERT_TRUE(out) << describe(out.error());
  EXPECT_EQ(as_string(out->at("text")), "go forward ten meters");
}

TEST_F(asr_test, AMissingModelFileFailsTheLoadClearly) {
  auto loader = backend_registry::with_builtins()->loader_for({"pocketsphinx", {{"lm", "/nonexistent.lm"}}});
  ASSERT_TRUE(loader);
  auto m = (*loader)();
  ASSERT_FALSE(m);
  EXPECT_TRUE(is(m.error(), errc::load_failed));
  EXPECT_NE(describe(m.error()).find("/nonexistent.lm"), std::string::npos);
}

} // namespace
} // namespace modelreg::test

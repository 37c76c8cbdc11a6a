// The pocketsphinx backend with Debian's en-us model and recordings: pinned
// transcripts, a phrase spoken by espeak-ng, and the clear errors for audio
// it cannot take. The flite backend (text to speech): what it says, the
// recogniser transcribes; text it cannot take gets a clear error.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "tools/asr_demo.hpp"
#include <future>

#include "modelreg/backend/backend_registry.hpp"
#include "modelreg/backend/flite.hpp"
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
  auto [errors, words] = tools::word_errors(reference, hypothesis);
  return static_cast<double>(errors) / static_cast<double>(words);
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

TEST_F(asr_test, StreamedIn20MsChunksGivesPartialsThenThePinnedTranscript) {
  auto recordings = tools::default_recordings();
  const auto& rec = recordings[0]; // "go forward ten meters"
  auto pcm = pcm_tensor(read_file(rec.file));
  auto samples = *pcm.values<int16_t>();
  // What the decoder says before any stream, for another recording.
  const auto& other = recordings[1];
  auto before = recognise({{"audio", pcm_tensor(read_file(other.file))}});
  ASSERT_TRUE(before) << describe(before.error());
  auto stream = recogniser->open_stream();
  ASSERT_TRUE(stream) << describe(stream.error());
  std::vector<std::string> partials;
  std::vector<int64_t> push_us;
  for (size_t off = 0; off < samples.size(); off += 320) {
    auto n = std::min<size_t>(320, samples.size() - off);
    auto t = *tensor::from_values<int16_t>(
      std::vector<int16_t>(samples.begin() + static_cast<std::ptrdiff_t>(off),
                           samples.begin() + static_cast<std::ptrdiff_t>(off + n)),
      {static_cast<int64_t>(n)});
    auto started = std::chrono::steady_clock::now();
    auto partial = (*stream)->push({{"audio", t}}, heap_allocator());
    push_us.push_back(std::chrono::duration_cast<std::chrono::microseconds>(
                        std::chrono::steady_clock::now() - started)
                        .count());
    ASSERT_TRUE(partial) << describe(partial.error());
    auto text = as_string(partial->at("text"));
    if (partials.empty() || partials.back() != text)
      partials.push_back(text);
  }
  // Words arrived while the audio did, before the end.
  EXPECT_GE(partials.size(), 3u);
  std::sort(push_us.begin(), push_us.end());
  auto finish_started = std::chrono::steady_clock::now();
  auto final = (*stream)->finish(heap_allocator());
  std::cout << "[ measured ] " << push_us.size() << " chunks of 20 ms: push p50 "
            << push_us[push_us.size() / 2] << " us, p99 " << push_us[push_us.size() * 99 / 100]
            << " us; finish "
            << std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::steady_clock::now() - finish_started)
                 .count()
            << " ms\n";
  ASSERT_TRUE(final) << describe(final.error());
  EXPECT_EQ(as_string(final->at("text")), rec.expected);
  EXPECT_EQ(as_string(final->at("words")), "go\nforward\nten\nmeters\n");
  // The same decoder, after a stream, gives the same whole-utterance answers.
  auto after = recognise({{"audio", pcm_tensor(read_file(other.file))}});
  ASSERT_TRUE(after) << describe(after.error());
  EXPECT_EQ(as_string(after->at("text")), as_string(before->at("text")));
  EXPECT_EQ(as_string(after->at("text")), other.expected);
}

TEST_F(asr_test, AChunkItCannotTakeIsRefusedAndTheStreamGoesOn) {
  auto stream = recogniser->open_stream();
  ASSERT_TRUE(stream) << describe(stream.error());
  auto wrong = (*stream)->push({{"audio", *tensor::from_values<float>({0.f, 1.f})}}, heap_allocator());
  ASSERT_FALSE(wrong);
  EXPECT_TRUE(is(wrong.error(), errc::invalid_argument)) << describe(wrong.error());
  EXPECT_NE(describe(wrong.error()).find("int16"), std::string::npos);
  auto none = (*stream)->push({}, heap_allocator());
  EXPECT_FALSE(none);
  // An empty chunk is fine (nothing new yet).
  auto empty = (*stream)->push({{"audio", *tensor::allocate(dtype::i16, {0})}}, heap_allocator());
  EXPECT_TRUE(empty) << describe(empty.error());
  auto recordings = tools::default_recordings();
  const auto& rec = recordings[0];
  auto whole = (*stream)->push({{"audio", pcm_tensor(read_file(rec.file))}}, heap_allocator());
  ASSERT_TRUE(whole) << describe(whole.error());
  auto final = (*stream)->finish(heap_allocator());
  ASSERT_TRUE(final) << describe(final.error());
  EXPECT_EQ(as_string(final->at("text")), rec.expected);
  // A dropped stream leaves the decoder ready for the next utterance.
  {
    auto dropped = recogniser->open_stream();
    ASSERT_TRUE(dropped);
    (void) (*dropped)->push({{"audio", pcm_tensor(read_file(rec.file))}}, heap_allocator());
  }
  auto next = recognise({{"audio", pcm_tensor(read_file(rec.file))}});
  ASSERT_TRUE(next) << describe(next.error());
  EXPECT_EQ(as_string(next->at("text")), rec.expected);
}

TEST_F(asr_test, AMissingModelFileFailsTheLoadClearly) {
  auto loader = backend_registry::with_builtins()->loader_for({"pocketsphinx", {{"lm", "/nonexistent.lm"}}});
  ASSERT_TRUE(loader);
  auto m = (*loader)();
  ASSERT_FALSE(m);
  EXPECT_TRUE(is(m.error(), errc::load_failed));
  EXPECT_NE(describe(m.error()).find("/nonexistent.lm"), std::string::npos);
}

// -- text to speech (flite) ---------------------------------------------------

tensor text_tensor(const std::string& text) {
  auto t = tensor::allocate(dtype::u8, {static_cast<int64_t>(text.size())});
  if (!text.empty())
    std::memcpy(t->mutable_data(), text.data(), text.size());
  return *t;
}

class tts_test : public asr_test {
protected:
  static void SetUpTestSuite() {
    asr_test::SetUpTestSuite();
    if (!have_flite())
      return;
    auto loader = backend_registry::with_builtins()->loader_for({"flite", {}});
    ASSERT_TRUE(loader);
    auto m = (*loader)();
    ASSERT_TRUE(m) << describe(m.error());
    speaker = *m;
  }
  static void TearDownTestSuite() {
    speaker.reset();
    asr_test::TearDownTestSuite();
  }

  void SetUp() override {
    if (!have_flite())
      GTEST_SKIP() << "built without flite";
  }

  caf::expected<tensor_map> say(const std::string& text) {
    return speaker->infer({{"text", text_tensor(text)}}, heap_allocator());
  }

  static inline model_ptr speaker;
};

TEST_F(tts_test, WhatItSaysTheRecogniserTranscribesExactly) {
  EXPECT_TRUE(speaker->capabilities().thread_safe);
  auto out = say("go forward ten meters");
  ASSERT_TRUE(out) << describe(out.error());
  const auto& audio = out->at("audio");
  EXPECT_EQ(audio.type(), dtype::i16);
  ASSERT_EQ(audio.rank(), 1u);
  EXPECT_EQ((*out->at("sample_rate").values<int32_t>())[0], 16000);
  // About 1.6 s of speech.
  EXPECT_GT(audio.shape()[0], 16000);
  EXPECT_LT(audio.shape()[0], 16000 * 4);
  if (!have_pocketsphinx())
    GTEST_SKIP() << "built without pocketsphinx: the transcript is not checked";
  auto heard = recognise({{"audio", audio}});
  ASSERT_TRUE(heard) << describe(heard.error());
  EXPECT_EQ(as_string(heard->at("text")), "go forward ten meters");
}

TEST_F(tts_test, ThreadsSharingOneVoiceGetTheSameSamplesAsOne) {
  const std::vector<std::string> sentences = {"go forward ten meters", "turn left at the next corner",
                                              "3.5 km at 10:45, $12.50!", "stop the robot now"};
  std::vector<std::string> alone;
  for (const auto& s : sentences) {
    auto out = say(s);
    ASSERT_TRUE(out) << describe(out.error());
    alone.push_back(as_string(out->at("audio")));
  }
  std::vector<std::future<int>> threads;
  for (size_t k = 0; k < 4; ++k)
    threads.push_back(std::async(std::launch::async, [&, k] {
      int differ = 0;
      for (size_t i = 0; i < 8; ++i) {
        auto j = (k + i) % sentences.size();
        auto out = say(sentences[j]);
        if (!out || as_string(out->at("audio")) != alone[j])
          ++differ;
      }
      return differ;
    }));
  for (auto& t : threads)
    EXPECT_EQ(t.get(), 0);
}

TEST_F(tts_test, TextItCannotTakeGetsAClearErrorAndTheModelGoesOn) {
  auto check = [&](const tensor_map& in, const std::string& says) {
    auto out = speaker->infer(in, heap_allocator());
    ASSERT_FALSE(out) << says;
    EXPECT_TRUE(is(out.error(), errc::invalid_argument)) << describe(out.error());
    EXPECT_NE(describe(out.error()).find(says), std::string::npos) << describe(out.error());
  };
  check({{"text", text_tensor("")}}, "empty");
  check({{"text", text_tensor(std::string{"go\0forward", 10})}}, "NUL byte at 2");
  check({{"text", text_tensor("caf\xc3")}}, "not UTF-8 (byte 3)");
  check({{"text", text_tensor("\xed\xa0\x80 surrogate")}}, "not UTF-8 (byte 0)");
  check({{"text", text_tensor(std::string(16385, 'a'))}}, "at most 16384");
  check({{"text", *tensor::from_values<float>({1.f, 2.f}, {2})}}, "must be uint8");
  check({{"text", *tensor::allocate(dtype::u8, {2, 3})}}, "[bytes]");
  check({{"words", text_tensor("hello")}}, "missing input tensor 'text'");
  // Text with nothing to say: no samples, no error.
  auto quiet = say("...");
  ASSERT_TRUE(quiet) << describe(quiet.error());
  EXPECT_EQ(quiet->at("audio").shape(), (std::vector<int64_t>{0}));
  // Any UTF-8 goes; the model keeps serving.
  EXPECT_TRUE(say("h\xc3\xa9llo w\xc3\xb6rld \xf0\x9f\x98\x80"));
  EXPECT_TRUE(say("go forward ten meters"));
}

TEST_F(tts_test, AnUnknownVoiceFailsTheLoadClearly) {
  auto registry = backend_registry::with_builtins();
  auto missing = (*registry->loader_for({"flite", {{"voice", "cmu_us_nobody"}}}))();
  ASSERT_FALSE(missing);
  EXPECT_TRUE(is(missing.error(), errc::load_failed));
  EXPECT_NE(describe(missing.error()).find("cmu_us_nobody"), std::string::npos);
  auto odd = (*registry->loader_for({"flite", {{"voice", "../../tmp/x"}}}))();
  ASSERT_FALSE(odd);
  EXPECT_TRUE(is(odd.error(), errc::invalid_argument));
  auto zero = (*registry->loader_for({"flite", {{"max_text_bytes", "0"}}}))();
  ASSERT_FALSE(zero);
  EXPECT_TRUE(is(zero.error(), errc::invalid_argument));
}

} // namespace
} // namespace modelreg::test

// Pipeline nodes that listen in real time (streaming sessions on a shared
// recogniser) and speak (a shared TTS model): the main job (`modelreg demo`,
// a voice loop) and `modelreg bench streams`. See docs/asr.md.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "tools/asr_demo.hpp"

namespace modelreg::tools {

/// Sentences the demo's pipeline nodes speak (flite) and hear (pocketsphinx).
std::vector<std::string> default_sentences();

struct voice_demo_options {
  std::string self_path;
  size_t nodes = 4;
  std::string model = "asr-en-us";
  std::vector<recording> recordings = default_recordings();
  std::vector<std::string> sentences = default_sentences();
  /// The word error rate the synthesized sentences may have, all together.
  double max_word_error_rate = 0.25;
  /// A stream that fell behind real time fails the run. False: reported
  /// only (a machine shared with other work, as the tests run the demo).
  bool require_keep_up = true;
};

/// The voice loop: `nodes` pipeline-node processes each speak two sentences
/// with the shared TTS model and stream them and the recordings to the
/// shared recogniser (one forked instance per node) in 20 ms chunks at the
/// pace of the audio. Prints partial results, the transcripts, latencies,
/// whether every stream kept up, loads, instances and memory; 0 only if
/// every recording's transcript is right, the sentences' word error rate is
/// within its bound, every stream kept up and each model loaded once.
int run_voice_demo(const voice_demo_options& opts);

/// `bench streams`: `streams` concurrent real-time streams of the three
/// recordings through sessions on `model` with one instance per stream;
/// one JSON object (latencies, kept_up, instances, memory against as many
/// processes with their own recogniser).
std::string run_streams_bench(const std::string& self_path, size_t streams,
                              const std::string& model);

/// `bench streams --whole`: whole-utterance requests from `clients` threads
/// for `duration` against `model` with `instances` instances; JSON.
std::string run_whole_throughput(const std::string& self_path, size_t clients, size_t instances,
                                 std::chrono::seconds duration, const std::string& model);

/// Child: a pipeline node. Connects to `uri`; on a line on stdin streams
/// each item ("file:PATH" raw 16 kHz PCM, or "say:TEXT" spoken by `tts`)
/// to `asr` in real time; one JSON line per item (and per partial change
/// with `live`), then {"done": true}; exits at stdin EOF.
int run_voice_client(const std::string& uri, const std::string& asr, const std::string& tts,
                     const std::vector<std::string>& items, bool live);

} // namespace modelreg::tools

// `modelreg bench memory` and what the main job (voice_loop.hpp) shares with
// it: pipeline-node processes sharing one speech recogniser held by a node,
// against processes that each load their own copy; the pinned recordings.
#pragma once

#include <cstdint>
#include <map>
#include <utility>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "modelreg/messages/model_spec.hpp"
#include "modelreg/tensor/tensor.hpp"

namespace modelreg::tools {

/// The recordings the demo transcribes, with what the recogniser returns.
struct recording {
  std::string file;     ///< path of 16 kHz mono int16 raw PCM
  std::string expected; ///< the transcript (pinned, see docs/asr.md)
};

/// Debian's pocketsphinx-testdata recordings and their transcripts.
std::vector<recording> default_recordings();

/// `bench memory`: summed PSS of N processes each loading `model` against N
/// clients plus one node holding it; one JSON object.
std::string run_memory_bench(const std::string& self_path, size_t clients,
                             const std::string& model);

/// Child: a pipeline node. Connects to `uri`; on a line on stdin gets
/// `model` and transcribes `files` through shared memory; prints one JSON
/// line per file and a final one with its counters; exits at stdin EOF.
int run_asr_node_client(const std::string& uri, const std::string& model,
                        const std::vector<std::string>& files);

/// Child: loads `model` itself (no node), transcribes `file`, prints a JSON
/// line, exits at stdin EOF.
int run_asr_alone(const model_spec& spec, const std::string& file);

/// Proportional set size of process `pid` in bytes (smaps_rollup), 0 if unknown.
uint64_t pss_bytes(int pid);

/// Word-level edit distance between a reference and a hypothesis, and the
/// reference's word count (their ratio is the word error rate).
std::pair<size_t, size_t> word_errors(const std::string& reference, const std::string& hypothesis);

/// A model's `text` output as a string (empty if it has none).
std::string text_of(const tensor_map& out);

/// Bytes in MiB.
double mib(uint64_t bytes);

/// The status JSON of the node at `uri` (empty if it does not answer).
nlohmann::json node_status(const std::string& uri);

/// Summed PSS of `n` processes that each load `model` themselves and
/// transcribe `file`, all alive at once (0 if one fails).
uint64_t separate_pss(const std::string& self_path, size_t n, const std::string& model,
                      const std::string& file);

} // namespace modelreg::tools

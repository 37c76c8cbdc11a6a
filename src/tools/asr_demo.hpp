// The main job (`make demo` → `modelreg demo`) and `modelreg bench memory`:
// pipeline-node processes sharing one speech recogniser held by a node,
// against processes that each load their own copy.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "modelreg/messages/model_spec.hpp"

namespace modelreg::tools {

/// The recordings the demo transcribes, with what the recogniser returns.
struct recording {
  std::string file;     ///< path of 16 kHz mono int16 raw PCM
  std::string expected; ///< the transcript (pinned, see docs/asr.md)
};

/// Debian's pocketsphinx-testdata recordings and their transcripts.
std::vector<recording> default_recordings();

struct demo_options {
  std::string self_path;
  size_t nodes = 4;
  std::string model = "asr-en-us";
  std::vector<recording> recordings = default_recordings();
};

/// Runs the demo; prints progress and the summary; 0 only if every
/// transcript is right.
int run_demo(const demo_options& opts);

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

} // namespace modelreg::tools

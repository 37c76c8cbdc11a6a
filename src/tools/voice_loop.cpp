// Pipeline nodes that listen in real time (streaming sessions on the shared
// recogniser) and speak (the shared TTS model): `modelreg bench streams` and
// the voice-loop main job (`modelreg demo`). See docs/asr.md.
#include "tools/voice_loop.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include <caf/actor_system.hpp>
#include <caf/send.hpp>

#include "modelreg/actors/blocking_client.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/backend/instances.hpp"
#include "modelreg/messages/system_config.hpp"
#include "tools/asr_demo.hpp"
#include "tools/private_node.hpp"

namespace modelreg::tools {

namespace {

using steady = std::chrono::steady_clock;
constexpr auto chunk_time = std::chrono::milliseconds{20};
constexpr size_t chunk_samples = 320; // 20 ms at 16 kHz

double ms_since(steady::time_point t) {
  return std::chrono::duration<double, std::milli>(steady::now() - t).count();
}

std::vector<int16_t> read_pcm(const std::string& path) {
  std::ifstream in{path, std::ios::binary};
  std::vector<char> bytes{std::istreambuf_iterator<char>{in}, {}};
  std::vector<int16_t> samples(bytes.size() / 2);
  std::memcpy(samples.data(), bytes.data(), samples.size() * 2);
  return samples;
}

void print_line(const nlohmann::json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

/// Streams `samples` through a session at the pace of the audio: chunk k
/// goes out when it has been "heard", 20 ms after chunk k-1. With `live`,
/// each change of the partial result is printed as a JSON line.
nlohmann::json stream_one(const blocking_client& caller, caf::actor_system& sys,
                          const registry_actor& reg, const std::string& model,
                          const std::string& item, const std::vector<int16_t>& samples, bool live) {
  nlohmann::json j = {{"item", item}, {"seconds", static_cast<double>(samples.size()) / 16000.0}};
  auto opened = steady::now();
  auto s = caller.open_session(model, std::chrono::seconds{30});
  j["open_ms"] = ms_since(opened);
  if (!s) {
    j["error"] = describe(s.error());
    return j;
  }
  // One chunk's worth of shared memory, written for every chunk: the node
  // reads it in place (it is done with it when the push answers).
  auto buffer = allocate_input(sys, reg, dtype::i16, {static_cast<int64_t>(chunk_samples)});
  std::vector<double> latencies;
  double max_late = 0, late = 0;
  std::string shown;
  int partials = 0;
  auto start = steady::now();
  size_t k = 0;
  for (size_t off = 0; off < samples.size(); off += chunk_samples, ++k) {
    auto n = std::min(chunk_samples, samples.size() - off);
    auto due = start + chunk_time * (k + 1);
    std::this_thread::sleep_until(due);
    late = ms_since(due);
    max_late = std::max(max_late, late);
    tensor chunk;
    if (buffer && n == chunk_samples) {
      std::memcpy(buffer->mutable_data(), samples.data() + off, n * 2);
      chunk = *buffer;
    } else {
      chunk = *tensor::from_values<int16_t>(
        std::vector<int16_t>(samples.begin() + static_cast<std::ptrdiff_t>(off),
                             samples.begin() + static_cast<std::ptrdiff_t>(off + n)),
        {static_cast<int64_t>(n)});
    }
    auto sent = steady::now();
    auto partial = s->push({{"audio", chunk}});
    latencies.push_back(ms_since(sent));
    if (!partial) {
      j["error"] = describe(partial.error());
      return j;
    }
    auto text = text_of(*partial);
    if (text != shown) {
      shown = text;
      ++partials;
      if (live)
        print_line({{"partial", text}, {"item", item}});
    }
  }
  auto sent = steady::now();
  auto final = s->finish();
  j["final_ms"] = ms_since(sent);
  if (!final) {
    j["error"] = describe(final.error());
    return j;
  }
  j["text"] = text_of(*final);
  j["chunk_ms"] = latencies;
  j["max_lateness_ms"] = max_late;
  j["end_lateness_ms"] = late; // the backlog when the audio ended
  j["partials"] = partials;
  return j;
}

/// The q-quantile of `xs` (sorted here).
double quantile(std::vector<double> xs, double q) {
  if (xs.empty())
    return 0;
  std::sort(xs.begin(), xs.end());
  return xs[std::min(xs.size() - 1, static_cast<size_t>(q * static_cast<double>(xs.size())))];
}

/// A stream fell behind real time when its last chunk went out this late
/// (a backlog that grew; a late chunk that the next ones catch up is not).
constexpr double behind_ms = 100.0;

} // namespace

int run_voice_client(const std::string& uri, const std::string& asr, const std::string& tts,
                     const std::vector<std::string>& items, bool live) {
  system_config cfg;
  caf::actor_system sys{cfg};
  auto reg = connect(sys, uri);
  if (!reg)
    return report_error(reg.error());
  blocking_client caller{sys, *reg};
  // The voice is held for the whole run (a request by name needs it loaded).
  std::optional<model_handle> voice;
  if (tts != "-") {
    auto h = get_model(sys, *reg, tts);
    if (!h)
      return report_error(h.error());
    voice = std::move(*h);
  }
  std::printf("connected\n");
  std::fflush(stdout);
  char line[16];
  (void) std::fgets(line, sizeof(line), stdin); // everyone starts at the same moment
  for (const auto& item : items) {
    std::vector<int16_t> samples;
    nlohmann::json spoken;
    if (item.rfind("say:", 0) == 0) {
      auto sentence = item.substr(4);
      auto text = tensor::allocate(dtype::u8, {static_cast<int64_t>(sentence.size())});
      std::memcpy(text->mutable_data(), sentence.data(), sentence.size());
      auto started = steady::now();
      auto out = caller.infer(tts, {{"text", *text}}, std::chrono::minutes{1});
      spoken["tts_ms"] = ms_since(started);
      if (!out)
        return report_error(out.error());
      auto audio = out->at("audio").values<int16_t>();
      if (!audio)
        return report_error(audio.error());
      samples.assign(audio->begin(), audio->end());
    } else {
      samples = read_pcm(item.substr(item.rfind("file:", 0) == 0 ? 5 : 0));
    }
    auto j = stream_one(caller, sys, *reg, asr, item, samples, live);
    if (spoken.contains("tts_ms"))
      j["tts_ms"] = spoken["tts_ms"];
    print_line(j);
    if (j.contains("error"))
      return 1;
  }
  print_line({{"done", true}});
  while (std::fgets(line, sizeof(line), stdin) != nullptr) {
  } // stay alive until the parent has measured
  caf::anon_send(*reg, shutdown_atom::value);
  return 0;
}

namespace {

/// A catalog with the recogniser at `instances` (and the TTS model).
std::string voice_catalog(const std::string& asr, size_t instances) {
  nlohmann::json models;
  // Settings for streaming (docs/asr.md): no second pass at the end of an
  // utterance, so a final comes quickly; a narrower search, so a stream
  // costs less CPU (the pinned transcripts stay the same).
  models[asr] = {{"backend", "pocketsphinx"},
                 {"params",
                  {{"fwdflat", false}, {"bestpath", false}, {"maxhmmpf", 3000}, {"maxwpf", 10}}},
                 {"instances", instances}};
  models["tts-en-us"] = {{"backend", "flite"}, {"params", {{"voice", "cmu_us_kal16"}}}};
  return nlohmann::json{{"models", models}}.dump();
}

/// PSS of the node and of the processes serving `model` (zygote and instances).
struct node_memory {
  /// The parts: the node's own process, zygotes, instance processes.
  uint64_t node_process = 0, zygotes = 0, instance_processes = 0;
  uint64_t pss() const { return node_process + zygotes + instance_processes; }
  uint64_t instances = 0;
  std::vector<uint64_t> private_bytes;
};

node_memory measure_node(const private_node& node, const std::string& model) {
  node_memory m;
  m.node_process = pss_bytes(node.process->pid());
  auto status = node_status(node.uri());
  for (const auto& e : status["models"]) {
    if (e.value("zygote_pid", int64_t{0}) > 0)
      m.zygotes += pss_bytes(static_cast<int>(e["zygote_pid"].get<int64_t>()));
    for (const auto& p : e.value("processes", nlohmann::json::array())) {
      m.instance_processes += pss_bytes(static_cast<int>(p["pid"].get<int64_t>()));
      if (e["key"] == model)
        m.private_bytes.push_back(p["private_bytes"].get<uint64_t>());
    }
    if (e["key"] == model)
      m.instances = e.value("instances", uint64_t{1});
  }
  return m;
}

} // namespace

std::string run_streams_bench(const std::string& self_path, size_t streams,
                              const std::string& model) {
  auto fail = [&](const std::string& why) {
    return nlohmann::json{{"streams", streams}, {"error", why}}.dump();
  };
  auto recordings = default_recordings();
  private_node node{self_path, "streams", voice_catalog(model, streams)};
  if (!node.ready)
    return fail("the node did not start");
  std::vector<std::unique_ptr<child_process>> clients;
  for (size_t i = 0; i < streams; ++i) {
    std::vector<std::string> argv{self_path, "__voice-client", node.uri(), model, "-", "quiet"};
    for (const auto& r : recordings)
      argv.push_back("file:" + r.file);
    clients.push_back(std::make_unique<child_process>(argv));
  }
  for (auto& c : clients)
    if (c->read_line(std::chrono::seconds{60}) != "connected")
      return fail("a client could not connect");
  // Loaded (and its instances forked) before the clock starts.
  {
    system_config cfg;
    caf::actor_system sys{cfg};
    auto reg = connect(sys, node.uri());
    if (!reg)
      return fail(describe(reg.error()));
    auto h = get_model(sys, *reg, model);
    if (!h)
      return fail(describe(h.error()));
    caf::anon_send(*reg, shutdown_atom::value);
  }
  for (auto& c : clients)
    c->write_line("go");
  std::vector<double> chunk_ms, final_ms;
  bool kept_up = true, right = true;
  double max_late = 0, end_late = 0;
  for (auto& c : clients) {
    for (size_t k = 0; k < recordings.size(); ++k) {
      auto j = nlohmann::json::parse(c->read_line(std::chrono::seconds{120}), nullptr, false);
      if (j.is_discarded() || j.contains("error"))
        return fail(j.is_discarded() ? "a client did not answer" : j["error"].get<std::string>());
      for (double x : j["chunk_ms"])
        chunk_ms.push_back(x);
      final_ms.push_back(j["final_ms"].get<double>());
      max_late = std::max(max_late, j["max_lateness_ms"].get<double>());
      end_late = std::max(end_late, j["end_lateness_ms"].get<double>());
      right = right && j["text"] == recordings[k].expected;
    }
    if (nlohmann::json::parse(c->read_line(std::chrono::seconds{30}), nullptr, false).value("done", false) != true)
      return fail("a client did not finish");
  }
  kept_up = end_late < behind_ms;
  auto mem = measure_node(node, model);
  uint64_t clients_pss = 0;
  for (auto& c : clients)
    clients_pss += pss_bytes(c->pid());
  for (auto& c : clients)
    c->close_stdin();
  for (auto& c : clients)
    c->wait_for_exit(std::chrono::seconds{10});
  auto separate = separate_pss(self_path, streams, model, recordings.front().file);
  std::vector<double> privates;
  for (auto b : mem.private_bytes)
    privates.push_back(mib(b));
  double reduction =
    separate > 0 ? 1.0 - static_cast<double>(mem.pss() + clients_pss) / static_cast<double>(separate)
                 : 0.0;
  return nlohmann::json{{"streams", streams},
                        {"model", model},
                        {"chunks", chunk_ms.size()},
                        {"chunk_latency_ms_p50", quantile(chunk_ms, 0.50)},
                        {"chunk_latency_ms_p99", quantile(chunk_ms, 0.99)},
                        {"final_latency_ms_p50", quantile(final_ms, 0.50)},
                        {"final_latency_ms_p99", quantile(final_ms, 0.99)},
                        {"max_lateness_ms", max_late},
                        {"end_lateness_ms", end_late},
                        {"kept_up", kept_up},
                        {"transcripts_right", right},
                        {"instances", mem.instances},
                        {"extra_instance_pss_mib", quantile(privates, 0.5)},
                        {"node_pss_mib", mib(mem.pss())},
                        {"node_process_pss_mib", mib(mem.node_process)},
                        {"zygote_pss_mib", mib(mem.zygotes)},
                        {"instances_pss_mib", mib(mem.instance_processes)},
                        {"clients_pss_mib", mib(clients_pss)},
                        {"separate_pss_mib", mib(separate)},
                        {"reduction", reduction}}
    .dump();
}

std::string run_whole_throughput(const std::string& self_path, size_t clients, size_t instances,
                                 std::chrono::seconds duration, const std::string& model) {
  auto recordings = default_recordings();
  std::vector<std::vector<int16_t>> audio;
  for (const auto& r : recordings)
    audio.push_back(read_pcm(r.file));
  private_node node{self_path, "throughput", voice_catalog(model, instances)};
  auto fail = [&](const std::string& why) {
    return nlohmann::json{{"instances", instances}, {"error", why}}.dump();
  };
  if (!node.ready)
    return fail("the node did not start");
  system_config cfg;
  caf::actor_system sys{cfg};
  auto reg = connect(sys, node.uri());
  if (!reg)
    return fail(describe(reg.error()));
  auto h = get_model(sys, *reg, model);
  if (!h)
    return fail(describe(h.error()));
  blocking_client caller{sys, *reg};
  std::atomic<uint64_t> done{0}, errors{0};
  auto until = steady::now() + duration;
  std::vector<std::thread> threads;
  for (size_t c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      for (size_t k = c; steady::now() < until; ++k) {
        const auto& a = audio[k % audio.size()];
        auto t = tensor::from_values<int16_t>(a, {static_cast<int64_t>(a.size())});
        auto out = caller.infer(model, {{"audio", *t}}, std::chrono::minutes{1});
        (out ? done : errors).fetch_add(1);
      }
    });
  auto started = steady::now();
  for (auto& t : threads)
    t.join();
  auto seconds = std::chrono::duration<double>(steady::now() - started).count();
  h->release();
  caf::anon_send(*reg, shutdown_atom::value);
  return nlohmann::json{{"clients", clients},
                        {"instances", instances},
                        {"utterances", done.load()},
                        {"errors", errors.load()},
                        {"utterances_per_s", static_cast<double>(done.load()) / seconds}}
    .dump();
}


std::vector<std::string> default_sentences() {
  return {"go forward ten meters", "turn left at the next corner", "stop the car now",
          "open the door please"};
}

int run_voice_demo(const voice_demo_options& opts) {
  auto t0 = steady::now();
  auto elapsed = [&] { return std::chrono::duration<double>(steady::now() - t0).count(); };
  const std::string tts = "tts-en-us";
  std::printf("modelreg demo: %zu pipeline nodes share one speech recogniser (%s, %zu instances "
              "forked from one loaded copy) and one voice (%s); each speaks sentences and "
              "streams them and recordings to the recogniser in 20 ms chunks, in real time\n\n",
              opts.nodes, opts.model.c_str(), opts.nodes, tts.c_str());
  std::printf("[%5.1fs] starting a node on a private socket ...\n", elapsed());
  std::fflush(stdout);
  private_node node{opts.self_path, "demo", voice_catalog(opts.model, opts.nodes)};
  if (!node.ready) {
    std::printf("the node did not start\n");
    return 1;
  }
  auto sentences = opts.sentences;
  std::vector<std::vector<std::string>> items(opts.nodes);
  std::vector<std::vector<std::string>> expected(opts.nodes);
  for (size_t i = 0; i < opts.nodes; ++i) {
    for (const auto& r : opts.recordings) {
      items[i].push_back("file:" + r.file);
      expected[i].push_back(r.expected);
    }
    for (size_t s = 0; s < 2 && !sentences.empty(); ++s) {
      const auto& sentence = sentences[(2 * i + s) % sentences.size()];
      items[i].push_back("say:" + sentence);
      expected[i].push_back(sentence);
    }
  }
  std::printf("[%5.1fs] starting %zu pipeline-node processes ...\n", elapsed(), opts.nodes);
  std::fflush(stdout);
  std::vector<std::unique_ptr<child_process>> clients;
  for (size_t i = 0; i < opts.nodes; ++i) {
    std::vector<std::string> argv{opts.self_path, "__voice-client", node.uri(), opts.model, tts,
                                  i == 0 ? "live" : "quiet"};
    argv.insert(argv.end(), items[i].begin(), items[i].end());
    clients.push_back(std::make_unique<child_process>(argv));
  }
  for (auto& c : clients)
    if (c->read_line(std::chrono::seconds{60}) != "connected") {
      std::printf("a pipeline node could not connect\n");
      return 1;
    }
  std::printf("[%5.1fs] all %zu start at the same moment (node 1's partial results shown as they "
              "change) ...\n",
              elapsed(), opts.nodes);
  std::fflush(stdout);
  for (auto& c : clients)
    c->write_line("go");
  // Every node's lines as they come.
  std::vector<std::vector<nlohmann::json>> results(clients.size());
  std::vector<bool> finished(clients.size(), false);
  auto deadline = steady::now() + std::chrono::minutes{3};
  size_t open = clients.size();
  while (open > 0) {
    if (steady::now() > deadline) {
      std::printf("FAILED: the pipeline nodes did not finish within 3 minutes\n");
      return 1;
    }
    for (size_t i = 0; i < clients.size(); ++i) {
      if (finished[i])
        continue;
      auto line = clients[i]->read_line(std::chrono::milliseconds{5});
      if (line.empty())
        continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || j.contains("error")) {
        std::printf("FAILED: node %zu: %s\n", i + 1, j.is_discarded() ? line.c_str() : j["error"].get<std::string>().c_str());
        return 1;
      }
      if (j.contains("partial")) {
        std::printf("[%5.1fs]   node %zu  ... %s\n", elapsed(), i + 1, j["partial"].get<std::string>().c_str());
      } else if (j.value("done", false)) {
        finished[i] = true;
        --open;
      } else {
        auto item = j["item"].get<std::string>();
        auto name = item.rfind("say:", 0) == 0 ? "said \"" + item.substr(4) + "\""
                                                : std::filesystem::path{item.substr(5)}.filename().string();
        auto late = j["end_lateness_ms"].get<double>();
        std::printf("[%5.1fs]   node %zu  %-34s -> \"%s\"  (final %.0f ms, %s)\n", elapsed(),
                    i + 1, name.c_str(), j["text"].get<std::string>().c_str(),
                    j["final_ms"].get<double>(),
                    late < behind_ms ? "kept up"
                                     : ("fell " + std::to_string(static_cast<int>(late)) +
                                        " ms behind")
                                         .c_str());
        results[i].push_back(j);
      }
      std::fflush(stdout);
    }
  }
  auto mem = measure_node(node, opts.model);
  uint64_t clients_pss = 0;
  for (auto& c : clients)
    clients_pss += pss_bytes(c->pid());
  auto status = node_status(node.uri());
  for (auto& c : clients)
    c->close_stdin();
  for (auto& c : clients)
    c->wait_for_exit(std::chrono::seconds{10});
  std::printf("[%5.1fs] measuring %zu processes that each load their own recogniser ...\n",
              elapsed(), opts.nodes);
  std::fflush(stdout);
  auto separate = separate_pss(opts.self_path, opts.nodes, opts.model, opts.recordings.front().file);

  // -- summary -----------------------------------------------------------
  bool recordings_right = true;
  size_t said_words = 0;
  double said_errors = 0;
  std::vector<double> chunk_ms, final_ms;
  double max_late = 0, end_late = 0;
  std::printf("\nTranscripts (recordings must match exactly)\n");
  for (size_t i = 0; i < results.size(); ++i)
    for (size_t k = 0; k < results[i].size(); ++k) {
      const auto& j = results[i][k];
      auto got = j["text"].get<std::string>();
      for (double x : j["chunk_ms"])
        chunk_ms.push_back(x);
      final_ms.push_back(j["final_ms"].get<double>());
      max_late = std::max(max_late, j["max_lateness_ms"].get<double>());
      end_late = std::max(end_late, j["end_lateness_ms"].get<double>());
      if (j["item"].get<std::string>().rfind("say:", 0) == 0) {
        auto [errors, words] = word_errors(expected[i][k], got);
        said_errors += static_cast<double>(errors);
        said_words += words;
        continue;
      }
      bool ok = got == expected[i][k];
      recordings_right = recordings_right && ok;
      if (!ok || i == 0)
        std::printf("  node %zu %-16s %s \"%s\"%s\n", i + 1,
                    std::filesystem::path{j["item"].get<std::string>().substr(5)}.filename().c_str(),
                    ok ? "right" : "WRONG", got.c_str(),
                    ok ? "" : (" (expected \"" + expected[i][k] + "\")").c_str());
    }
  double wer = said_words > 0 ? said_errors / static_cast<double>(said_words) : 0.0;
  bool wer_ok = wer <= opts.max_word_error_rate;
  bool kept_up = end_late < behind_ms;
  uint64_t loads = 0;
  if (status["totals"].is_object())
    loads = status["totals"].value("loads", uint64_t{0});
  std::printf("  synthesized sentences: word error rate %.3f over %zu words (bound %.2f): %s\n",
              wer, said_words, opts.max_word_error_rate, wer_ok ? "within" : "OVER");
  std::printf("\nReal time\n");
  std::printf("  chunk latency (push to partial): p50 %.1f ms, p99 %.1f ms over %zu chunks of 20 ms\n",
              quantile(chunk_ms, 0.5), quantile(chunk_ms, 0.99), chunk_ms.size());
  std::printf("  end of utterance (last chunk to final): p50 %.0f ms, p99 %.0f ms\n",
              quantile(final_ms, 0.5), quantile(final_ms, 0.99));
  std::printf("  every stream kept up with real time: %s (backlog when the audio ended: at most "
              "%.0f ms, bound %.0f ms; the latest any chunk went out: %.0f ms)\n",
              kept_up ? "yes" : "NO", end_late, behind_ms, max_late);
  std::printf("\nSharing\n");
  std::printf("  loads: %llu for 2 models (%s and %s), %zu pipeline nodes\n",
              static_cast<unsigned long long>(loads), opts.model.c_str(), tts.c_str(), opts.nodes);
  std::printf("  %s instances used: %llu, each costing %.1f MiB of its own (median private memory)\n",
              opts.model.c_str(), static_cast<unsigned long long>(mem.instances),
              mem.private_bytes.empty() ? 0.0 : mib(mem.private_bytes[mem.private_bytes.size() / 2]));
  std::printf("\nMemory (proportional set size, measured)\n");
  std::printf("  node, zygote, instances and %zu pipeline nodes: %7.1f MiB\n", opts.nodes,
              mib(mem.pss() + clients_pss));
  std::printf("  %zu processes with their own recogniser:        %7.1f MiB\n", opts.nodes,
              mib(separate));
  if (separate > 0)
    std::printf("  saved: %.0f%%\n", 100.0 * (1.0 - static_cast<double>(mem.pss() + clients_pss) /
                                                      static_cast<double>(separate)));
  bool ok = recordings_right && wer_ok && (kept_up || !opts.require_keep_up) && loads == 2;
  if (!kept_up && !opts.require_keep_up)
    std::printf("\n(falling behind real time is reported, not failed: --no-keep-up-check)\n");
  std::printf("\n%s in %.1f s\n",
              !ok        ? "FAILED"
              : kept_up  ? "OK: every transcript is right, every stream kept up, one load per model"
                         : "OK: every transcript is right, one load per model",
              elapsed());
  return ok ? 0 : 1;
}

} // namespace modelreg::tools

// The operator's surface as a new user meets it: the `modelreg` binary run as
// a real process, with the mistakes operators make (issue #11).
#include <csignal>
#include <cstring>
#include <fstream>
#include <future>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include "modelreg/backend/pocketsphinx.hpp"
#include "modelreg/tensor/npy.hpp"
#include "serve/serve_fixture.hpp"

namespace modelreg::test {
namespace {

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

class cli_test : public serve_test {
protected:
  std::string sock_flag = "--socket";

  /// A model's row in `status --json`.
  nlohmann::json model_status(const std::string& key) {
    auto s = run({"status", "--json", "--socket", socket});
    EXPECT_EQ(s.code, 0) << s.err;
    if (s.code != 0)
      return nlohmann::json::object();
    auto status = nlohmann::json::parse(s.out);
    for (const auto& m : status["models"])
      if (m["key"] == key)
        return m;
    return nlohmann::json::object();
  }
};

TEST_F(cli_test, ServeValuesAreParsedStrictlyAndABadOneIsNamedBeforeAnythingStarts) {
  for (std::vector<std::string> bad : {
         std::vector<std::string>{"--max-memory", "2X"},
         {"--max-memory", "abc"},
         {"--max-memory", "-1G"},
         {"--idle-ttl", "-5"},
         {"--idle-ttl", "1.5 s"},
         {"--idle-ttl", "soon"},
         {"--max-batch", "0"},
         {"--max-batch", "2.5"},
         {"--batch-timeout", "1week"},
         {"--peer-timeout", "2d"},
         {"--cluster-heartbeat", "20s"},
         {"--max-shared-memory", "1.5"},
         {"--allow-uid", "nobody"},
         {"--tcp", "127.0.0.1:99999"},
         {"--tcp", "nohost"},
         {"--frobnicate"},
       }) {
    std::vector<std::string> argv{"serve", "--socket", socket, "--catalog", catalog_path};
    argv.insert(argv.end(), bad.begin(), bad.end());
    auto r = run(argv);
    EXPECT_EQ(r.code, 2) << bad.front();
    EXPECT_TRUE(contains(r.err, bad.front())) << "the option is named: " << r.err;
    if (bad.size() > 1) {
      EXPECT_TRUE(contains(r.err, bad[1])) << "the value is named: " << r.err;
    }
    EXPECT_FALSE(fs::exists(socket)) << "nothing may start on a bad value";
  }
  // A well-formed value past the option's limit says the limit.
  auto over = run({"serve", "--socket", socket, "--catalog", catalog_path, "--cluster-heartbeat",
                   "20s"});
  EXPECT_EQ(over.code, 2);
  EXPECT_TRUE(contains(over.err, "must be at most 10s, not '20s'")) << over.err;
  // What operators write is understood: 2G is two gibibytes (a 2-byte budget
  // would refuse every model), 1.5 is a second and a half.
  ASSERT_TRUE(start_node({"--max-memory", "2G", "--idle-ttl", "1.5", "--batch-timeout", "5ms",
                          "--peer-timeout", "2.5s", "--max-shared-memory", "1.5GiB"}))
    << ready_line;
  auto load = run({"load", "gain", "--socket", socket});
  EXPECT_EQ(load.code, 0) << load.err;
}

TEST_F(cli_test, EveryCommandAnswersHelpAndAMistypedOneGetsTheNearest) {
  for (std::vector<std::string> cmd : {
         std::vector<std::string>{},
         {"serve"},
         {"status"},
         {"ls"},
         {"load"},
         {"unload"},
         {"infer"},
         {"transcribe"},
         {"demo"},
         {"describe"},
         {"catalog"},
         {"catalog", "check"},
#ifdef MODELREG_CLI_HAS_BENCH
         {"bench"},
         {"bench", "serve"},
         {"bench", "memory"},
         {"bench", "python"},
         {"bench", "registry"},
         {"bench", "transport"},
#endif
       }) {
    cmd.push_back("--help");
    auto r = run(cmd);
    EXPECT_EQ(r.code, 0) << cmd.front();
    EXPECT_TRUE(contains(r.out, "Usage")) << cmd.front() << ": " << r.out;
  }
  auto typo = run({"stauts"});
  EXPECT_EQ(typo.code, 2);
  EXPECT_TRUE(contains(typo.err, "did you mean 'status'")) << typo.err;
  // One level down, too.
  auto sub_typo = run({"catalog", "chekc"});
  EXPECT_EQ(sub_typo.code, 2);
  EXPECT_TRUE(contains(sub_typo.err, "did you mean 'check'")) << sub_typo.err;
#ifdef MODELREG_CLI_HAS_BENCH
  auto bench_typo = run({"bench", "sevre"});
  EXPECT_EQ(bench_typo.code, 2);
  EXPECT_TRUE(contains(bench_typo.err, "did you mean 'serve'")) << bench_typo.err;
#endif
  auto unknown_option = run({"status", "--wacth", "--socket", socket});
  EXPECT_EQ(unknown_option.code, 2);
  EXPECT_TRUE(contains(unknown_option.err, "--wacth")) << unknown_option.err;
  EXPECT_EQ(run({"help"}).code, 0);
  EXPECT_TRUE(contains(run({"--version"}).out, "modelreg"));
}

TEST_F(cli_test, AClientOutOfFileDescriptorsSaysWhyAndExits) {
#ifdef MODELREG_SANITIZED
  GTEST_SKIP() << "the sanitizers need descriptors of their own";
#endif
  // With few descriptors the transport's event loop cannot start (libuv
  // needs an epoll and an eventfd): every libuv result is checked, so the
  // command names the reason and exits 3. Below that, the dynamic loader
  // cannot open the libraries, or CAF's own multiplexer cannot start and
  // aborts (CAF 0.17 has no error path there); where those thresholds lie
  // depends on the descriptors this process passes on, so the limits count
  // from the first one that gets as far as modelreg's own answer.
  int first = 0;
  bool loop_named = false;
  for (int limit = 4; limit <= 40; ++limit) {
    auto r = run({"status", "--socket", dir + "/nobody.sock"},
                 {"prlimit", "--nofile=" + std::to_string(limit)});
    if (first == 0 && r.code != 3)
      continue;
    if (first == 0)
      first = limit;
    EXPECT_EQ(r.code, 3) << "limit " << limit << ": " << r.err;
    EXPECT_TRUE(contains(r.err, "modelreg: ")) << r.err;
    loop_named = loop_named || contains(r.err, "event loop");
  }
  ASSERT_NE(first, 0) << "CAF never started";
  EXPECT_TRUE(loop_named) << "no limit stopped the event loop's set-up";
}

TEST_F(cli_test, ACommandAimedAtSomethingElseGivesUpAtItsTimeoutAndSaysWhy) {
  // A TCP port where something listens that never speaks CAF (as an HTTP
  // server does): CAF alone would wait for ever.
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(listener, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(::listen(listener, 16), 0);
  socklen_t len = sizeof(addr);
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len);
  auto uri = "tcp://127.0.0.1:" + std::to_string(ntohs(addr.sin_port));
  auto r = run({"status", "--connect", uri, "--timeout", "1s"});
  ::close(listener);
  EXPECT_EQ(r.code, 3);
  EXPECT_TRUE(contains(r.err, "does not speak")) << r.err;
  // A malformed URI is a usage error, not "no node".
  auto bad = run({"status", "--connect", "tcp//nowhere"});
  EXPECT_EQ(bad.code, 2) << bad.err;
  auto none = run({"ls", "--socket", dir + "/nobody.sock"});
  EXPECT_EQ(none.code, 3);
  EXPECT_TRUE(contains(none.err, "modelreg serve")) << none.err;
}

/// A WAV file of `samples` at `rate` Hz, `channels` channels, 16-bit.
void write_wav(const std::string& path, const std::vector<int16_t>& samples, uint32_t rate,
               uint16_t channels) {
  std::ofstream out{path, std::ios::binary};
  auto u32 = [&](uint32_t v) { out.write(reinterpret_cast<const char*>(&v), 4); };
  auto u16 = [&](uint16_t v) { out.write(reinterpret_cast<const char*>(&v), 2); };
  auto bytes = static_cast<uint32_t>(samples.size() * 2);
  out.write("RIFF", 4);
  u32(36 + bytes);
  out.write("WAVEfmt ", 8);
  u32(16);
  u16(1);
  u16(channels);
  u32(rate);
  u32(rate * channels * 2);
  u16(static_cast<uint16_t>(channels * 2));
  u16(16);
  out.write("data", 4);
  u32(bytes);
  out.write(reinterpret_cast<const char*>(samples.data()), bytes);
}

TEST_F(cli_test, TranscribeTakesAFileWholeOrStreamedAndRefusesAudioItCannotUse) {
  if (!have_pocketsphinx())
    GTEST_SKIP() << "built without pocketsphinx";
  std::ofstream{catalog_path} << R"({"models": {
    "asr-en-us": {"backend": "pocketsphinx"},
    "echo": {"backend": "identity"}}})";
  ASSERT_TRUE(start_node()) << ready_line;
  const std::string raw = "/usr/share/pocketsphinx/test/data/goforward.raw";
  auto whole = run({"transcribe", raw, sock_flag, socket});
  EXPECT_EQ(whole.code, 0) << whole.err;
  EXPECT_EQ(whole.out, "go forward ten meters\n");
  auto streamed = run({"transcribe", raw, "--stream", "--json", sock_flag, socket});
  ASSERT_EQ(streamed.code, 0) << streamed.err;
  auto j = nlohmann::json::parse(streamed.out);
  EXPECT_EQ(j["text"], "go forward ten meters");
  EXPECT_EQ(j["chunks"], 140); // 2.79 s in 20 ms chunks
  EXPECT_GE(j["partials"].get<int>(), 2);
  auto lines = run({"transcribe", raw, "--stream", "--chunk", "200ms", sock_flag, socket});
  ASSERT_EQ(lines.code, 0) << lines.err;
  EXPECT_TRUE(contains(lines.out, "partial: go")) << lines.out;
  EXPECT_TRUE(contains(lines.out, "\ngo forward ten meters\n")) << lines.out;
  // The same audio as a WAV file; and WAV files it cannot use, named.
  std::ifstream in{raw, std::ios::binary};
  std::vector<char> bytes{std::istreambuf_iterator<char>{in}, {}};
  std::vector<int16_t> samples(bytes.size() / 2);
  std::memcpy(samples.data(), bytes.data(), samples.size() * 2);
  write_wav(dir + "/ok.wav", samples, 16000, 1);
  auto wav = run({"transcribe", dir + "/ok.wav", sock_flag, socket});
  EXPECT_EQ(wav.out, "go forward ten meters\n") << wav.err;
  write_wav(dir + "/8k.wav", samples, 8000, 1);
  auto low = run({"transcribe", dir + "/8k.wav", sock_flag, socket});
  EXPECT_EQ(low.code, 1);
  EXPECT_TRUE(contains(low.err, "8000 Hz")) << low.err;
  write_wav(dir + "/stereo.wav", samples, 16000, 2);
  auto stereo = run({"transcribe", dir + "/stereo.wav", sock_flag, socket});
  EXPECT_EQ(stereo.code, 1);
  EXPECT_TRUE(contains(stereo.err, "2 channels")) << stereo.err;
  auto text = run({"transcribe", catalog_path, sock_flag, socket});
  EXPECT_EQ(text.code, 1);
  EXPECT_TRUE(contains(text.err, "not a WAV file")) << text.err;
  auto missing = run({"transcribe", dir + "/none.wav", sock_flag, socket});
  EXPECT_EQ(missing.code, 1);
  EXPECT_TRUE(contains(missing.err, "none.wav")) << missing.err;
  // A model that does not stream says so; flags are checked first.
  auto echo = run({"transcribe", raw, "--model", "echo", "--stream", sock_flag, socket});
  EXPECT_EQ(echo.code, 1);
  EXPECT_TRUE(contains(echo.err, "does not stream")) << echo.err;
  EXPECT_EQ(run({"transcribe", raw, "--realtime", sock_flag, socket}).code, 2);
  EXPECT_EQ(run({"transcribe", raw, "--stream", "--chunk", "0ms", sock_flag, socket}).code, 2);
  // Nothing stays pinned.
  EXPECT_TRUE(eventually([&] { return model_status("asr-en-us").value("sessions", -1) == 0; }));
}

TEST_F(cli_test, InferNeverOverwritesItsInputNorOtherFilesUnlessForced) {
  ASSERT_TRUE(start_node()) << ready_line;
  auto work = dir + "/work";
  fs::create_directories(work);
  auto input = work + "/audio.npy";
  ASSERT_FALSE(npy::save(input, *tensor::from_values<float>({1.f, 2.f})));
  // gain's output is also called "audio": written over its own input before.
  auto over = run({"infer", "gain", "--input", "audio=" + input, "--output", work, "--force",
                   sock_flag, socket});
  EXPECT_EQ(over.code, 1);
  EXPECT_TRUE(contains(over.err, "over the input")) << over.err;
  auto kept = npy::load(input);
  ASSERT_TRUE(kept);
  EXPECT_EQ(kept->values<float>()->front(), 1.f) << "the input is untouched";

  auto out = dir + "/out";
  EXPECT_EQ(run({"infer", "gain", "--input", "audio=" + input, "--output", out, sock_flag, socket})
              .code,
            0);
  auto again = run({"infer", "gain", "--input", "audio=" + input, "--output", out, sock_flag, socket});
  EXPECT_EQ(again.code, 1);
  EXPECT_TRUE(contains(again.err, "--force")) << again.err;
  EXPECT_EQ(run({"infer", "gain", "--input", "audio=" + input, "--output", out, "--force",
                 sock_flag, socket})
              .code,
            0);
  // A duplicate input name is a usage error.
  EXPECT_EQ(run({"infer", "gain", "--input", "audio=" + input, "--input", "audio=" + input,
                 sock_flag, socket})
              .code,
            2);
  // An output folder that cannot be: refused before the model runs.
  auto requests_before = model_status("gain")["requests"];
  std::ofstream{dir + "/a-file"} << "x";
  auto nowhere = run({"infer", "gain", "--input", "audio=" + input, "--output", dir + "/a-file",
                      sock_flag, socket});
  EXPECT_EQ(nowhere.code, 1);
  EXPECT_TRUE(contains(nowhere.err, "cannot write outputs")) << nowhere.err;
  EXPECT_EQ(model_status("gain")["requests"], requests_before) << "the model did not run";
  // Text comes back as text; times in human units.
  auto text_in = dir + "/text.npy";
  std::string hello = "hello world";
  auto t = tensor::allocate(dtype::u8, {static_cast<int64_t>(hello.size())});
  ASSERT_TRUE(t);
  std::memcpy(t->mutable_data(), hello.data(), hello.size());
  ASSERT_FALSE(npy::save(text_in, *t));
  auto echoed = run({"infer", "echo", "--input", "text=" + text_in, "--output", dir + "/echo",
                     sock_flag, socket});
  EXPECT_EQ(echoed.code, 0) << echoed.err;
  EXPECT_TRUE(contains(echoed.out, "\"hello world\"")) << echoed.out;
  EXPECT_FALSE(contains(echoed.out, " us\n") && contains(echoed.out, "000 us")) << echoed.out;
}

TEST_F(cli_test, LatencyCountsSuccessfulRequestsOnlyAndErrorsAreShownApart) {
  ASSERT_TRUE(start_node()) << ready_line;
  auto input = dir + "/in.npy";
  ASSERT_FALSE(npy::save(input, *tensor::from_values<float>({1.f})));
  auto ints = dir + "/ints.npy";
  ASSERT_FALSE(npy::save(ints, *tensor::from_values<int16_t>({1, 2})));
  // One success that takes at least 300 ms, two refusals that take
  // microseconds: the median must be the success's.
  EXPECT_EQ(run({"infer", "slow-gain", "--input", "audio=" + input, "--output", dir + "/o",
                 sock_flag, socket})
              .code,
            0);
  // Refusals by the model itself (the CLI would refuse these inputs before
  // sending them, so they come from a library client).
  client c;
  auto reg = c.connect(uri(), false);
  ASSERT_TRUE(reg) << describe(reg.error());
  for (int i = 0; i < 2; ++i) {
    auto r = c.ask<tensor_map>(*reg, infer_atom::value, std::string{"slow-gain"},
                               tensor_map{{"audio", *tensor::from_values<int16_t>({1, 2})}});
    ASSERT_FALSE(r);
    // The code once.
    auto text = describe(r.error());
    EXPECT_EQ(text.find("invalid_argument"), text.rfind("invalid_argument")) << text;
  }
  // The CLI says what to do about an error, on a line of its own.
  auto unknown = run({"load", "nope", sock_flag, socket});
  EXPECT_EQ(unknown.code, 1);
  EXPECT_TRUE(contains(unknown.err, "model_not_found")) << unknown.err;
  EXPECT_TRUE(contains(unknown.err, "\n  (the request itself is wrong")) << unknown.err;
  auto m = model_status("slow-gain");
  EXPECT_EQ(m["requests"], 3);
  EXPECT_EQ(m["errors"], 2);
  EXPECT_GE(m["latency_p50_us"].get<uint64_t>(), 300000u) << m.dump();
  auto table = run({"status", sock_flag, socket});
  EXPECT_TRUE(contains(table.out, "ERRORS")) << table.out;
}

TEST_F(cli_test, LoadSaysAlreadyLoadedAndUnloadIfLoadedIsNotAnError) {
  ASSERT_TRUE(start_node()) << ready_line;
  auto first = run({"load", "gain", sock_flag, socket});
  EXPECT_EQ(first.code, 0);
  EXPECT_TRUE(contains(first.out, "loaded (")) << first.out;
  auto second = run({"load", "gain", sock_flag, socket});
  EXPECT_EQ(second.code, 0);
  EXPECT_TRUE(contains(second.out, "already loaded")) << second.out;
  EXPECT_EQ(run({"unload", "gain", sock_flag, socket}).code, 0);
  EXPECT_EQ(run({"unload", "gain", sock_flag, socket}).code, 1);
  auto quiet = run({"unload", "gain", "--if-loaded", sock_flag, socket});
  EXPECT_EQ(quiet.code, 0);
  EXPECT_TRUE(contains(quiet.out, "not loaded")) << quiet.out;
}

TEST_F(cli_test, AMissingCatalogSaysWhyAndWhereToLook) {
  auto r = run({"serve", "--socket", socket, "--catalog", dir + "/models.json"});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "No such file or directory")) << r.err;
  EXPECT_TRUE(contains(r.err, "examples/catalog.json")) << r.err;
}

TEST_F(cli_test, StoppingAnswersWaitingLoadsAtOnceAndASecondSignalStopsTheNodeNow) {
  ASSERT_TRUE(start_node()) << ready_line;
  // A client waiting on a load that takes 60 s.
  auto loading = std::async(std::launch::async,
                            [&] { return run({"load", "slow-load", "--socket", socket}); });
  ASSERT_TRUE(eventually([&] { return model_status("slow-load").value("state", "") == "loading"; },
                         30s));
  node->kill(SIGINT);
  std::string line;
  for (int i = 0; i < 3 && !contains(line, "stopping"); ++i)
    line = node->read_line(10s); // after "catalog: N models"
  EXPECT_TRUE(contains(line, "stopping")) << line;
  // The waiting client hears now, not after the load or a timeout.
  ASSERT_EQ(loading.wait_for(10s), std::future_status::ready) << "the load's caller was left waiting";
  auto answer = loading.get();
  EXPECT_EQ(answer.code, 1);
  EXPECT_TRUE(contains(answer.err, "shutting_down")) << answer.err;
  // The node waits for the loader's thread, and says so; a second signal
  // ends that.
  for (int i = 0; i < 3 && !contains(line, "stopped"); ++i)
    line = node->read_line(10s);
  EXPECT_TRUE(contains(line, "waiting for 1 loader(s) still running")) << line;
  node->kill(SIGINT);
  EXPECT_TRUE(node->wait_for_exit(10s)) << "a second SIGINT must stop the node";
  EXPECT_FALSE(fs::exists(socket)) << "the socket file is removed";
  node.reset();
}

TEST_F(cli_test, CatalogProblemsStopServeNamingTheEntryTheParameterAndThePosition) {
  auto bad = dir + "/bad.json";
  std::ofstream{bad} << R"({
  "models": {
    "half": { "backend": "gain", "params": { "gian": 0.5 } },
    "abc": { "backend": "gain", "params": { "gain": "abc" } },
    "nope": { "backend": "frobnicator" }
  }
})";
  auto r = run({"serve", "--socket", socket, "--catalog", bad});
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(contains(r.err, "bad.json:3:")) << r.err;
  EXPECT_TRUE(contains(r.err, "'half'") && contains(r.err, "did you mean 'gain'")) << r.err;
  EXPECT_TRUE(contains(r.err, "bad.json:4:") && contains(r.err, "gain='abc'")) << r.err;
  EXPECT_TRUE(contains(r.err, "bad.json:5:") && contains(r.err, "frobnicator")) << r.err;
  EXPECT_FALSE(fs::exists(socket));
  // The same offline; a trailing comma says where it is.
  auto comma = dir + "/comma.json";
  std::ofstream{comma} << "{ \"models\": {\n  \"a\": { \"backend\": \"gain\" },\n} }";
  auto check = run({"catalog", "check", bad, comma});
  EXPECT_EQ(check.code, 1);
  EXPECT_TRUE(contains(check.err, "did you mean 'gain'")) << check.err;
  EXPECT_TRUE(contains(check.err, "line 3, column 1")) << check.err;
  auto good = run({"catalog", "check", catalog_path});
  EXPECT_EQ(good.code, 0) << good.err;
  EXPECT_TRUE(contains(good.out, "all valid")) << good.out;
}

TEST_F(cli_test, DescribeShowsWhatAModelWantsAndInferChecksInputsBeforeSending) {
  ASSERT_TRUE(start_node()) << ready_line;
  auto d = run({"describe", "gain", sock_flag, socket});
  EXPECT_EQ(d.code, 0) << d.err;
  EXPECT_TRUE(contains(d.out, "audio") && contains(d.out, "f32")) << d.out;
  EXPECT_TRUE(contains(d.out, "2 (catalog)")) << d.out;
  auto j = run({"describe", "gain", "--json", sock_flag, socket});
  ASSERT_EQ(j.code, 0);
  auto e = nlohmann::json::parse(j.out);
  EXPECT_EQ(e["inputs"][0]["name"], "audio");
  EXPECT_EQ(e["inputs"][0]["dtype"], "f32");
  auto typo = run({"describe", "gian", sock_flag, socket});
  EXPECT_EQ(typo.code, 1);
  EXPECT_TRUE(contains(typo.err, "did you mean 'gain'")) << typo.err;
  // A wrong input name or dtype is refused before anything is sent: the
  // model is not even loaded.
  auto input = dir + "/in.npy";
  ASSERT_FALSE(npy::save(input, *tensor::from_values<int16_t>({1, 2})));
  auto wrong_name = run({"infer", "gain", "--input", "x=" + input, sock_flag, socket});
  EXPECT_EQ(wrong_name.code, 1);
  EXPECT_TRUE(contains(wrong_name.err, "no input 'x'")) << wrong_name.err;
  auto wrong_type = run({"infer", "gain", "--input", "audio=" + input, sock_flag, socket});
  EXPECT_EQ(wrong_type.code, 1);
  EXPECT_TRUE(contains(wrong_type.err, "as f32")) << wrong_type.err;
  EXPECT_TRUE(model_status("gain").empty()) << "nothing reached the node";
}

} // namespace
} // namespace modelreg::test

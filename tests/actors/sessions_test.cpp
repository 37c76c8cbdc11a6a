// Streaming sessions (docs/instances.md): a session pins one instance, each
// chunk answers a partial result, finish the final one; sessions that idle,
// die with their instance or name the wrong client end cleanly. The
// built-in identity backend streams with `streaming: true` (each push
// answers {count, total}); pocketsphinx's sessions are in asr_test.cpp.
#include <csignal>
#include <cstring>
#include <fstream>
#include <future>
#include <set>

#include <gtest/gtest.h>

#include "actors/registry_fixture.hpp"
#include "modelreg/backend/pocketsphinx.hpp"
#include "tools/asr_demo.hpp"

namespace modelreg::test {
namespace {

using namespace std::chrono_literals;

model_spec streaming_identity(uint32_t instances, uint64_t delay_ms = 0) {
  model_spec spec{"identity", {{"streaming", "true"}, {"with_pid", "true"}}};
  if (delay_ms > 0)
    spec.params["infer_delay_ms"] = std::to_string(delay_ms);
  spec.instances = instances;
  return spec;
}

tensor_map chunk(size_t n) {
  std::vector<float> v(n, 1.f);
  return {{"x", *tensor::from_values<float>(v, {static_cast<int64_t>(n)})}};
}

int64_t value(const tensor_map& m, const std::string& name) {
  auto i = m.find(name);
  return i == m.end() ? -1 : (*i->second.values<int64_t>())[0];
}

class sessions_test : public registry_test {
protected:
};

TEST_F(sessions_test, ASessionAnswersPartialsInOrderThenTheFinalOnOneInstance) {
  auto& reg = start();
  auto h = reg.get_or_load("m", streaming_identity(2));
  ASSERT_TRUE(h) << describe(h.error());
  auto s = h->open_session();
  ASSERT_TRUE(s) << describe(s.error());
  std::set<int64_t> pids;
  int64_t total = 0;
  for (size_t i = 1; i <= 5; ++i) {
    auto partial = s->push(chunk(i));
    ASSERT_TRUE(partial) << describe(partial.error());
    total += static_cast<int64_t>(i);
    EXPECT_EQ(value(*partial, "count"), static_cast<int64_t>(i));
    EXPECT_EQ(value(*partial, "total"), total);
    pids.insert(value(*partial, "pid"));
  }
  EXPECT_EQ(pids.size(), 1u) << "a session moved between instances";
  EXPECT_EQ(status_of("m")->sessions, 1u);
  auto final = s->finish();
  ASSERT_TRUE(final) << describe(final.error());
  EXPECT_EQ(value(*final, "count"), 5);
  EXPECT_EQ(value(*final, "total"), total);
  EXPECT_FALSE(s->open());
  auto after = s->push(chunk(1));
  ASSERT_FALSE(after);
  EXPECT_TRUE(is(after.error(), errc::invalid_argument)) << describe(after.error());
  EXPECT_TRUE(eventually([&] { return status_of("m")->sessions == 0; }));
}

TEST_F(sessions_test, RequestsUseTheInstancesThatSessionsLeaveFree) {
  auto& reg = start();
  auto h = reg.get_or_load("m", streaming_identity(2));
  ASSERT_TRUE(h) << describe(h.error());
  auto s = h->open_session();
  ASSERT_TRUE(s) << describe(s.error());
  auto pinned = value(*s->push(chunk(1)), "pid");
  for (int i = 0; i < 5; ++i) {
    auto out = h->infer(chunk(2));
    ASSERT_TRUE(out) << describe(out.error());
    EXPECT_NE(value(*out, "pid"), pinned);
  }
  EXPECT_TRUE(s->finish());
}

TEST_F(sessions_test, MoreSessionsThanInstancesAreBusyOnceTheirWaitIsOver) {
  auto& reg = start();
  auto h = reg.get_or_load("m", streaming_identity(2));
  ASSERT_TRUE(h) << describe(h.error());
  auto a = h->open_session();
  auto b = h->open_session();
  ASSERT_TRUE(a && b);
  auto c = h->open_session();
  ASSERT_FALSE(c);
  EXPECT_TRUE(is(c.error(), errc::busy)) << describe(c.error());
  auto d = h->open_session(50ms);
  ASSERT_FALSE(d);
  EXPECT_TRUE(is(d.error(), errc::busy)) << describe(d.error());
  // One that may wait gets the instance a finished session frees.
  auto e = std::async(std::launch::async, [&] { return h->open_session(30s); });
  EXPECT_TRUE(a->finish());
  auto opened = e.get();
  ASSERT_TRUE(opened) << describe(opened.error());
  EXPECT_TRUE(opened->push(chunk(1)));
}

TEST_F(sessions_test, AnOpenWaitingWhenASessionFinishesGetsAStreamOfItsOwn) {
  // The open reaches the model actor before the finish that frees its
  // instance (one sender: mailbox order). The instance must run the finish
  // first: before the fix it opened the new stream first, and the old
  // session's finish then ended the new session's stream.
  auto& reg = start();
  auto h = reg.get_or_load("m", streaming_identity(1));
  ASSERT_TRUE(h) << describe(h.error());
  auto a = h->open_session();
  ASSERT_TRUE(a) << describe(a.error());
  ASSERT_TRUE(a->push(chunk(3)));
  caf::scoped_actor self{sys};
  auto ask = [&](session_request req) -> caf::expected<tensor_map> {
    caf::expected<tensor_map> out = make_error(errc::timeout, "no answer");
    self->request(h->actor(), 30s, std::move(req))
      .receive([&](tensor_map& m) { out = std::move(m); },
               [&](caf::error& e) { out = std::move(e); });
    return out;
  };
  session_request open;
  open.op = session_op::open;
  open.wait = 30s;
  auto waiting = self->request(h->actor(), 30s, std::move(open));
  session_request finish;
  finish.op = session_op::finish;
  finish.session = a->id();
  auto finished = ask(std::move(finish));
  ASSERT_TRUE(finished) << describe(finished.error());
  EXPECT_EQ(value(*finished, "total"), 3); // the old session's own stream
  uint64_t id = 0;
  waiting.receive([&](tensor_map& m) { id = (*m.at("session").values<uint64_t>())[0]; },
                  [&](caf::error& e) { FAIL() << describe(e); });
  ASSERT_NE(id, 0u);
  session_request push;
  push.op = session_op::push;
  push.session = id;
  push.inputs = chunk(2);
  auto partial = ask(std::move(push));
  ASSERT_TRUE(partial) << describe(partial.error());
  EXPECT_EQ(value(*partial, "total"), 2); // a fresh stream
}

TEST_F(sessions_test, ASessionIdleTooLongIsCancelledAndItsInstanceFreed) {
  rcfg.session_idle_timeout = 100ms;
  auto& reg = start();
  auto h = reg.get_or_load("m", streaming_identity(1));
  ASSERT_TRUE(h) << describe(h.error());
  auto s = h->open_session();
  ASSERT_TRUE(s) << describe(s.error());
  ASSERT_TRUE(eventually([&] { return status_of("m")->sessions_expired == 1; }));
  EXPECT_EQ(status_of("m")->sessions, 0u);
  auto late = s->push(chunk(1));
  ASSERT_FALSE(late);
  EXPECT_TRUE(is(late.error(), errc::invalid_argument)) << describe(late.error());
  EXPECT_NE(describe(late.error()).find("idle too long"), std::string::npos);
  // The instance serves the next session.
  auto next = h->open_session();
  ASSERT_TRUE(next) << describe(next.error());
  EXPECT_TRUE(next->finish());
}

TEST_F(sessions_test, AnotherClientCannotUseASession) {
  auto& reg = start();
  auto h = reg.get_or_load("m", streaming_identity(1));
  ASSERT_TRUE(h) << describe(h.error());
  auto s = h->open_session();
  ASSERT_TRUE(s) << describe(s.error());
  caf::scoped_actor self{sys};
  session_request foreign;
  foreign.op = session_op::push;
  foreign.session = s->id();
  foreign.client = 12345;
  foreign.inputs = chunk(1);
  caf::expected<tensor_map> r{tensor_map{}};
  self->request(h->actor(), 10s, std::move(foreign))
    .receive([&](tensor_map& out) { r = std::move(out); }, [&](caf::error& err) { r = err; });
  ASSERT_FALSE(r);
  EXPECT_TRUE(is(r.error(), errc::invalid_argument)) << describe(r.error());
  // The owner's session goes on, undisturbed.
  auto mine = s->push(chunk(3));
  ASSERT_TRUE(mine) << describe(mine.error());
  EXPECT_EQ(value(*mine, "count"), 1);
}

TEST_F(sessions_test, AChunkTheModelCannotTakeIsRefusedAndTheSessionGoesOn) {
  auto& reg = start();
  auto h = reg.get_or_load("m", streaming_identity(1));
  ASSERT_TRUE(h) << describe(h.error());
  auto s = h->open_session();
  ASSERT_TRUE(s) << describe(s.error());
  auto bad = s->push(tensor_map{});
  ASSERT_FALSE(bad);
  EXPECT_TRUE(is(bad.error(), errc::invalid_argument)) << describe(bad.error());
  auto good = s->push(chunk(2));
  ASSERT_TRUE(good) << describe(good.error());
  EXPECT_EQ(value(*good, "count"), 1);
}

TEST_F(sessions_test, AKilledInstanceEndsItsSessionOnly) {
  auto& reg = start();
  auto h = reg.get_or_load("m", streaming_identity(2));
  ASSERT_TRUE(h) << describe(h.error());
  auto a = h->open_session();
  auto b = h->open_session();
  ASSERT_TRUE(a && b);
  auto victim = value(*a->push(chunk(1)), "pid");
  auto other = value(*b->push(chunk(1)), "pid");
  ASSERT_NE(victim, other);
  ASSERT_EQ(::kill(static_cast<pid_t>(victim), SIGKILL), 0);
  ASSERT_TRUE(eventually([&] { return process_gone(victim); }));
  auto dead = a->push(chunk(1));
  ASSERT_FALSE(dead);
  EXPECT_TRUE(is(dead.error(), errc::model_crashed) || is(dead.error(), errc::invalid_argument))
    << describe(dead.error());
  auto alive = b->push(chunk(1));
  ASSERT_TRUE(alive) << describe(alive.error());
  EXPECT_EQ(value(*alive, "count"), 2);
  // A new fork replaces the dead one and takes new sessions.
  ASSERT_TRUE(eventually([&] { return status_of("m")->instances == 2; }));
  auto c = h->open_session(10s);
  ASSERT_TRUE(c) << describe(c.error());
  EXPECT_NE(value(*c->push(chunk(1)), "pid"), victim);
}

TEST_F(sessions_test, ADestroyedSessionIsCancelled) {
  auto& reg = start();
  auto h = reg.get_or_load("m", streaming_identity(1));
  ASSERT_TRUE(h) << describe(h.error());
  {
    auto s = h->open_session();
    ASSERT_TRUE(s) << describe(s.error());
  }
  EXPECT_TRUE(eventually([&] { return status_of("m")->sessions == 0; }));
  auto next = h->open_session(10s);
  EXPECT_TRUE(next) << describe(next.error());
}

TEST_F(sessions_test, AModelThatDoesNotStreamRefusesSessions) {
  auto& reg = start();
  for (auto spec : {model_spec{"identity", {}}, model_spec{"gain", {}}}) {
    auto h = reg.get_or_load(spec.backend, spec);
    ASSERT_TRUE(h) << describe(h.error());
    auto s = h->open_session();
    ASSERT_FALSE(s);
    EXPECT_TRUE(is(s.error(), errc::unsupported)) << describe(s.error());
  }
}

TEST_F(sessions_test, AStreamingModelWithOneInstanceStillServesRequestsBetweenSessions) {
  auto& reg = start();
  auto spec = streaming_identity(1);
  auto h = reg.get_or_load("m", spec);
  ASSERT_TRUE(h) << describe(h.error());
  // In this process: one instance, no zygote.
  EXPECT_EQ(status_of("m")->zygote_pid, 0);
  auto s = h->open_session();
  ASSERT_TRUE(s) << describe(s.error());
  // A request waits for the session's instance ...
  auto waiting = std::async(std::launch::async, [&] { return h->infer(chunk(1)); });
  EXPECT_EQ(waiting.wait_for(50ms), std::future_status::timeout);
  // ... and runs once the session is done.
  EXPECT_TRUE(s->finish());
  auto out = waiting.get();
  EXPECT_TRUE(out) << describe(out.error());
  EXPECT_EQ(value(*out, "pid"), ::getpid());
}

TEST_F(sessions_test, ForkedRecognisersStreamTheRecordingAndStillAnswerWholeOnes) {
  if (!have_pocketsphinx())
    GTEST_SKIP() << "built without pocketsphinx";
  auto& reg = start();
  model_spec spec{"pocketsphinx", {}};
  spec.instances = 2;
  auto h = reg.get_or_load("asr", spec);
  ASSERT_TRUE(h) << describe(h.error());
  EXPECT_GT(status_of("asr")->zygote_pid, 0);
  const auto& recordings = tools::default_recordings();
  auto pcm = [](const std::string& file) {
    std::ifstream in{file, std::ios::binary};
    std::vector<char> bytes{std::istreambuf_iterator<char>{in}, {}};
    std::vector<int16_t> samples(bytes.size() / 2);
    std::memcpy(samples.data(), bytes.data(), samples.size() * 2);
    return samples;
  };
  auto text = [](const tensor_map& m) {
    const auto& t = m.at("text");
    return std::string{reinterpret_cast<const char*>(t.data()), t.nbytes()};
  };
  auto s = h->open_session();
  ASSERT_TRUE(s) << describe(s.error());
  auto samples = pcm(recordings[0].file);
  size_t changes = 0;
  std::string last;
  for (size_t off = 0; off < samples.size(); off += 320) {
    auto n = std::min<size_t>(320, samples.size() - off);
    std::vector<int16_t> part(samples.begin() + static_cast<std::ptrdiff_t>(off),
                              samples.begin() + static_cast<std::ptrdiff_t>(off + n));
    auto partial = s->push({{"audio", *tensor::from_values<int16_t>(part, {static_cast<int64_t>(n)})}});
    ASSERT_TRUE(partial) << describe(partial.error());
    if (text(*partial) != last) {
      last = text(*partial);
      ++changes;
    }
  }
  EXPECT_GE(changes, 2u);
  auto final = s->finish();
  ASSERT_TRUE(final) << describe(final.error());
  EXPECT_EQ(text(*final), recordings[0].expected);
  // Whole recordings on both instances, the streamed one included.
  for (int round = 0; round < 2; ++round)
    for (const auto& r : recordings) {
      auto samples_r = pcm(r.file);
      auto out = h->infer({{"audio", *tensor::from_values<int16_t>(
                                       samples_r, {static_cast<int64_t>(samples_r.size())})}});
      ASSERT_TRUE(out) << describe(out.error());
      EXPECT_EQ(text(*out), r.expected) << r.file;
    }
}

} // namespace
} // namespace modelreg::test

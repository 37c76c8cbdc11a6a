#include "modelreg/actors/cluster.hpp"

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <caf/actor_system.hpp>
#include <caf/blocking_actor.hpp>
#include <caf/event_based_actor.hpp>
#include <caf/scoped_actor.hpp>
#include <caf/send.hpp>
#include <caf/stateful_actor.hpp>

#include <nlohmann/json.hpp>

#include "modelreg/actors/detail/reach.hpp"
#include "modelreg/actors/remote_registry.hpp"
#include "modelreg/cluster/placement.hpp"
#include "modelreg/log.hpp"
#include "modelreg/messages/cluster.hpp"
#include "modelreg/messages/error.hpp"

namespace modelreg {

namespace {

// -- local to a node: never passed by its door ------------------------------
using peer_up_atom = caf::atom_constant<caf::atom("cpeerup")>;
using peer_down_atom = caf::atom_constant<caf::atom("cpeerdown")>;
using cluster_tick_atom = caf::atom_constant<caf::atom("ctick")>;
using announce_atom = caf::atom_constant<caf::atom("cannounce")>;
using spread_tick_atom = caf::atom_constant<caf::atom("cspread")>;
using spread_add_atom = caf::atom_constant<caf::atom("cspreadadd")>;
using spread_session_atom = caf::atom_constant<caf::atom("cspreadses")>;

using clock_type = std::chrono::steady_clock;

int64_t wall_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
           std::chrono::system_clock::now().time_since_epoch())
    .count();
}

} // namespace

namespace detail {

/// What the cluster actor and the loader threads share.
struct cluster_shared {
  caf::actor_system* sys = nullptr;
  cluster_options options;

  mutable std::mutex mu;
  caf::actor actor;
  std::string self; ///< this node's name (set by start)
  /// False while a node given `join` addresses has reached none of them:
  /// alone, it would own every key and load what the cluster may hold.
  bool joined = false;
  std::vector<std::string> view; ///< live members, this node included, sorted
  uint64_t digest = 0;
  std::map<std::string, caf::actor> handles;                    ///< members' handles
  std::map<std::string, registry_actor> proxies;                ///< connect() links to holders
  /// One connect() at a time to each holder: loader threads placing
  /// several models there at once share the first one's link instead of
  /// each opening one and all but one closing theirs again.
  std::map<std::string, std::shared_ptr<std::mutex>> connecting;
  std::multimap<std::string, caf::weak_actor_ptr> forwarders;   ///< holder -> forwarding actors
  std::string status = "{}";
  bool stopped = false;
  /// Keys held here whose copy here is spare (cluster_node::spare_copy).
  std::set<std::string> spare;
  /// Members holding a ready copy of each key, by the last heartbeats.
  std::map<std::string, std::vector<std::string>> copies;

  /// The owner of `key` as this node sees it: its handle, name and the
  /// view digest; and this node's name. No handle before start().
  std::tuple<caf::actor, std::string, uint64_t, std::string> owner_of(const std::string& key) const {
    std::lock_guard<std::mutex> guard{mu};
    if (self.empty())
      return {caf::actor{}, "this node is not announced yet", 0, self};
    if (!joined) {
      std::string to;
      for (const auto& j : options.join)
        to += (to.empty() ? "" : ", ") + j;
      return {caf::actor{}, "this node has not joined the cluster yet (" + to + ")", 0, self};
    }
    auto owner = cluster::owner_of(key, view);
    if (owner == self)
      return {actor, owner, digest, self};
    auto i = handles.find(owner);
    if (i == handles.end())
      return {caf::actor{}, "its owner " + owner + " is not reachable yet", 0, self};
    return {i->second, owner, digest, self};
  }

  bool is_member(const std::string& address) const {
    std::lock_guard<std::mutex> guard{mu};
    return std::binary_search(view.begin(), view.end(), address);
  }
};

} // namespace detail

namespace {

using detail::cluster_shared;

/// A model that other members run: requests go to the copies' spreader
/// (below), which holds a lease on each copy it uses. `holder` is the
/// member it was placed on.
class forwarded_model final : public model {
public:
  forwarded_model(std::string description, std::string holder, caf::actor spreader)
    : description_(std::move(description)), holder_(std::move(holder)),
      spreader_(std::move(spreader)) {}

  caf::expected<tensor_map> infer(const tensor_map& inputs, tensor_allocator&) override {
    caf::scoped_actor self{spreader_.home_system()};
    caf::expected<tensor_map> out = make_error(errc::unavailable, "no answer from " + holder_);
    infer_request req;
    req.inputs = inputs;
    self->request(spreader_, caf::infinite, std::move(req))
      .receive([&](tensor_map& m) { out = std::move(m); },
               [&](caf::error& e) {
                 out = as_modelreg_error(std::move(e), errc::unavailable, holder_);
               });
    return out;
  }
  uint64_t memory_bytes() const override { return 0; }
  std::string describe() const override { return description_; }
  caf::actor served_by() const override { return spreader_; }
  std::string location() const override { return holder_; }

private:
  std::string description_;
  std::string holder_;
  caf::actor spreader_;
};

/// Errors after which another holder may do better.
bool try_elsewhere(const caf::error& err) {
  errc code;
  if (!to_errc(err, code))
    return true;
  switch (code) {
    case errc::out_of_memory:
    case errc::overloaded:
    case errc::unavailable:
    case errc::shutting_down:
    case errc::timeout:
    case errc::model_crashed:
    case errc::peer_disconnected:
      return true;
    default:
      return false;
  }
}

caf::expected<registry_actor> proxy_for(const std::shared_ptr<cluster_shared>& sh,
                                        const std::string& holder) {
  std::shared_ptr<std::mutex> turn;
  {
    std::lock_guard<std::mutex> guard{sh->mu};
    if (auto i = sh->proxies.find(holder); i != sh->proxies.end())
      return i->second;
    auto& t = sh->connecting[holder];
    if (!t)
      t = std::make_shared<std::mutex>();
    turn = t;
  }
  std::lock_guard<std::mutex> one_at_a_time{*turn};
  {
    std::lock_guard<std::mutex> guard{sh->mu};
    if (auto i = sh->proxies.find(holder); i != sh->proxies.end())
      return i->second; // the loader before this one connected
  }
  connect_options opts;
  opts.reconnect = false; // membership decides when a holder is gone
  opts.connect_timeout = sh->options.connect_timeout;
  auto proxy = connect(*sh->sys, holder, opts);
  if (!proxy)
    return proxy.error();
  std::lock_guard<std::mutex> guard{sh->mu};
  sh->proxies.emplace(holder, *proxy);
  return *proxy;
}

// -- the copies' spreader ---------------------------------------------------------

/// One copy of a model on another member, as a forwarded entry uses it.
struct spread_copy {
  std::string holder;
  model_handle lease; ///< keeps the copy there while this node uses it
  caf::actor forward; ///< the lease's forwarding actor
  uint64_t weight = 0; ///< rendezvous weight of (key, holder)
  std::shared_ptr<std::atomic<uint64_t>> in_flight = std::make_shared<std::atomic<uint64_t>>(0);
  clock_type::time_point last_used = clock_type::now();
  size_t sessions = 0; ///< open here through this node
};

/// A forwarded entry's model actor. It starts with the copy its placement
/// gave and learns of other copies from the heartbeats. It takes a lease on
/// one that outweighs every copy it uses (that copy is not spare), and on
/// the others only while its requests queue (one went to a copy where
/// another of this node's was in flight). A request goes to the copy of
/// highest rendezvous weight if nothing of this node's is in flight there,
/// else to the copy with the fewest requests in flight. A copy other than
/// that one that this node has not used for `spread_release` is let go, and
/// not taken again while the requests do not queue, so that an extra copy
/// nobody needs goes idle on its holder and is evicted. When a
/// copy's member leaves, its requests in flight get `unavailable` and the
/// others serve on; with no copy left the actor ends, and the registry drops
/// the entry (the next request places the model again).
struct spreader_state {
  static inline const char* name = "modelreg.cluster_copies";
  std::shared_ptr<cluster_shared> sh;
  std::string key;
  model_spec asked;
  std::vector<spread_copy> copies; ///< highest weight first
  std::set<std::string> adding;
  /// Open sessions (this process's ids) and the copy each runs on.
  std::map<uint64_t, std::string> sessions;
  /// A request queued behind another of this node's since the last tick:
  /// another copy would serve it sooner.
  bool queued = false;
  std::shared_ptr<spdlog::logger> log = log::get("modelreg.cluster");
};

using spreader_ptr = caf::stateful_actor<spreader_state>*;

constexpr auto spread_release = std::chrono::seconds{10};

void add_copy(spreader_ptr self, std::string holder, model_handle lease) {
  auto& st = self->state;
  spread_copy c;
  c.forward = caf::actor_cast<caf::actor>(lease.actor());
  c.weight = cluster::rendezvous_score(st.key, holder);
  c.holder = std::move(holder);
  c.lease = std::move(lease);
  self->monitor(c.forward);
  {
    std::lock_guard<std::mutex> guard{st.sh->mu};
    st.sh->forwarders.emplace(c.holder, caf::actor_cast<caf::weak_actor_ptr>(c.forward));
  }
  auto at = std::find_if(st.copies.begin(), st.copies.end(),
                         [&](const spread_copy& x) { return x.weight < c.weight; });
  st.copies.insert(at, std::move(c));
}

spread_copy& pick_copy(spreader_state& st) {
  auto& first = st.copies.front();
  if (first.in_flight->load() == 0)
    return first;
  auto best = st.copies.begin();
  for (auto i = st.copies.begin(); i != st.copies.end(); ++i)
    if (i->in_flight->load() < best->in_flight->load())
      best = i;
  return *best;
}

/// Takes a lease on `holder`'s copy (blocking: on a thread of its own).
void lease_copy(caf::blocking_actor* self, std::shared_ptr<cluster_shared> sh, caf::actor spreader,
                std::string key, model_spec asked, std::string holder) {
  auto proxy = proxy_for(sh, holder);
  if (!proxy) {
    caf::anon_send(spreader, spread_add_atom::value, holder, proxy.error());
    return;
  }
  self->request(*proxy, sh->options.connect_timeout + sh->options.member_timeout,
                get_or_load_atom::value, key, asked)
    .receive(
      [&](model_handle& h) { caf::anon_send(spreader, spread_add_atom::value, holder, std::move(h)); },
      [&](caf::error& e) { caf::anon_send(spreader, spread_add_atom::value, holder, std::move(e)); });
}

caf::behavior spreader(spreader_ptr self, std::shared_ptr<cluster_shared> sh, std::string key,
                       model_spec asked, std::string holder, model_handle lease) {
  auto& st = self->state;
  st.sh = std::move(sh);
  st.key = std::move(key);
  st.asked = std::move(asked);
  add_copy(self, std::move(holder), std::move(lease));
  self->set_down_handler([self](const caf::down_msg& dm) {
    auto& st = self->state;
    auto gone = std::find_if(st.copies.begin(), st.copies.end(),
                             [&](const spread_copy& c) { return c.forward.address() == dm.source; });
    if (gone == st.copies.end())
      return;
    st.log->info("{}: the copy on {} is gone", st.key, gone->holder);
    st.copies.erase(gone);
    if (st.copies.empty())
      self->quit(caf::exit_reason::remote_link_unreachable);
  });
  self->delayed_send(self, st.sh->options.heartbeat_interval, spread_tick_atom::value);
  return {
    [self](infer_request& req) -> caf::result<tensor_map> {
      auto& c = pick_copy(self->state);
      c.last_used = clock_type::now();
      if (c.in_flight->fetch_add(1) > 0)
        self->state.queued = true;
      caf::response_promise rp;
      if (!req.reply)
        rp = self->make_response_promise();
      // A request still on its way to a copy whose member just left is
      // dropped with its forwarder: `unavailable`, like those in flight there.
      req.reply = std::make_shared<reply_sink>(
        [in_flight = c.in_flight, rp, outer = req.reply](caf::expected<tensor_map> out) mutable {
          --*in_flight;
          if (outer)
            outer->deliver(std::move(out));
          else
            deliver_outputs(rp, std::move(out));
        },
        std::function<bool()>{},
        make_error(errc::unavailable, "'" + self->state.key + "': its copy on " + c.holder +
                                        " went away; the next request places it again"));
      caf::anon_send(c.forward, std::move(req));
      return caf::delegated<tensor_map>{};
    },
    [self](session_request& req) -> caf::result<tensor_map> {
      // A session opens on the first copy and stays on the copy it opened on.
      auto& st = self->state;
      spread_copy* c = nullptr;
      if (req.op == session_op::open) {
        c = &st.copies.front();
      } else if (auto i = st.sessions.find(req.session); i != st.sessions.end()) {
        for (auto& x : st.copies)
          if (x.holder == i->second)
            c = &x;
        if (req.op != session_op::push) {
          if (c != nullptr && c->sessions > 0)
            --c->sessions;
          st.sessions.erase(i);
        }
      }
      if (c == nullptr) {
        auto err = make_error(errc::invalid_argument,
                              "no open session " + std::to_string(req.session) + " on '" +
                                st.key + "' (finished, cancelled, or its member left)");
        if (req.reply) {
          req.reply->deliver(std::move(err));
          return caf::delegated<tensor_map>{};
        }
        return err;
      }
      c->last_used = clock_type::now();
      if (req.op != session_op::open)
        return self->delegate(caf::actor_cast<model_actor>(c->forward), std::move(req));
      caf::response_promise rp;
      if (!req.reply)
        rp = self->make_response_promise();
      req.reply = std::make_shared<reply_sink>(
        [rp, outer = req.reply, me = caf::actor_cast<caf::actor>(self),
         holder = c->holder](caf::expected<tensor_map> out) mutable {
          if (out)
            if (auto s = out->find("session"); s != out->end() && s->second.type() == dtype::u64)
              // Recorded before the caller learns the id, so before its first push.
              caf::anon_send(me, spread_session_atom::value, (*s->second.values<uint64_t>())[0],
                             holder);
          if (outer)
            outer->deliver(std::move(out));
          else
            deliver_outputs(rp, std::move(out));
        });
      caf::anon_send(c->forward, std::move(req));
      return caf::delegated<tensor_map>{};
    },
    [self](spread_session_atom, uint64_t session, std::string& holder) {
      auto& st = self->state;
      for (auto& x : st.copies)
        if (x.holder == holder)
          ++x.sessions;
      st.sessions[session] = std::move(holder);
    },
    [self](spread_tick_atom) {
      auto& st = self->state;
      std::vector<std::string> holders;
      std::string me;
      {
        std::lock_guard<std::mutex> guard{st.sh->mu};
        if (auto i = st.sh->copies.find(st.key); i != st.sh->copies.end())
          holders = i->second;
        me = st.sh->self;
      }
      for (const auto& h : holders) {
        bool known = st.adding.count(h) > 0 ||
                     std::any_of(st.copies.begin(), st.copies.end(),
                                 [&](const spread_copy& c) { return c.holder == h; });
        if (known || h == me)
          continue;
        // A copy of lower weight is spare: wanted only while requests queue
        // (else a copy let go below would be taken again at once, and its
        // holder could never evict it).
        bool outweighs = cluster::rendezvous_score(st.key, h) > st.copies.front().weight;
        if (!outweighs && !st.queued)
          continue;
        st.adding.insert(h);
        self->spawn<caf::detached>(lease_copy, st.sh, caf::actor_cast<caf::actor>(self), st.key,
                                   st.asked, h);
      }
      // Let go of extra copies this node no longer needs.
      auto now = clock_type::now();
      for (auto i = std::next(st.copies.begin()); i != st.copies.end();) {
        if (i->in_flight->load() == 0 && i->sessions == 0 && now - i->last_used > spread_release) {
          st.log->info("{}: no longer using the copy on {}", st.key, i->holder);
          self->demonitor(i->forward);
          i = st.copies.erase(i);
        } else {
          ++i;
        }
      }
      st.queued = false;
      self->delayed_send(self, st.sh->options.heartbeat_interval, spread_tick_atom::value);
    },
    [self](spread_add_atom, std::string& holder, model_handle& lease) {
      auto& st = self->state;
      st.adding.erase(holder);
      st.log->info("{}: also using the copy on {}", st.key, holder);
      add_copy(self, std::move(holder), std::move(lease));
    },
    [self](spread_add_atom, std::string& holder, caf::error& err) {
      auto& st = self->state;
      st.adding.erase(holder);
      st.log->debug("{}: cannot use the copy on {}: {}", st.key, holder, describe(err));
    },
  };
}

/// The placement hook's loader: runs on a loader thread, may block.
caf::expected<model_ptr> load_placed(const std::shared_ptr<cluster_shared>& sh,
                                     const std::string& key, const model_spec& asked,
                                     const loader_fn& here) {
  auto log = log::get("modelreg.cluster");
  const auto& o = sh->options;
  auto deadline = clock_type::now() + o.load_timeout;
  auto remaining = [&] {
    return std::max(std::chrono::duration_cast<caf::timespan>(deadline - clock_type::now()),
                    caf::timespan{std::chrono::milliseconds{1}});
  };
  caf::scoped_actor self{*sh->sys};
  std::vector<std::string> exclude;
  std::map<std::string, int> unreached; // holder -> failed attempts to reach it
  constexpr int reach_tries = 3;
  std::string passed_over; // why members were excluded, for the final error
  int full_answers = 0;
  caf::error last = make_error(errc::load_timeout, "placing '" + key + "' took longer than " +
                                                     std::to_string(o.load_timeout.count()) +
                                                     " ms");
  auto pause = [&] {
    std::this_thread::sleep_for(std::min(o.heartbeat_interval, std::chrono::milliseconds{100}));
  };
  while (clock_type::now() < deadline) {
    {
      std::lock_guard<std::mutex> guard{sh->mu};
      if (sh->stopped)
        return make_error(errc::shutting_down, "the node is leaving the cluster");
    }
    // (Not a structured binding: clang 14 cannot capture one in a lambda.)
    auto asked_owner = sh->owner_of(key);
    const auto& owner = std::get<0>(asked_owner);
    const auto& owner_name = std::get<1>(asked_owner);
    auto digest = std::get<2>(asked_owner);
    const auto& me = std::get<3>(asked_owner);
    if (!owner) {
      last = make_error(errc::unavailable, "cannot place '" + key + "': " + owner_name);
      pause();
      continue;
    }
    std::optional<placement> where;
    caf::error err;
    auto ask_for = std::min(remaining(), caf::timespan{o.connect_timeout + o.member_timeout});
    self->request(owner, ask_for, place_atom::value, key, asked, me, digest, exclude)
      .receive([&](placement& p) { where = std::move(p); },
               [&](caf::error& e) { err = as_modelreg_error(std::move(e), errc::unavailable,
                                                            "the owner " + owner_name); });
    if (!where) {
      if (!try_elsewhere(err))
        return err; // the request is wrong
      // No member can hold it: once more after a heartbeat or two (a
      // promise whose load never came lapses; a member may free room),
      // then that is the answer.
      if (is(err, errc::out_of_memory) && ++full_answers > 2)
        return passed_over.empty() ? err : make_error(errc::out_of_memory, describe(err) + passed_over);
      last = err;
      log->debug("{}: asking {} again: {}", key, owner_name, describe(err));
      if (is(err, errc::out_of_memory))
        std::this_thread::sleep_for(2 * o.heartbeat_interval);
      else
        pause();
      continue;
    }
    if (where->holder == me) {
      // The owner had this node promise the bytes before it answered.
      log->info("{}: loading here (placed by {})", key, owner_name);
      return here();
    }
    auto proxy = proxy_for(sh, where->holder);
    if (!proxy) {
      last = proxy.error();
      // A member the owner has promised the bytes on is worth a few tries
      // (a busy one may be slow to shake hands): another copy elsewhere
      // would need room the cluster may not have.
      if (sh->is_member(where->holder) && ++unreached[where->holder] < reach_tries) {
        log->info("{}: cannot reach {} ({}); trying again", key, where->holder,
                  describe(last));
        pause();
        continue;
      }
      log->info("{}: cannot reach {} ({}); asking for another member", key, where->holder,
                describe(last));
      passed_over += "; " + where->holder + " was passed over: " + describe(last);
      exclude.push_back(where->holder);
      continue;
    }
    std::optional<model_handle> handle;
    self->request(*proxy, remaining(), get_or_load_atom::value, key, asked)
      .receive([&](model_handle& h) { handle = std::move(h); },
               [&](caf::error& e) {
                 err = as_modelreg_error(std::move(e), errc::unavailable, where->holder);
               });
    if (!handle) {
      if (!try_elsewhere(err))
        return err;
      log->info("{}: {} could not take it ({}); asking for another member", key, where->holder,
                describe(err));
      passed_over += "; " + where->holder + " was passed over: " + describe(err);
      last = err;
      exclude.push_back(where->holder);
      continue;
    }
    auto description = handle->description();
    auto spread = sh->sys->spawn(spreader, sh, key, asked, where->holder, std::move(*handle));
    if (!sh->is_member(where->holder)) {
      caf::anon_send_exit(spread, caf::exit_reason::user_shutdown);
      last = make_error(errc::unavailable, where->holder + " left the cluster");
      exclude.push_back(where->holder);
      continue;
    }
    log->debug("{}: forwarded to {}", key, where->holder);
    return model_ptr{
      std::make_shared<forwarded_model>(std::move(description), where->holder, std::move(spread))};
  }
  return last;
}

// -- the cluster actor ----------------------------------------------------------

struct peer {
  caf::actor handle;
  member_info info;
  clock_type::time_point last_seen;
};

struct pending_copy {
  clock_type::time_point deadline;
  uint64_t expected = 0;
  bool may_evict = false;
};

struct cluster_state {
  static inline const char* name = "modelreg.cluster";
  std::shared_ptr<cluster_shared> sh;
  registry_actor local;
  member_info me;
  std::map<std::string, peer> peers;
  /// Addresses to reach: --join ones always, learned ones until reached.
  std::set<std::string> wanted;
  std::set<std::string> joins;
  std::set<std::string> connecting;
  std::map<std::string, clock_type::time_point> retry_at;
  std::map<std::string, int> failures;
  /// Owner: copies being placed, key -> holder -> what was promised.
  std::map<std::string, std::map<std::string, pending_copy>> pending;
  /// Owner: callers waiting while a holder is chosen, by key.
  std::map<std::string, std::vector<caf::typed_response_promise<placement>>> choosing;
  /// Holder: bytes promised to loads placed here, and when.
  struct reservation {
    uint64_t bytes = 0;
    clock_type::time_point since;
    uint64_t ticket = 0;
  };
  std::map<std::string, reservation> reserved;
  /// Owner: numbers its reservations, so that it can cancel one.
  uint64_t next_ticket = 0;
  /// Sizes seen in heartbeats, for models loaded before.
  std::map<std::string, uint64_t> sizes;
  /// Owner: heartbeats in a row a key's requests waited too long.
  std::map<std::string, int> hot;
  // For rates: the last heartbeat's counters.
  clock_type::time_point last_tick = clock_type::now();
  uint64_t last_requests = 0;
  std::map<std::string, std::pair<uint64_t, double>> last_queue;
  /// When a member last joined: placing waits two heartbeats after, until
  /// every member's holdings have reached this node.
  clock_type::time_point view_changed = clock_type::now();
  std::shared_ptr<spdlog::logger> log = log::get("modelreg.cluster");
};

using cluster_ptr = caf::stateful_actor<cluster_state>*;

bool settling(cluster_ptr self) {
  auto& st = self->state;
  {
    std::lock_guard<std::mutex> guard{st.sh->mu};
    if (!st.sh->joined)
      return true; // alone before joining: it knows nothing to own
  }
  return clock_type::now() - st.view_changed < 2 * st.sh->options.heartbeat_interval;
}

std::vector<std::string> view_of(cluster_ptr self) {
  std::vector<std::string> v{self->state.me.address};
  for (const auto& [address, p] : self->state.peers)
    v.push_back(address);
  std::sort(v.begin(), v.end());
  return v;
}

void publish_view(cluster_ptr self) {
  auto& st = self->state;
  auto v = view_of(self);
  st.me.members = v;
  std::lock_guard<std::mutex> guard{st.sh->mu};
  if (!st.peers.empty())
    st.sh->joined = true; // for good: later, alone is a cluster of one
  st.sh->digest = cluster::view_digest(v);
  st.sh->view = std::move(v);
  st.sh->handles.clear();
  for (const auto& [address, p] : st.peers)
    st.sh->handles.emplace(address, p.handle);
}

uint64_t digest_of(cluster_ptr self) {
  return cluster::view_digest(view_of(self));
}

void add_peer(cluster_ptr self, const caf::actor& handle, member_info info) {
  auto& st = self->state;
  if (info.address.empty() || info.address == st.me.address || !handle)
    return;
  auto i = st.peers.find(info.address);
  if (i != st.peers.end()) {
    if (i->second.info.incarnation == info.incarnation || info.incarnation == 0) {
      i->second.info = std::move(info);
      i->second.last_seen = clock_type::now();
      return;
    }
    st.log->info("member {} restarted", info.address);
    st.peers.erase(i); // its old incarnation's leases went with its connection
  }
  self->monitor(handle);
  st.wanted.erase(info.address);
  st.failures.erase(info.address);
  st.log->info("member {} joined ({} members)", info.address, st.peers.size() + 2);
  // What the newcomer holds, and what the owners it takes keys from were
  // placing, reaches everyone with the next heartbeats: placing waits.
  // (When a member leaves, the others' holdings are already known.)
  st.view_changed = clock_type::now();
  auto address = info.address;
  st.peers[address] = peer{handle, std::move(info), clock_type::now()};
  publish_view(self);
}

void learn(cluster_ptr self, const std::vector<std::string>& addresses) {
  auto& st = self->state;
  for (const auto& a : addresses)
    if (a != st.me.address && st.peers.count(a) == 0)
      st.wanted.insert(a);
}

void remove_peer(cluster_ptr self, std::string address, const std::string& why) {
  auto& st = self->state; // (`address` is a copy: callers pass the key it erases)
  auto i = st.peers.find(address);
  if (i == st.peers.end())
    return;
  self->demonitor(i->second.handle);
  st.peers.erase(i);
  st.log->warn("member {} left: {} ({} members)", address, why, st.peers.size() + 1);
  for (auto& [key, copies] : st.pending)
    copies.erase(address);
  if (st.joins.count(address) > 0)
    st.wanted.insert(address); // keep trying: it may come back
  publish_view(self);
  // Every model forwarded there is dropped now (callers in flight get
  // `unavailable`); the next request places it again.
  std::vector<caf::weak_actor_ptr> forwarders;
  registry_actor proxy;
  {
    std::lock_guard<std::mutex> guard{st.sh->mu};
    auto [b, e] = st.sh->forwarders.equal_range(address);
    for (auto j = b; j != e; ++j)
      forwarders.push_back(j->second);
    st.sh->forwarders.erase(b, e);
    if (auto j = st.sh->proxies.find(address); j != st.sh->proxies.end()) {
      proxy = j->second;
      st.sh->proxies.erase(j);
    }
  }
  for (const auto& weak : forwarders)
    if (auto fwd = weak.lock())
      caf::anon_send_exit(caf::actor_cast<caf::actor>(fwd), caf::exit_reason::remote_link_unreachable);
  if (proxy)
    caf::anon_send(proxy, shutdown_atom::value);
}

/// Starts reaching `address` (blocking work on a thread of its own).
void reach(cluster_ptr self, const std::string& address) {
  auto& st = self->state;
  if (st.connecting.count(address) > 0)
    return;
  st.connecting.insert(address);
  auto run = [](caf::blocking_actor*, std::string address, caf::actor cluster,
                std::chrono::milliseconds timeout) {
    auto door = reach_node(cluster.home_system(), address, timeout);
    if (door)
      caf::anon_send(cluster, peer_up_atom::value, address, *door);
    else
      caf::anon_send(cluster, peer_down_atom::value, address, describe(door.error()));
  };
  self->system().spawn(run, address, caf::actor_cast<caf::actor>(self),
                                      st.sh->options.connect_timeout);
}

void retry_later(cluster_ptr self, const std::string& address, const std::string& why) {
  auto& st = self->state;
  auto n = ++st.failures[address];
  // 250 ms doubling to 4 s between attempts.
  auto wait = std::chrono::milliseconds{250} * (1 << std::min(n - 1, 4));
  st.retry_at[address] = clock_type::now() + wait;
  if (n == 1 || n % 20 == 0)
    st.log->warn("cannot join {}: {} (retrying)", address, why);
  if (st.joins.count(address) == 0 && n >= 3)
    st.wanted.erase(address); // learned, and gone: the others will drop it too
}

uint64_t expected_of(cluster_ptr self, const std::string& key, const model_spec& asked) {
  auto& st = self->state;
  const model_spec* spec = &asked;
  if (asked.backend.empty() && st.sh->options.catalog)
    if (const auto* named = st.sh->options.catalog->find(key))
      spec = named;
  if (spec->expected_bytes != 0)
    return spec->expected_bytes;
  auto i = st.sizes.find(key);
  return i == st.sizes.end() ? 0 : i->second;
}

/// Every live member's latest word, this node's own included.
std::vector<const member_info*> members(cluster_ptr self) {
  std::vector<const member_info*> out{&self->state.me};
  for (const auto& [address, p] : self->state.peers)
    out.push_back(&p.info);
  return out;
}

caf::actor handle_of(cluster_ptr self, const std::string& address) {
  if (address == self->state.me.address)
    return caf::actor_cast<caf::actor>(self);
  auto i = self->state.peers.find(address);
  return i == self->state.peers.end() ? caf::actor{} : i->second.handle;
}

/// Chooses a member for a new copy of `key` among those not in `skip`.
caf::expected<placement> choose(cluster_ptr self, const std::string& key, uint64_t expected,
                                const std::set<std::string>& skip) {
  std::vector<cluster::node_load> candidates;
  for (const auto* m : members(self)) {
    if (skip.count(m->address) > 0)
      continue;
    cluster::node_load n;
    n.name = m->address;
    n.budget = m->budget_bytes;
    n.used = m->bytes_in_use + m->reserved_bytes;
    for (const auto& h : m->models)
      if (h.ready && h.handles == 0 && !h.pinned)
        n.evictable += h.memory_bytes;
    // (A heartbeat a moment old: a member that has less room by now
    // refuses the reservation, and the next is asked.)
    n.requests_per_s = m->requests_per_s;
    candidates.push_back(std::move(n));
  }
  auto choice = cluster::choose_holder(key, expected, candidates);
  if (!choice) {
    std::string free;
    for (const auto& c : candidates)
      free += (free.empty() ? "" : ", ") + c.name + " " +
              (c.budget == 0 ? std::string{"unlimited"}
                             : std::to_string(c.budget > c.used ? c.budget - c.used : 0) + " of " +
                                 std::to_string(c.budget) + " bytes free");
    return make_error(errc::out_of_memory,
                      "no member can hold '" + key + "' (" + std::to_string(expected) +
                        " bytes expected): " +
                        (free.empty() ? "every member was tried" : free));
  }
  return placement{candidates[choice->index].name, expected, choice->evict};
}

using placed_fn = std::function<void(caf::expected<placement>)>;

/// Places a new copy of `key`: chooses a member, has it promise the bytes
/// (so owners placing there at once cannot overfill it), and if it cannot,
/// tries the next. `done` gets the holder, recorded as pending, or why none.
void place_copy(cluster_ptr self, const std::string& key, uint64_t expected,
                std::set<std::string> skip, placed_fn done) {
  auto p = choose(self, key, expected, skip);
  if (!p) {
    done(std::move(p.error()));
    return;
  }
  auto holder = p->holder;
  auto h = handle_of(self, holder);
  if (!h) {
    skip.insert(holder);
    place_copy(self, key, expected, std::move(skip), std::move(done));
    return;
  }
  // A reservation answered too late (a busy member) still holds: the owner
  // cancels it by its ticket when it gives up on that member.
  auto ticket = static_cast<uint64_t>(self->state.me.incarnation) * 1000003u +
                ++self->state.next_ticket;
  self->request(h, self->state.sh->options.connect_timeout + self->state.sh->options.member_timeout,
                reserve_atom::value, key, expected, p->may_evict, ticket)
    .then(
      [self, key, where = *p, done](bool) {
        auto& st = self->state;
        st.pending[key][where.holder] = pending_copy{
          clock_type::now() + st.sh->options.load_timeout, where.expected_bytes, where.may_evict};
        st.log->info("{}: placed on {}{}", key, where.holder,
                     where.may_evict ? " (evicting idle models)" : "");
        done(where);
      },
      [self, key, expected, skip, holder, h, ticket, done](caf::error& err) mutable {
        self->state.log->info("{}: {} cannot take it: {}", key, holder, describe(err));
        self->send(h, unreserve_atom::value, key, ticket);
        skip.insert(holder);
        place_copy(self, key, expected, std::move(skip), std::move(done));
      });
}

/// Ends the choice in progress for `key`: every caller waiting on it hears
/// the outcome.
void answer_choosers(cluster_ptr self, const std::string& key,
                     const caf::expected<placement>& p) {
  auto waiters = std::move(self->state.choosing[key]);
  self->state.choosing.erase(key);
  for (auto& w : waiters)
    if (p)
      w.deliver(*p);
    else
      w.deliver(p.error());
}

caf::result<placement> place(cluster_ptr self, const std::string& key, const model_spec& asked,
                             const std::string& requester, uint64_t digest,
                             const std::vector<std::string>& exclude) {
  auto& st = self->state;
  auto view = view_of(self);
  if (digest != cluster::view_digest(view))
    return make_error(errc::unavailable, "membership is changing: " + requester + " and " +
                                           st.me.address + " see different members (retry)");
  if (auto owner = cluster::owner_of(key, view); owner != st.me.address)
    return make_error(errc::unavailable,
                      st.me.address + " does not own '" + key + "' (" + owner + " does)");
  auto now = clock_type::now();
  auto& copies = st.pending[key];
  for (auto i = copies.begin(); i != copies.end();)
    if (i->second.deadline < now ||
        std::find(exclude.begin(), exclude.end(), i->first) != exclude.end())
      i = copies.erase(i);
    else
      ++i;
  if (auto i = copies.find(requester); i != copies.end())
    return placement{requester, i->second.expected, i->second.may_evict};
  auto excluded = [&](const std::string& a) {
    return std::find(exclude.begin(), exclude.end(), a) != exclude.end();
  };
  // Held somewhere: the least busy copy. Being loaded: that load.
  const member_info* best = nullptr;
  const member_info* loading = nullptr;
  for (const auto* m : members(self)) {
    if (excluded(m->address))
      continue;
    for (const auto& h : m->models) {
      if (h.key != key)
        continue;
      if (h.ready && (best == nullptr || m->requests_per_s < best->requests_per_s))
        best = m;
      else if (!h.ready && loading == nullptr)
        loading = m;
    }
  }
  if (best != nullptr)
    return placement{best->address, 0, false};
  if (loading != nullptr)
    return placement{loading->address, 0, false};
  if (!copies.empty()) {
    const auto& [holder, c] = *copies.begin();
    return placement{holder, c.expected, c.may_evict};
  }
  // Nobody holds it, as far as this owner knows: right after the members
  // changed it may not know yet (the holdings travel with heartbeats).
  if (settling(self))
    return make_error(errc::unavailable, "membership changed just now: " + st.me.address +
                                           " waits for every member's holdings (retry)");
  // One choice for every caller asking meanwhile.
  auto rp = self->make_response_promise<placement>();
  auto [waiting, first] = st.choosing.try_emplace(key);
  waiting->second.push_back(rp);
  if (!first)
    return rp;
  std::set<std::string> skip(exclude.begin(), exclude.end());
  place_copy(self, key, expected_of(self, key, asked), std::move(skip),
             [self, key](caf::expected<placement> p) { answer_choosers(self, key, p); });
  return rp;
}

/// Holder: drops promises whose load is done (its bytes are in use now) or
/// never came; returns the bytes still promised.
uint64_t prune_reservations(cluster_ptr self, const registry_snapshot& snap) {
  auto& st = self->state;
  std::set<std::string> loading;
  for (const auto& m : snap.models)
    if (m.state == model_state::loading)
      loading.insert(m.key);
  // A load placed here starts when its caller's request arrives: give it
  // that long before the promise lapses.
  auto grace = st.sh->options.connect_timeout + st.sh->options.member_timeout +
               std::chrono::seconds{5};
  auto now = clock_type::now();
  uint64_t promised = 0;
  for (auto i = st.reserved.begin(); i != st.reserved.end();) {
    if (loading.count(i->first) == 0 && now - i->second.since > grace) {
      i = st.reserved.erase(i);
      continue;
    }
    bool ready = false;
    for (const auto& m : snap.models)
      ready = ready || (m.key == i->first && m.state == model_state::ready && m.holder.empty());
    if (ready) {
      i = st.reserved.erase(i);
      continue;
    }
    promised += i->second.bytes;
    ++i;
  }
  st.me.reserved_bytes = promised;
  return promised;
}

/// Holder: promise `expected` bytes to a load the owner places here.
caf::result<bool> reserve(cluster_ptr self, const std::string& key, uint64_t expected,
                          bool may_evict, uint64_t ticket) {
  auto rp = self->make_response_promise<bool>();
  self->request(self->state.local, self->state.sh->options.connect_timeout, list_atom::value)
    .then(
      [self, rp, key, expected, may_evict, ticket](registry_snapshot& snap) mutable {
        auto& st = self->state;
        st.reserved.erase(key);
        auto promised = prune_reservations(self, snap);
        uint64_t evictable = 0;
        for (const auto& m : snap.models)
          if (m.state == model_state::ready && m.handles == 0 && m.in_flight == 0 &&
              !m.pinned && m.holder.empty())
            evictable += m.memory_bytes;
        auto budget = snap.totals.max_memory_bytes;
        auto used = snap.totals.bytes_in_use + promised;
        bool fits = budget == 0 || expected == 0 || used + expected <= budget ||
                    (may_evict && used - std::min(used, evictable) + expected <= budget);
        if (!fits) {
          rp.deliver(make_error(
            errc::out_of_memory,
            st.me.address + " cannot take '" + key + "': it needs " + std::to_string(expected) +
              " bytes, " + std::to_string(budget > used ? budget - used : 0) + " of " +
              std::to_string(budget) + " are free"));
          return;
        }
        st.reserved[key] = {expected, clock_type::now(), ticket};
        st.me.reserved_bytes = promised + expected;
        rp.deliver(true);
      },
      [rp](caf::error& err) mutable { rp.deliver(std::move(err)); });
  return rp;
}

/// This node's word for the heartbeat, from the registry's snapshot.
void refresh(cluster_ptr self, const registry_snapshot& snap) {
  auto& st = self->state;
  auto now = clock_type::now();
  double dt = std::max(1e-3, std::chrono::duration<double>(now - st.last_tick).count());
  st.last_tick = now;
  auto& me = st.me;
  me.budget_bytes = snap.totals.max_memory_bytes;
  me.bytes_in_use = snap.totals.bytes_in_use;
  me.connections = st.sh->options.connections ? st.sh->options.connections() : 0;
  me.models.clear();
  me.loads.clear();
  uint64_t requests = 0;
  std::map<std::string, uint64_t> queue_us;
  if (const auto& metrics = st.sh->options.metrics) {
    for (const auto& [key, m] : metrics->models()) {
      requests += m->requests.value();
      if (auto n = m->loads.value(); n > 0)
        me.loads[key] = n;
      auto q = m->queue_seconds.read();
      auto& last = st.last_queue[key];
      if (q.count > last.first)
        queue_us[key] =
          static_cast<uint64_t>((q.sum - last.second) / static_cast<double>(q.count - last.first) * 1e6);
      last = {q.count, q.sum};
    }
  }
  me.requests_per_s =
    static_cast<uint64_t>(static_cast<double>(requests - std::min(requests, st.last_requests)) / dt);
  st.last_requests = requests;
  prune_reservations(self, snap);
  me.forwarded.clear();
  for (const auto& m : snap.models)
    if (!m.holder.empty())
      me.forwarded.push_back(m.key);
  for (const auto& m : snap.models) {
    if (!m.holder.empty() || (m.state != model_state::ready && m.state != model_state::loading))
      continue;
    // A forwarded load in progress is not known apart from a local one
    // until it is ready; only loads placed here are reported loading.
    if (m.state == model_state::loading && st.reserved.count(m.key) == 0)
      continue;
    held_model h;
    h.key = m.key;
    h.memory_bytes = m.memory_bytes;
    h.ready = m.state == model_state::ready;
    h.handles = m.handles;
    h.pinned = m.pinned;
    if (auto q = queue_us.find(m.key); q != queue_us.end())
      h.queue_us = q->second;
    me.models.push_back(std::move(h));
  }
}

/// Owner: keeps min_copies of its keys, and adds a copy when requests queue.
void own_copies(cluster_ptr self) {
  auto& st = self->state;
  const auto& cat = st.sh->options.catalog;
  if (!cat)
    return;
  if (settling(self))
    return;
  auto view = view_of(self);
  auto now = clock_type::now();
  for (const auto& key : cat->names()) {
    const auto* spec = cat->find(key);
    if (spec == nullptr || (spec->min_copies == 0 && spec->copy_limit() <= 1))
      continue;
    if (cluster::owner_of(key, view) != st.me.address)
      continue;
    std::set<std::string> holders;
    bool all_hot = true;
    size_t ready = 0;
    for (const auto* m : members(self))
      for (const auto& h : m->models)
        if (h.key == key) {
          holders.insert(m->address);
          if (h.ready) {
            ++ready;
            all_hot = all_hot && h.queue_us > static_cast<uint64_t>(
                                                std::chrono::duration_cast<std::chrono::microseconds>(
                                                  st.sh->options.scale_up_queue)
                                                  .count());
          }
        }
    auto& copies = st.pending[key];
    for (auto i = copies.begin(); i != copies.end();)
      i = i->second.deadline < now ? copies.erase(i) : std::next(i);
    for (const auto& [holder, c] : copies)
      holders.insert(holder);
    // A member that forwards the model keeps its entry (and its callers'
    // leases): a new copy goes to one that does not.
    auto skip = holders;
    for (const auto* m : members(self))
      if (std::find(m->forwarded.begin(), m->forwarded.end(), key) != m->forwarded.end())
        skip.insert(m->address);
    bool add = false, pin = false;
    if (holders.size() < spec->min_copies) {
      add = pin = true;
    } else if (ready > 0 && copies.empty() && holders.size() < spec->copy_limit() && all_hot) {
      if (++st.hot[key] >= st.sh->options.scale_up_intervals) {
        add = true;
        st.hot[key] = 0;
        st.log->info("{}: requests wait longer than {} ms: adding a copy", key,
                     st.sh->options.scale_up_queue.count());
      }
    } else {
      st.hot[key] = 0;
    }
    if (!add || !copies.empty())
      continue;
    if (st.choosing.count(key) > 0)
      continue;
    st.choosing[key]; // a choice in progress: no second one meanwhile
    place_copy(self, key, expected_of(self, key, *spec), skip,
               [self, key, pin](caf::expected<placement> p) {
                 answer_choosers(self, key, p);
                 if (!p) {
                   self->state.log->debug("{}: no member for another copy: {}", key,
                                          describe(p.error()));
                   return;
                 }
                 if (auto h = handle_of(self, p->holder))
                   self->send(h, load_here_atom::value, key, pin);
               });
  }
}

void tick(cluster_ptr self) {
  auto& st = self->state;
  self->request(st.local, st.sh->options.heartbeat_interval * 2, list_atom::value)
    .then(
      [self](registry_snapshot& snap) {
        auto& st = self->state;
        refresh(self, snap);
        // Copies held here that are spare: another member holds the key
        // ready and outweighs this one for it.
        std::set<std::string> spare;
        for (auto& h : st.me.models) {
          if (!h.ready)
            continue;
          auto mine = cluster::rendezvous_score(h.key, st.me.address);
          for (const auto& [address, p] : st.peers)
            for (const auto& other : p.info.models)
              if (other.key == h.key && other.ready &&
                  cluster::rendezvous_score(h.key, address) > mine)
                spare.insert(h.key);
          h.spare = spare.count(h.key) > 0;
        }
        std::map<std::string, std::vector<std::string>> copies;
        for (const auto* m : members(self))
          for (const auto& h : m->models)
            if (h.ready)
              copies[h.key].push_back(m->address);
        {
          std::lock_guard<std::mutex> guard{st.sh->mu};
          st.sh->copies = std::move(copies);
        }
        for (const auto& m : st.me.models)
          if (m.ready && m.memory_bytes > 0)
            st.sizes[m.key] = m.memory_bytes;
        auto now = clock_type::now();
        std::vector<std::string> silent;
        for (auto& [address, p] : st.peers) {
          for (const auto& m : p.info.models)
            if (m.ready && m.memory_bytes > 0)
              st.sizes[m.key] = m.memory_bytes;
          if (now - p.last_seen > st.sh->options.member_timeout)
            silent.push_back(address);
          else
            self->send(p.handle, heartbeat_atom::value, st.me);
        }
        for (const auto& address : silent)
          remove_peer(self, address,
                      "silent for more than " +
                        std::to_string(st.sh->options.member_timeout.count()) + " ms");
        // Copies the owner promised are in place once their holder says so.
        for (auto& [key, copies] : st.pending)
          for (auto i = copies.begin(); i != copies.end();) {
            bool reported = false;
            for (const auto* m : members(self))
              if (m->address == i->first)
                for (const auto& h : m->models)
                  reported = reported || (h.key == key && h.ready);
            i = reported ? copies.erase(i) : std::next(i);
          }
        own_copies(self);
        for (const auto& address : std::vector<std::string>(st.wanted.begin(), st.wanted.end()))
          if (st.peers.count(address) == 0 && st.connecting.count(address) == 0 &&
              st.retry_at[address] <= now)
            reach(self, address);
        // The status answer's "cluster" object.
        auto list = nlohmann::json::array();
        auto describe_member = [&](const member_info& m, bool is_self, int64_t seen_ms) {
          auto models = nlohmann::json::array();
          for (const auto& h : m.models)
            models.push_back({{"key", h.key},
                              {"memory_bytes", h.memory_bytes},
                              {"state", h.ready ? "ready" : "loading"},
                              {"handles", h.handles},
                              {"pinned", h.pinned},
                              {"spare", h.spare},
                              {"queue_us", h.queue_us}});
          list.push_back({{"address", m.address},
                          {"self", is_self},
                          {"models", models},
                          {"bytes_in_use", m.bytes_in_use},
                          {"reserved_bytes", m.reserved_bytes},
                          {"budget_bytes", m.budget_bytes},
                          {"connections", m.connections},
                          {"requests_per_s", m.requests_per_s},
                          {"loads", m.loads},
                          {"last_seen_ms", seen_ms}});
        };
        describe_member(st.me, true, 0);
        for (const auto& [address, p] : st.peers)
          describe_member(p.info, false,
                          std::chrono::duration_cast<std::chrono::milliseconds>(now - p.last_seen)
                            .count());
        std::lock_guard<std::mutex> guard{st.sh->mu};
        nlohmann::json out = {{"self", st.me.address},
                              {"joined", st.sh->joined},
                              {"view_digest", std::to_string(digest_of(self))},
                              {"members", list}};
        st.sh->status = out.dump();
        st.sh->spare = std::move(spare);
      },
      [self](caf::error& err) {
        self->state.log->debug("no snapshot for the heartbeat: {}", describe(err));
      });
  self->delayed_send(self, st.sh->options.heartbeat_interval, cluster_tick_atom::value);
}

caf::behavior cluster_actor(cluster_ptr self, std::shared_ptr<cluster_shared> sh,
                            registry_actor local) {
  auto& st = self->state;
  st.sh = std::move(sh);
  st.local = std::move(local);
  st.me.incarnation = wall_ns();
  self->set_down_handler([self](caf::down_msg& dm) {
    auto& st = self->state;
    for (const auto& [address, p] : st.peers)
      if (p.handle.address() == dm.source) {
        remove_peer(self, address, "its connection closed (" + caf::to_string(dm.reason) + ")");
        return;
      }
  });
  self->set_exit_handler([self](caf::exit_msg& em) { self->quit(em.reason); });
  // Nothing happens until the node knows its own name (announce).
  return {
    [self](announce_atom, const std::string& address) {
      auto& st = self->state;
      if (!st.me.address.empty())
        return;
      st.me.address = address;
      for (const auto& j : st.sh->options.join)
        if (j != address) {
          st.joins.insert(j);
          st.wanted.insert(j);
        }
      publish_view(self);
      self->send(self, cluster_tick_atom::value);
    },
    [self](join_atom, member_info& info) {
      auto& st = self->state;
      auto sender = caf::actor_cast<caf::actor>(self->current_sender());
      learn(self, info.members);
      add_peer(self, sender, std::move(info));
      std::vector<member_info> out{st.me};
      for (const auto& [address, p] : st.peers)
        out.push_back(p.info);
      return out;
    },
    [self](heartbeat_atom, member_info& info) {
      auto& st = self->state;
      learn(self, info.members);
      if (auto i = st.peers.find(info.address);
          i != st.peers.end() && i->second.info.incarnation == info.incarnation) {
        i->second.info = std::move(info);
        i->second.last_seen = clock_type::now();
        return;
      }
      // A member removed while it was silent speaks again, or one that
      // restarted: it is a member (again).
      add_peer(self, caf::actor_cast<caf::actor>(self->current_sender()), std::move(info));
    },
    [self](place_atom, const std::string& key, const model_spec& asked,
           const std::string& requester, uint64_t digest,
           const std::vector<std::string>& exclude) {
      return place(self, key, asked, requester, digest, exclude);
    },
    [self](load_here_atom, const std::string& key, bool pin) {
      auto& st = self->state;
      st.log->info("{}: asked to hold a copy{}", key, pin ? " (min_copies)" : "");
      self->request(st.local, st.sh->options.load_timeout, get_or_load_atom::value, key,
                    model_spec{})
        .then(
          [self, key, pin](const model_handle& h) {
            // The copy stays while it is pinned, or until it idles out.
            // Only a copy held here is pinned, not one forwarded elsewhere
            // (then another member was chosen after all). (Requests, not
            // sends: the registry answers, and an answer nobody expects
            // would come back as an error that stops it.)
            if (!pin || !h.valid())
              return;
            auto local = self->state.local;
            self->request(local, std::chrono::seconds{5}, list_atom::value)
              .then(
                [self, local, key](const registry_snapshot& snap) {
                  for (const auto& m : snap.models)
                    if (m.key == key && m.state == model_state::ready && m.holder.empty())
                      self->request(local, std::chrono::seconds{5}, pin_atom::value, key, true)
                        .then([](bool) {}, [](caf::error&) {});
                },
                [](caf::error&) {});
          },
          [self, key](caf::error& err) {
            self->state.log->warn("{}: no copy here: {}", key, describe(err));
          });
    },
    [self](reserve_atom, const std::string& key, uint64_t expected, bool may_evict,
           uint64_t ticket) { return reserve(self, key, expected, may_evict, ticket); },
    [self](unreserve_atom, const std::string& key, uint64_t ticket) {
      auto& st = self->state;
      if (auto i = st.reserved.find(key); i != st.reserved.end() && i->second.ticket == ticket)
        st.reserved.erase(i);
    },
    [self](peer_up_atom, const std::string& address, const caf::actor& door) {
      auto& st = self->state;
      st.connecting.erase(address);
      self->request(door, st.sh->options.connect_timeout, join_atom::value, st.me)
        .then(
          [self, address, door](std::vector<member_info>& infos) {
            for (auto& info : infos) {
              learn(self, info.members);
              if (info.address == address)
                add_peer(self, door, std::move(info));
              else
                learn(self, {info.address});
            }
          },
          [self, address](caf::error& err) {
            retry_later(self, address, describe(as_modelreg_error(std::move(err), errc::unavailable,
                                                                  address)));
          });
    },
    [self](peer_down_atom, const std::string& address, const std::string& why) {
      self->state.connecting.erase(address);
      retry_later(self, address, why);
    },
    [self](cluster_tick_atom) { tick(self); },
    [self](shutdown_atom) { self->quit(); },
  };
}

} // namespace

cluster_node::cluster_node(caf::actor_system& sys, cluster_options options)
  : shared_(std::make_shared<cluster_shared>()) {
  shared_->sys = &sys;
  shared_->options = std::move(options);
  shared_->joined = shared_->options.join.empty(); // the first member
  if (!shared_->options.backends)
    shared_->options.backends = backend_registry::with_builtins();
}

cluster_node::~cluster_node() {
  stop();
}

cluster_node::placement_fn cluster_node::placement() const {
  auto sh = shared_;
  return [sh](const std::string& key, const model_spec& asked,
              const model_spec& resolved) -> caf::expected<loader_fn> {
    // A spec the backend refuses fails here, before anyone is asked.
    auto here = sh->options.backends->loader_for(resolved);
    if (!here)
      return std::move(here.error());
    return loader_fn{[sh, key, asked, here = std::move(*here)]() -> caf::expected<model_ptr> {
      return load_placed(sh, key, asked, here);
    }};
  };
}

std::function<bool(const std::string&)> cluster_node::spare_copy() const {
  auto sh = shared_;
  return [sh](const std::string& key) {
    std::lock_guard<std::mutex> guard{sh->mu};
    return sh->spare.count(key) > 0;
  };
}

void cluster_node::start(registry_actor local) {
  auto actor = shared_->sys->spawn(cluster_actor, shared_, std::move(local));
  std::lock_guard<std::mutex> guard{shared_->mu};
  shared_->actor = actor;
}

void cluster_node::announce(const std::string& self_address) {
  caf::actor actor;
  {
    std::lock_guard<std::mutex> guard{shared_->mu};
    shared_->self = self_address;
    shared_->view = {self_address};
    shared_->digest = cluster::view_digest(shared_->view);
    actor = shared_->actor;
  }
  caf::anon_send(actor, announce_atom::value, self_address);
}

caf::actor cluster_node::actor() const {
  std::lock_guard<std::mutex> guard{shared_->mu};
  return shared_->actor;
}

std::string cluster_node::status_json() const {
  std::lock_guard<std::mutex> guard{shared_->mu};
  return shared_->status;
}

void cluster_node::stop() {
  caf::actor actor;
  std::map<std::string, registry_actor> proxies;
  {
    std::lock_guard<std::mutex> guard{shared_->mu};
    if (shared_->stopped)
      return;
    shared_->stopped = true;
    actor = shared_->actor;
    proxies.swap(shared_->proxies);
  }
  if (actor)
    caf::anon_send_exit(actor, caf::exit_reason::user_shutdown);
  for (auto& [address, proxy] : proxies)
    caf::anon_send(proxy, shutdown_atom::value);
}

} // namespace modelreg

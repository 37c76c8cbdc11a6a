"""Many nodes, one registry (issue #15), with real `modelreg serve`
processes joined over loopback TCP and real client processes: one load per
model across the cluster under concurrent first requests, budgets kept,
forwarding, failover after kill -9, a late joiner, min_copies, and mutual
TLS between members. Every process and file a test makes is removed when it
ends."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

CLI = os.environ["MODELREG_CLI"]
MIB = 1 << 20
MODEL_BYTES = 20 * MIB


def eventually(pred, timeout=60.0, step=0.05):
    """True as soon as `pred()` is; False if it is not within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def write_catalog(folder, extra=None):
    models = {}
    for i in range(1, 7):
        models["m%d" % i] = {"backend": "identity",
                             "params": {"reserve_bytes": MODEL_BYTES, "thread_safe": True},
                             "expected_bytes": MODEL_BYTES}
    models.update(extra or {})
    path = os.path.join(folder, "catalog.json")
    with open(path, "w") as f:
        json.dump({"models": models}, f)
    return path


class Node:
    """`modelreg serve` as a cluster member, in a child process."""

    def __init__(self, folder, name, catalog, *extra, budget="48M", tcp="127.0.0.1:0"):
        self.sock = os.path.join(folder, name + ".sock")
        self.log_path = os.path.join(folder, name + ".log")
        self.log = open(self.log_path, "w+")
        # Info level: where each model was placed, and why a member was
        # passed over, is in the log a failing test prints.
        cmd = [CLI, "--log-level", "info", "serve", "--socket", self.sock, "--catalog", catalog,
               "--tcp", tcp, "--max-memory", budget, *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.ready_line = self.proc.stdout.readline()
        if not self.ready_line.startswith("ready"):
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("no ready line: %r, log %r" % (self.ready_line, self.read_log()))
        m = re.search(r"cluster (tcp://[^ ]+)", self.ready_line)
        self.address = m.group(1) if m else None

    def read_log(self):
        self.log.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def status(self, *args):
        out = subprocess.run([CLI, "status", "--socket", self.sock, "--json", *args],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def cluster(self):
        return self.status("--cluster")

    def me(self):
        return next(m for m in self.cluster()["members"] if m["self"])

    def cli(self, *args, timeout=60):
        return subprocess.run([CLI, *args, "--socket", self.sock], capture_output=True,
                              text=True, timeout=timeout)

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


class Client:
    """`modelreg __cluster-client` / `__cluster-loop`: a pipeline node."""

    def __init__(self, node, *args, loop=False):
        cmd = [CLI, "__cluster-loop" if loop else "__cluster-client", "unix:" + node.sock, *args]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "ready", (line, self.proc.stderr.read())

    def go(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def results(self):
        out = []
        for line in self.proc.stdout:
            if line.strip() == "done":
                return out
            out.append(json.loads(line))
        raise AssertionError("the client ended early: %s" % self.proc.stderr.read())

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture
def folder():
    d = tempfile.mkdtemp(prefix="modelreg-cluster-")
    made = []
    yield d, made
    # pytest shows what this prints only when the test failed.
    for thing in made:
        if isinstance(thing, Node):
            print("---- log of %s (%s) ----" % (thing.log_path, thing.address))
            print(thing.read_log()[-6000:])
    for thing in reversed(made):
        thing.close() if isinstance(thing, Client) else thing.stop()
    shutil.rmtree(d, ignore_errors=True)


def start_cluster(folder, made, n, catalog, *extra, budget="48M"):
    d = folder
    first = Node(d, "n1", catalog, "--cluster", "--insecure-admin", *extra, budget=budget)
    made.append(first)
    nodes = [first]
    for i in range(2, n + 1):
        node = Node(d, "n%d" % i, catalog, "--join", first.address, "--insecure-admin", *extra,
                    budget=budget)
        made.append(node)
        nodes.append(node)
    assert eventually(lambda: all(len(x.cluster()["members"]) == n for x in nodes)), \
        [x.read_log() for x in nodes]
    return nodes


def loads_by_model(nodes):
    """Loads per model, summed over the members' own counts."""
    total = {}
    for node in nodes:
        for key, n in node.me()["loads"].items():
            total[key] = total.get(key, 0) + n
    return total


def holder_of(nodes, key):
    for node in nodes:
        if any(m["key"] == key and m["state"] == "ready" for m in node.me()["models"]):
            return node
    return None


def test_twelve_clients_on_three_nodes_load_six_models_once_within_every_budget(folder):
    d, made = folder
    catalog = write_catalog(d)
    nodes = start_cluster(d, made, 3, catalog)
    models = ["m%d" % i for i in range(1, 7)]
    clients = []
    for i in range(12):
        c = Client(nodes[i % 3], *models)
        made.append(c)
        clients.append(c)
    for c in clients:  # all at once
        c.go()
    for c in clients:
        results = c.results()
        assert sorted(r["model"] for r in results) == models
        bad = [r for r in results if not r["ok"]]
        assert not bad, (bad, [n.read_log()[-4000:] for n in nodes])
    # Once each heartbeat has carried the last load: exactly one per model.
    assert eventually(lambda: loads_by_model(nodes) == {m: 1 for m in models}), \
        loads_by_model(nodes)
    for node in nodes:
        me = node.me()
        assert me["bytes_in_use"] <= me["budget_bytes"], me
        # Every model is served here: held, or forwarded to its holder.
        local = {m["key"]: m for m in node.status()["models"]}
        assert sorted(local) == models
        for key, m in local.items():
            held = m.get("holder", "") == ""
            assert held == (m["memory_bytes"] > 0), m
    held = sorted(m["key"] for node in nodes for m in node.me()["models"])
    assert held == models


def test_kill_9_of_a_holder_fails_its_requests_with_typed_errors_and_one_survivor_reloads(folder):
    d, made = folder
    catalog = write_catalog(d)
    # Membership would notice a silent member only after a minute: what the
    # clients see comes from the closed connection.
    nodes = start_cluster(d, made, 3, catalog, "--cluster-timeout", "60s", budget="100M")
    first = nodes[0].cli("load", "m1")
    assert first.returncode == 0, first.stderr
    assert eventually(lambda: holder_of(nodes, "m1") is not None)
    victim = holder_of(nodes, "m1")
    survivors = [n for n in nodes if n is not victim]
    loops = []
    for node in survivors:
        c = Client(node, "m1", loop=True)
        made.append(c)
        loops.append(c)
    for c in loops:
        c.go()
    for c in loops:  # both forward to the victim and are answered
        assert c.proc.stdout.readline().startswith("ok")
    killed_at = time.monotonic_ns()
    victim.kill()
    seen = []
    for c in loops:
        # A request in flight on the dead member fails with `unavailable`;
        # one that reaches its member after the member dropped the copy
        # fails with `model_crashed` (its handle's model is gone). Then the
        # client gets the model again, it is placed again, and requests
        # succeed. (A client that had nothing on its way at the kill may
        # see no error: its reading ends 10 s after the kill.)
        errors = []
        while True:
            line = c.proc.stdout.readline()
            assert line, c.proc.stderr.read()
            word = line.split()
            if word[0] == "ok" and int(word[1]) > killed_at and (
                    errors or int(word[1]) > killed_at + 10 * 10**9):
                break
            if word[0] == "error":
                errors.append(word[1])
        assert set(errors) <= {"unavailable", "model_crashed"}, errors
        seen += errors
    assert seen, "no request failed: none was on its way to the dead member"
    for c in loops:
        c.close()
    # Loaded once more, on one survivor; nothing points at the dead node.
    assert eventually(lambda: loads_by_model(survivors).get("m1") == 1), loads_by_model(survivors)
    new_holder = holder_of(survivors, "m1")
    assert new_holder is not None
    for node in survivors:
        for m in node.status()["models"]:
            assert m.get("holder", "") != victim.address, m
        assert len(node.cluster()["members"]) == 2
    # No lease is stuck: once the other survivor drops its forwarded entry,
    # the holder can unload the model.
    for node in survivors:
        if node is not new_holder:
            r = node.cli("unload", "m1")
            assert r.returncode == 0, r.stdout + r.stderr
    r = new_holder.cli("unload", "m1")
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_late_member_sees_the_models_and_serves_them_by_forwarding(folder):
    d, made = folder
    catalog = write_catalog(d)
    nodes = start_cluster(d, made, 2, catalog)
    for key in ("m1", "m2"):
        r = nodes[0].cli("load", key)
        assert r.returncode == 0, r.stderr
    late = Node(d, "late", catalog, "--join", nodes[1].address, "--insecure-admin")
    made.append(late)
    everyone = nodes + [late]

    def sees_models():
        held = [m["key"] for member in late.cluster()["members"] for m in member["models"]]
        return sorted(held) == ["m1", "m2"]

    assert eventually(sees_models), late.cluster()
    text = late.cli("status", "--cluster")
    assert text.returncode == 0 and "m1" in text.stdout and late.address in text.stdout
    client = Client(late, "m1", "m2")
    made.append(client)
    client.go()
    assert all(r["ok"] for r in client.results())
    forwarded = {m["key"]: m.get("holder", "") for m in late.status()["models"]}
    assert forwarded["m1"] and forwarded["m2"], forwarded
    assert loads_by_model(everyone) == {"m1": 1, "m2": 1}


def test_sessions_stream_through_a_member_that_forwards_to_the_holder(folder):
    d, made = folder
    catalog = write_catalog(d, {"stream": {"backend": "identity",
                                           "params": {"streaming": True}, "instances": 2}})
    nodes = start_cluster(d, made, 2, catalog)
    r = nodes[0].cli("load", "stream")
    assert r.returncode == 0, r.stderr
    assert eventually(lambda: holder_of(nodes, "stream") is not None)
    holder = holder_of(nodes, "stream")
    other = next(n for n in nodes if n is not holder)

    def stream(node, chunks):
        return subprocess.Popen([CLI, "__cluster-stream", "unix:" + node.sock, "stream",
                                 str(chunks)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    # Two clients of the forwarding member and one of the holder, at once:
    # every session gets its own partials, in order, and its final.
    runs = [(stream(other, 4), 4), (stream(other, 6), 6), (stream(holder, 5), 5)]
    ids = []
    for p, chunks in runs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, (out, err, other.read_log()[-3000:])
        lines = out.split("\n")
        assert lines[0].startswith("session "), out
        ids.append(int(lines[0].split()[1]))
        assert lines[1:1 + chunks] == ["push %d %d" % (i, 3 * i) for i in range(1, chunks + 1)], out
        assert lines[1 + chunks] == "final %d" % chunks, out
    assert ids[0] != ids[1], ids
    forwarded = [m for m in other.status()["models"] if m["key"] == "stream"]
    assert forwarded and forwarded[0].get("holder") == holder.address, forwarded
    assert loads_by_model(nodes) == {"stream": 1}
    # The sessions are over: none stays open on the holder.
    assert eventually(lambda: [m.get("sessions") for m in holder.status()["models"]
                               if m["key"] == "stream"] == [0]), holder.status()["models"]


def test_min_copies_keeps_a_copy_loaded_and_places_it_again_when_its_holder_dies(folder):
    d, made = folder
    catalog = write_catalog(d, {"keep": {"backend": "identity", "params": {"thread_safe": True},
                                         "min_copies": 1}})
    nodes = start_cluster(d, made, 3, catalog, "--cluster-timeout", "60s")
    # Nobody asked for it: its owner places it.
    assert eventually(lambda: holder_of(nodes, "keep") is not None)
    victim = holder_of(nodes, "keep")
    pinned = [m for m in victim.status()["models"] if m["key"] == "keep"]
    assert pinned and pinned[0]["pinned"], pinned
    victim.kill()
    survivors = [n for n in nodes if n is not victim]
    assert eventually(lambda: holder_of(survivors, "keep") is not None)
    assert loads_by_model(survivors).get("keep") == 1


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_node_that_has_not_joined_yet_places_nothing_until_it_has(folder):
    d, made = folder
    catalog = write_catalog(d)
    port = free_port()  # where the first member will listen, later
    late = Node(d, "joiner", catalog, "--join", "tcp://127.0.0.1:%d" % port, "--insecure-admin")
    made.append(late)
    assert eventually(lambda: "cannot join" in late.read_log())
    c = late.cluster()
    assert c["joined"] is False, c
    text = late.cli("status", "--cluster")
    assert text.returncode == 0 and "not joined yet" in text.stdout, text.stdout
    # Alone it would own every key: it must not load what the cluster may hold.
    r = late.cli("load", "m1", "--timeout", "1s")
    assert r.returncode == 3 and "timeout" in r.stderr, (r.stdout, r.stderr)
    assert late.me()["loads"] == {}, late.me()
    first = Node(d, "first", catalog, "--cluster", "--insecure-admin",
                 tcp="127.0.0.1:%d" % port)
    made.append(first)
    assert eventually(lambda: late.cluster()["joined"] and
                      len(late.cluster()["members"]) == 2 and
                      len(first.cluster()["members"]) == 2)
    r = late.cli("load", "m1")
    assert r.returncode == 0, r.stderr
    r = first.cli("load", "m1")
    assert r.returncode == 0, r.stderr
    assert eventually(lambda: loads_by_model([first, late]) == {"m1": 1}), \
        loads_by_model([first, late])


def make_pki(d, name):
    """A CA and a node certificate it signed (openssl)."""
    p = os.path.join(d, name)

    def sh(*args):
        subprocess.run(args, check=True, capture_output=True, timeout=120)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
       "-subj", "/CN=%s-ca" % name, "-keyout", p + "-ca.key", "-out", p + "-ca.pem")
    for who in ("a", "b"):
        w = p + "-" + who
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + who,
           "-keyout", w + ".key", "-out", w + ".csr")
        sh("openssl", "x509", "-req", "-in", w + ".csr", "-CA", p + "-ca.pem", "-CAkey",
           p + "-ca.key", "-CAcreateserial", "-days", "2", "-out", w + ".pem")
    return p


def tls(pki, who):
    return ["--tls-cert", pki + "-" + who + ".pem", "--tls-key", pki + "-" + who + ".key",
            "--tls-ca", pki + "-ca.pem"]


def test_members_use_mutual_tls_and_a_node_of_another_ca_cannot_join(folder):
    d, made = folder
    catalog = write_catalog(d)
    good = make_pki(d, "good")
    evil = make_pki(d, "evil")
    first = Node(d, "first", catalog, "--cluster", *tls(good, "a"))
    made.append(first)
    assert "(mutual TLS)" in first.ready_line
    intruder = Node(d, "intruder", catalog, "--join", first.address, *tls(evil, "a"))
    made.append(intruder)
    friend = Node(d, "friend", catalog, "--join", first.address, *tls(good, "b"))
    made.append(friend)
    assert eventually(lambda: len(first.cluster()["members"]) == 2 and
                      len(friend.cluster()["members"]) == 2)
    # The friend is in; the intruder keeps failing its handshake.
    assert eventually(lambda: "cannot join " + first.address in intruder.read_log())
    names = [m["address"] for m in first.cluster()["members"]]
    assert intruder.address not in names and friend.address in names
    assert [m["address"] for m in intruder.cluster()["members"]] == [intruder.address]
    # Forwarding goes over TLS too.
    r = friend.cli("load", "m1")
    assert r.returncode == 0, r.stderr
    r = first.cli("load", "m1")
    assert r.returncode == 0, r.stderr
    assert loads_by_model([first, friend]) == {"m1": 1} or eventually(
        lambda: loads_by_model([first, friend]) == {"m1": 1})


def test_bad_cluster_flags_are_refused_with_their_names(folder):
    d, made = folder
    catalog = write_catalog(d)
    sock = os.path.join(d, "x.sock")

    def serve(*args):
        return subprocess.run([CLI, "serve", "--socket", sock, "--catalog", catalog, *args],
                              capture_output=True, text=True, timeout=60)

    r = serve("--join", "tcp://127.0.0.1:1")
    assert r.returncode == 2 and "--tcp" in r.stderr, r.stderr
    r = serve("--tcp", "127.0.0.1:0", "--join", "unix:/tmp/x.sock", "--insecure-admin")
    assert r.returncode == 2 and "--join takes tcp://HOST:PORT" in r.stderr, r.stderr
    r = serve("--tcp", "127.0.0.1:0", "--cluster")
    assert r.returncode == 2 and "--insecure-admin" in r.stderr, r.stderr
    r = serve("--tcp", "0.0.0.0:0", "--cluster", "--insecure-admin", "--insecure")
    assert r.returncode == 2 and "--advertise" in r.stderr, r.stderr
    r = serve("--advertise", "h")
    assert r.returncode == 2 and "--advertise" in r.stderr, r.stderr
    r = serve("--tcp", "127.0.0.1:0", "--cluster", "--insecure-admin", "--cluster-timeout", "1ms")
    assert r.returncode == 2 and "--cluster-timeout" in r.stderr, r.stderr
    assert not os.path.exists(sock)
    # A node that is not in a cluster says so.
    lone = Node(d, "lone", catalog)
    made.append(lone)
    r = subprocess.run([CLI, "status", "--cluster", "--socket", lone.sock], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "not a cluster member" in r.stderr, r.stderr


def test_a_model_whose_requests_queue_gets_a_second_copy_up_to_max_copies(folder):
    d, made = folder
    catalog = write_catalog(d, {"hot": {"backend": "identity",
                                        "params": {"infer_delay_ms": 100},
                                        "max_copies": 2}})
    nodes = start_cluster(d, made, 3, catalog, "--copy-queue-time", "10ms")
    r = nodes[0].cli("load", "hot")
    assert r.returncode == 0, r.stderr
    assert eventually(lambda: holder_of(nodes, "hot") is not None)
    first_holder = holder_of(nodes, "hot")
    # The callers are at a member that forwards to the holder; a model
    # served one request at a time; the new copy goes to the third member
    # (a member forwarding a key gets no copy of it).
    caller = next(n for n in nodes if n is not first_holder)
    third = next(n for n in nodes if n is not first_holder and n is not caller)
    for n in nodes:
        if n is not first_holder and n is not caller:
            for m in n.status()["models"]:
                if m["key"] == "hot":
                    r = n.cli("unload", "hot")
                    assert r.returncode == 0, r.stdout + r.stderr
    loops = []
    for _ in range(3):
        c = Client(caller, "hot", loop=True)
        made.append(c)
        loops.append(c)
    for c in loops:
        c.go()

    def copies():
        return sum(1 for n in nodes for m in n.me()["models"]
                   if m["key"] == "hot" and m["state"] == "ready")

    def served(node):
        return sum(m["requests"] for m in node.status()["models"]
                   if m["key"] == "hot" and not m.get("holder"))

    assert eventually(lambda: copies() == 2, timeout=120), [n.me() for n in nodes]
    # The callers that asked for it use it: the forwarding member spreads
    # their requests over both copies.
    assert eventually(lambda: served(third) > 0, timeout=60), \
        (served(first_holder), served(third), caller.read_log()[-3000:])
    before = served(first_holder)
    assert eventually(lambda: served(first_holder) > before, timeout=60)
    for c in loops:
        c.close()
    assert loads_by_model(nodes).get("hot") == 2
    assert copies() == 2  # and no third: max_copies

    def copy_states():
        return sorted((m["spare"], m["handles"]) for n in nodes for m in n.me()["models"]
                      if m["key"] == "hot")

    # Of the two, one is spare: evicted first under budget pressure. Once
    # the callers stop, the forwarding member lets go of it, so nothing
    # keeps it there (the other copy keeps that member's lease).
    assert eventually(lambda: copy_states() == [(False, 1), (True, 0)], timeout=60), \
        copy_states()
    # And it does not take it again while its requests do not queue: for six
    # heartbeats after letting go, no new lease on the spare copy.
    spare = next(n for n in nodes for m in n.me()["models"] if m["key"] == "hot" and m["spare"])
    let_go = "hot: no longer using the copy on " + spare.address
    taken = "hot: also using the copy on " + spare.address
    assert eventually(lambda: let_go in caller.read_log()), caller.read_log()[-3000:]
    deadline = time.monotonic() + 6 * 0.5
    while time.monotonic() < deadline:
        assert copy_states() == [(False, 1), (True, 0)], caller.read_log()[-3000:]
    log = caller.read_log()
    assert taken not in log[log.rfind(let_go):], log[-3000:]

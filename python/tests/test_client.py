"""The client of a real node (`modelreg serve` in a child process): NumPy in,
zero-copy tensors out, clear errors."""
import gc
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import modelreg
from support import eventually


@pytest.fixture(scope="module")
def node():
    d = tempfile.mkdtemp(prefix="modelreg-py-")
    try:
        sock = os.path.join(d, "node.sock")
        p = subprocess.Popen([os.environ["MODELREG_CLI"], "serve", "--socket", sock],
                             stdout=subprocess.PIPE, text=True)
        try:
            assert p.stdout.readline().startswith("ready")
            yield "unix:" + sock
        finally:
            p.terminate()
            try:
                # A node stops within its drain time (5 s by default).
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                raise
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_inputs_in_shared_memory_cross_without_a_copy_and_outputs_are_views(node):
    with modelreg.connect(node) as c:
        c.load("gain")
        x = c.empty((2, 3), np.float32)
        x[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
        before = c.counters()
        out = c.infer("gain", {"audio": x})
        after = c.counters()
        assert after["copied_bytes"] == before["copied_bytes"]
        assert after["zero_copy_tensors"] >= before["zero_copy_tensors"] + 2
        # The call is counted, with the time it waited for the node.
        assert after["infer_calls"] == before["infer_calls"] + 1
        assert after["infer_wait_s"] > before["infer_wait_s"]
        t = out["audio"]
        a = np.asarray(t)
        np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5)
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0] = 1.0
        d = np.from_dlpack(t)  # the same memory, no copy
        assert d.__array_interface__["data"][0] == t.data_ptr == a.__array_interface__["data"][0]
        # ... inside the worker's shared-memory segment, mapped read-only here.
        path, perms = mapping_of(t.data_ptr)
        assert "memfd:modelreg" in path and perms.startswith("r--s"), (path, perms)
        np.testing.assert_array_equal(d, a)
        assert not d.flags.writeable
        with pytest.raises(ValueError):
            d[0, 0] = 1.0


def mapping_of(address):
    """The path and permissions of the mapping of this process holding `address`."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            lo, hi = (int(v, 16) for v in fields[0].split("-"))
            if lo <= address < hi:
                return (fields[5].strip() if len(fields) > 5 else ""), fields[1]
    return "", ""


def test_torch_from_dlpack_sees_the_workers_memory(node):
    import torch  # Debian's python3-torch (scripts/install-deps.sh)

    with modelreg.connect(node) as c:
        x = c.empty((4, 256), np.float32)
        x[:] = np.arange(1024, dtype=np.float32).reshape(4, 256)
        before = c.counters()["copied_bytes"]
        out = c.infer("gain", {"audio": x})
        assert c.counters()["copied_bytes"] == before
        t = torch.from_dlpack(out["audio"])
        assert t.data_ptr() == out["audio"].data_ptr
        assert t.dtype == torch.float32 and tuple(t.shape) == (4, 256) and t.device.type == "cpu"
        assert torch.equal(t, torch.arange(1024, dtype=torch.float32).reshape(4, 256) * 0.5)
        path, perms = mapping_of(t.data_ptr())
        assert "memfd:modelreg" in path and perms.startswith("r--s"), (path, perms)
        # The tensor outlives the capsule and the Tensor object it came from.
        del out
        gc.collect()
        assert float(t[3, 255]) == 1023 * 0.5


TORCH_WRITER = """
import sys, numpy as np, torch, modelreg
c = modelreg.connect(sys.argv[1])
t = torch.from_dlpack(c.infer("gain", {"audio": np.ones(8, np.float32)})["audio"])
print("got", float(t[0]), flush=True)
t[0] = 5.0  # PyTorch has no read-only tensors: the read-only mapping stops it
print("wrote", flush=True)
"""


def test_writing_through_torch_cannot_change_the_workers_memory(node):
    # PyTorch cannot mark a tensor read-only, so the write is stopped by the
    # page protection of the mapping (SIGSEGV), never reaching the worker.
    child = subprocess.run([sys.executable, "-c", TORCH_WRITER, node], capture_output=True,
                           text=True, timeout=60)
    assert "got 0.5" in child.stdout
    assert "wrote" not in child.stdout
    assert child.returncode == -signal.SIGSEGV
    with modelreg.connect(node) as c:  # the node is unharmed
        out = np.asarray(c.infer("gain", {"audio": np.ones(8, np.float32)})["audio"])
        np.testing.assert_array_equal(out, np.full(8, 0.5, np.float32))


def test_ordinary_arrays_are_copied_once(node):
    with modelreg.connect(node) as c:
        x = np.ones(1000, dtype=np.float32)
        before = c.counters()["copied_bytes"]
        out = c.infer("gain", {"audio": x})
        assert c.counters()["copied_bytes"] - before == x.nbytes
        assert np.asarray(out["audio"]).sum() == 500.0


def test_leases_and_status(node):
    with modelreg.connect(node) as c:
        c.load("echo")
        s = c.status()
        echo = [m for m in s["models"] if m["key"] == "echo"][0]
        assert echo["handles"] >= 1
        assert "gain" in s["catalog"]


def test_bad_input_raises_clear_errors(node):
    with modelreg.connect(node) as c:
        with pytest.raises(modelreg.ModelRegError) as unknown:
            c.infer("no-such-model", {"audio": np.zeros(4, np.float32)})
        assert unknown.value.code == "model_not_found"
        assert "not in the catalog" in str(unknown.value)
        with pytest.raises(TypeError):
            c.infer("gain", {"audio": np.zeros(4, np.complex64)})
        with pytest.raises(ValueError):
            c.infer("gain", {"audio": np.zeros((4, 4), np.float32)[:, 1]})
        with pytest.raises(modelreg.ModelRegError) as wrong:
            c.infer("gain", {"audio": np.zeros(4, np.int16)})
        assert wrong.value.code == "invalid_argument"
    with pytest.raises(modelreg.ModelRegError) as nobody:
        modelreg.connect("unix:/nonexistent/modelreg.sock")
    assert nobody.value.code == "unavailable"


def test_infer_checks_its_arguments_like_a_python_function_and_goes_on(node):
    x = np.arange(4, dtype=np.float32)
    with modelreg.connect(node) as c:
        for call, says in [
            (lambda: c.infer("gain"), "missing required argument 'inputs'"),
            (lambda: c.infer("gain", [x]), "inputs must be a dict"),
            (lambda: c.infer(3, {"audio": x}), "model must be a str"),
            (lambda: c.infer("gain", {"audio": x}, "soon"), "must be real number"),
            (lambda: c.infer("gain", {"audio": x}, foo=1), "unexpected keyword argument 'foo'"),
            (lambda: c.infer("gain", {"audio": x}, model="echo"), "multiple values for argument 'model'"),
            (lambda: c.infer("gain", {"audio": x}, 5, True), "at most 3 positional arguments"),
        ]:
            with pytest.raises(TypeError) as e:
                call()
            assert says in str(e.value), str(e.value)
        # By keyword, with a timeout as int, float or None: the same answer.
        for timeout in (5, 5.0, None):
            out = c.infer(model="gain", inputs={"audio": x}, timeout=timeout)
            np.testing.assert_array_equal(np.from_dlpack(out["audio"]), x * 0.5)
        with pytest.raises(TypeError):
            modelreg.Tensor()
        t = out["audio"]
        assert t.__dlpack_device__() == (1, 0)
        np.testing.assert_array_equal(np.from_dlpack(t), x * 0.5)
        with pytest.raises(TypeError):
            t.__dlpack__(copy=True)


def test_as_numpy_gives_read_only_arrays_over_the_workers_memory(node):
    with modelreg.connect(node) as c:
        x = c.empty((2, 3), np.float32)
        x[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
        before = c.counters()
        out = c.infer("gain", {"audio": x}, as_numpy=True)
        assert c.counters()["copied_bytes"] == before["copied_bytes"]
        a = out["audio"]
        assert type(a) is np.ndarray and a.dtype == np.float32 and a.shape == (2, 3)
        np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5)
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0] = 1.0
        # Its base is the Tensor that keeps the worker's memory.
        assert isinstance(a.base, modelreg.Tensor) and "shared memory" in repr(a.base)
        assert a.__array_interface__["data"][0] == a.base.data_ptr
        # Every dtype the node speaks comes back as itself.
        for dt in (np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64,
                   np.uint64, np.float16, np.float32, np.float64, np.bool_):
            y = c.infer("echo", {"x": np.ones(3, dt)}, as_numpy=True)["x"]
            assert y.dtype == dt and y.tolist() == np.ones(3, dt).tolist(), dt


def test_the_node_speaks_and_hears_itself(node):
    # Both models of the built-in catalog that speech pipelines share: what
    # tts-en-us (flite) says, asr-en-us (pocketsphinx) transcribes exactly.
    with modelreg.connect(node) as c:
        text = np.frombuffer(b"go forward ten meters", dtype=np.uint8)
        spoken = c.infer("tts-en-us", {"text": text})
        assert np.asarray(spoken["sample_rate"]).tolist() == [16000]
        audio = np.from_dlpack(spoken["audio"])
        assert audio.dtype == np.int16 and 16000 < audio.shape[0] < 4 * 16000
        heard = c.infer("asr-en-us", {"audio": audio})
        assert bytes(np.asarray(heard["text"])) == b"go forward ten meters"
        with pytest.raises(modelreg.ModelRegError) as empty:
            c.infer("tts-en-us", {"text": np.zeros(0, np.uint8)})
        assert empty.value.code == "invalid_argument" and "empty" in str(empty.value)


RECORDING = "/usr/share/pocketsphinx/test/data/goforward.raw"


def model_status(c, key):
    return next((m for m in c.status()["models"] if m["key"] == key), None)


def test_a_stream_of_20ms_chunks_gives_partials_then_the_final_transcript(node):
    audio = np.fromfile(RECORDING, dtype=np.int16)
    with modelreg.connect(node) as c:
        partials = []
        with c.stream("asr-en-us") as s:
            chunk = c.empty(320, np.int16)  # in shared memory: pushed without a copy
            for off in range(0, audio.shape[0] - 320 + 1, 320):
                chunk[:] = audio[off:off + 320]
                # as_numpy: the partial as a read-only array, no conversion
                text = bytes(s.push(chunk, as_numpy=True)["text"]).decode()
                if not partials or partials[-1] != text:
                    partials.append(text)
            # A chunk it cannot take is refused; the stream goes on.
            with pytest.raises(modelreg.ModelRegError) as wrong:
                s.push(np.zeros(320, np.float32))
            assert wrong.value.code == "invalid_argument" and "int16" in str(wrong.value)
            s.push(audio[(audio.shape[0] // 320) * 320:])
            final = s.finish(as_numpy=True)
            assert isinstance(final["text"], np.ndarray)
            assert not s.open
            with pytest.raises(modelreg.ModelRegError) as closed:
                s.push(chunk)
            assert closed.value.code == "invalid_argument"
        assert bytes(final["text"]) == b"go forward ten meters"
        assert len(partials) >= 3 and partials[-1] != ""
        # The same decoder, after the stream, answers a whole recording as pinned.
        whole = c.infer("asr-en-us", {"audio": audio})
        assert bytes(np.asarray(whole["text"])) == b"go forward ten meters"
        assert eventually(lambda: model_status(c, "asr-en-us")["sessions"] == 0)


STREAM_AND_FREEZE = """
import sys, numpy as np, modelreg
c = modelreg.connect(sys.argv[1])
s = c.stream("asr-en-us")
s.push(np.zeros(320, np.int16))
print("open", flush=True)
sys.stdin.read()
"""


def test_a_client_that_dies_frees_its_session(node):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    p = subprocess.Popen([sys.executable, "-c", STREAM_AND_FREEZE, node], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == "open"
        with modelreg.connect(node) as c:
            # asr-en-us has one instance: the session holds it.
            with pytest.raises(modelreg.ModelRegError) as busy:
                c.stream("asr-en-us")
            assert busy.value.code == "busy"
            p.kill()
            p.wait()
            assert eventually(lambda: model_status(c, "asr-en-us")["sessions"] == 0)
            with c.stream("asr-en-us", wait=10) as s:
                s.push(np.zeros(320, np.int16))
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_a_request_past_its_timeout_raises_and_the_client_goes_on(node):
    with modelreg.connect(node) as c:
        c.load("slow-infer")  # answers after 300 ms
        x = np.ones(4, np.float32)
        with pytest.raises(modelreg.ModelRegError) as late:
            c.infer("slow-infer", {"x": x}, timeout=0.05)
        assert late.value.code == "timeout"
        out = c.infer("slow-infer", {"x": x}, timeout=30)
        np.testing.assert_array_equal(np.asarray(out["x"]), x)
        del out
        # The late answer to the first request was dropped, and its memory returned.
        assert eventually(lambda: c.status()["transport"]["loans_outstanding"] == 0)


BLOCKED_IN_INFER = """
import sys, threading, numpy as np, modelreg
c = modelreg.connect(sys.argv[1])
c.load("slow-infer")
calling = threading.Barrier(4)
def call():
    calling.wait()
    while True:
        c.infer("slow-infer", {"x": np.ones(4, np.float32)}, timeout=60)
for _ in range(3):
    threading.Thread(target=call, daemon=True).start()
calling.wait()
print("exiting", flush=True)
"""


def test_exit_while_daemon_threads_wait_in_infer_is_clean(node):
    # Before: "terminate called without an active exception" in 10 of 10
    # runs (the waiting thread took the GIL back while Python finalized).
    with modelreg.connect(node) as c:
        base = c.status()["connections"]
        for _ in range(20):
            out = subprocess.run([sys.executable, "-c", BLOCKED_IN_INFER, node],
                                 capture_output=True, text=True, timeout=60)
            assert (out.returncode, out.stdout) == (0, "exiting\n"), out.stderr
            assert "terminate" not in out.stderr and "Fatal" not in out.stderr, out.stderr
        # The node noticed every exit (an earlier test's connection may
        # still have been closing when `base` was read: at most, not equal).
        assert eventually(lambda: c.status()["connections"] <= base)


def test_dropping_the_arrays_returns_the_workers_memory(node):
    with modelreg.connect(node) as c:
        outs = [c.infer("gain", {"audio": np.ones(1000, np.float32)}) for _ in range(5)]
        arrays = [np.from_dlpack(o["audio"]) for o in outs]
        assert c.status()["transport"]["loans_outstanding"] >= 5
        del outs, arrays
        gc.collect()
        assert eventually(lambda: c.status()["transport"]["loans_outstanding"] == 0)


CHILD = """
import sys, time, numpy as np, modelreg
c = modelreg.connect(sys.argv[1])
held = [np.from_dlpack(c.infer("gain", {"audio": np.ones(1000, np.float32)})["audio"]) for _ in range(3)]
print("ready", flush=True)
time.sleep(60)
"""


def test_a_python_client_killed_with_sigkill_leaks_nothing_on_the_worker(node):
    with modelreg.connect(node) as c:
        base = c.status()
        child = subprocess.Popen([sys.executable, "-c", CHILD, node], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        held = c.status()
        assert held["connections"] == base["connections"] + 1
        assert held["transport"]["loans_outstanding"] >= 3
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert eventually(lambda: c.status()["connections"] == base["connections"]
                          and c.status()["transport"]["loans_outstanding"] == 0)


def test_connect_without_a_uri_uses_the_default_socket(node):
    env = dict(os.environ, MODELREG_SOCKET=node[len("unix:"):])
    code = "import modelreg; c = modelreg.connect(); print(c.uri, c.status()['catalog'][:1])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(node + " ")


# -- another host: tcp://, with mutual TLS -----------------------------------

def start_node(*args):
    p = subprocess.Popen([os.environ["MODELREG_CLI"], "serve", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    ready = p.stdout.readline()
    assert ready.startswith("ready"), p.stderr.read()
    return p, ready.split()


def stop_node(p):
    p.terminate()
    p.wait(timeout=10)


def test_tcp_client_gets_the_same_answers_with_tensors_in_the_messages(scratch):
    d = scratch("modelreg-py-tcp-")
    p, ready = start_node("--socket", os.path.join(d, "n.sock"), "--tcp", "127.0.0.1:0")
    try:
        uri = [w for w in ready if w.startswith("tcp://")][0]
        with modelreg.connect(uri) as c:
            x = c.empty((3,), np.float32)  # over TCP: an ordinary array
            x[:] = [1, 2, 3]
            out = c.infer("gain", {"audio": x})
            np.testing.assert_array_equal(np.from_dlpack(out["audio"]), [0.5, 1.0, 1.5])
            counters = c.counters()
            assert counters["connected"] and not counters["shared_memory"]
            assert counters["copied_bytes"] >= x.nbytes
            assert "gain" in c.status()["catalog"]
            with pytest.raises(modelreg.ModelRegError) as unknown:
                c.infer("no-such-model", {"audio": x})
            assert unknown.value.code == "model_not_found"
    finally:
        stop_node(p)


def make_pki(d, name):
    def sh(*cmd):
        subprocess.run(cmd, check=True, capture_output=True)
    p = os.path.join(d, name)
    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
       f"/CN={name}-ca", "-keyout", p + "-ca.key", "-out", p + "-ca.pem")
    for who in ("server", "client"):
        w = f"{p}-{who}"
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}", "-keyout",
           w + ".key", "-out", w + ".csr")
        sh("openssl", "x509", "-req", "-in", w + ".csr", "-CA", p + "-ca.pem", "-CAkey",
           p + "-ca.key", "-CAcreateserial", "-days", "2", "-out", w + ".pem")
    return p


def test_tls_client_with_the_right_ca_works_and_bad_files_raise(scratch):
    d = scratch("modelreg-py-tls-")
    good = make_pki(d, "good")
    p, ready = start_node("--socket", os.path.join(d, "n.sock"), "--tcp", "127.0.0.1:0",
                          "--tls-cert", good + "-server.pem", "--tls-key", good + "-server.key",
                          "--tls-ca", good + "-ca.pem")
    try:
        uri = [w for w in ready if w.startswith("tcp://")][0]
        with modelreg.connect(uri, tls_cert=good + "-client.pem", tls_key=good + "-client.key",
                              tls_ca=good + "-ca.pem") as c:
            out = c.infer("gain", {"audio": np.ones(4, np.float32)})
            np.testing.assert_array_equal(np.asarray(out["audio"]), np.full(4, 0.5, np.float32))
        # Files that cannot work are refused here, not when CAF first uses them.
        with pytest.raises(modelreg.ModelRegError) as missing:
            modelreg.connect(uri, tls_cert=d + "/none.pem", tls_key=good + "-client.key",
                             tls_ca=good + "-ca.pem")
        assert missing.value.code == "invalid_argument" and "none.pem" in str(missing.value)
        with pytest.raises(modelreg.ModelRegError) as mismatched:
            modelreg.connect(uri, tls_cert=good + "-client.pem", tls_key=good + "-server.key",
                             tls_ca=good + "-ca.pem")
        assert "does not match" in str(mismatched.value)
        with pytest.raises(ValueError):
            modelreg.connect("unix:" + d + "/n.sock", tls_cert=good + "-client.pem",
                             tls_key=good + "-client.key", tls_ca=good + "-ca.pem")
        # Plain TCP to the TLS port gets no answer.
        with pytest.raises(modelreg.ModelRegError) as plain:
            modelreg.connect(uri)
        assert plain.value.code == "unavailable"
    finally:
        stop_node(p)


def test_a_tensor_says_what_it_is_and_where_its_memory_lives(node):
    with modelreg.connect(node) as c:
        x = c.empty((2, 3), np.float32)
        x[:] = 1.0
        t = c.infer("gain", {"audio": x})["audio"]
        text = repr(t)
        assert "f32[2, 3]" in text and "24 bytes" in text, text
        assert "read-only" in text and "shared memory" in text, text
        assert modelreg.Tensor.__doc__ and "DLPack" in modelreg.Tensor.__doc__


def test_the_version_is_the_projects_and_internals_do_not_leak():
    cmake = (Path(__file__).resolve().parents[2] / "CMakeLists.txt").read_text()
    assert f"project(modelreg VERSION {modelreg.__version__} " in cmake
    for internal in ("atexit", "json", "threading"):
        assert internal not in dir(modelreg), internal

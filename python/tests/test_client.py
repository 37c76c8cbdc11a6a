"""The client of a real node (`modelreg serve` in a child process): NumPy in,
zero-copy tensors out, clear errors."""
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import modelreg


@pytest.fixture(scope="module")
def node():
    d = tempfile.mkdtemp(prefix="modelreg-py-")
    sock = os.path.join(d, "node.sock")
    p = subprocess.Popen([os.environ["MODELREG_CLI"], "serve", "--socket", sock],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().startswith("ready")
    yield "unix:" + sock
    p.terminate()
    p.wait(timeout=10)


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
        t = out["audio"]
        a = np.asarray(t)
        np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5)
        assert not a.flags.writeable
        with pytest.raises(ValueError):
            a[0, 0] = 1.0
        d = np.from_dlpack(t)  # the same memory, no copy
        assert d.__array_interface__["data"][0] == t.data_ptr == a.__array_interface__["data"][0]
        np.testing.assert_array_equal(d, a)
        assert not d.flags.writeable
        with pytest.raises(ValueError):
            d[0, 0] = 1.0


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


def eventually(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


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

"""The standard front doors of a real node (issue #14): the Open Inference
Protocol over HTTP (driven with Debian's curl) and gRPC (a Python client
whose stubs are generated here from the checked-in .proto), Prometheus
/metrics scraped by Debian's real prometheus server and checked by
promtool, bad input on every door, and systemd readiness and socket
activation. Every process and file a test makes is removed when it ends."""
import json
import threading
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest

try:
    import modelreg
except ImportError:
    # The sanitizer build has no Python package: the shared-memory client
    # is then the CLI (`modelreg infer`), and what needs a held lease skips.
    modelreg = None

CLI = os.environ["MODELREG_CLI"]
SOURCE = Path(__file__).resolve().parents[2]
PROTO_DIR = SOURCE / "src" / "doors"
CATALOG = SOURCE / "examples" / "catalog.json"
GOFORWARD = Path("/usr/share/pocketsphinx/test/data/goforward.raw")


def eventually(pred, timeout=60.0, step=0.05):
    """True as soon as `pred()` is; False if it is not within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """`modelreg serve` with its doors, in a child process."""

    def __init__(self, folder, *extra, env=None, pass_fds=(), preexec_fn=None, argv=None):
        self.sock = os.path.join(folder, "node.sock")
        cmd = argv or [CLI, "serve", "--socket", self.sock, "--catalog", str(CATALOG), *extra]
        # Its log goes to a file: a pipe nobody reads could fill and stall it.
        self.log_path = os.path.join(folder, "node-%d.log" % id(self))
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env, pass_fds=pass_fds,
                                     preexec_fn=preexec_fn)
        self.ready_line = self.proc.stdout.readline()
        if not self.ready_line.startswith("ready"):
            self.proc.kill()
            self.proc.wait()
            err = self.read_log()
            self.proc.stdout.close()
            self.log.close()
            raise AssertionError("no ready line: %r, stderr %r" % (self.ready_line, err))

    def read_log(self):
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def port(self, scheme):
        m = re.search(r"(?:^| )" + scheme + r"://[^ ]*:(\d+)", self.ready_line)
        assert m, self.ready_line
        return int(m.group(1))

    def metrics_port(self):
        m = re.search(r"metrics http://[^ ]*:(\d+)/metrics", self.ready_line)
        assert m, self.ready_line
        return int(m.group(1))

    def stop(self):
        """SIGTERM: a graceful stop, which must end with exit code 0 (under
        the sanitizers too: a memory error at shutdown fails the test)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        rc = self.proc.returncode
        err = self.read_log() if rc != 0 else ""
        self.proc.stdout.close()
        self.log.close()
        assert rc == 0, "the node ended with %r: %s" % (rc, err[-3000:])


@pytest.fixture(scope="module")
def folder():
    d = tempfile.mkdtemp(prefix="modelreg-oip-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def node(folder):
    n = Node(folder, "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0",
             "--metrics", "127.0.0.1:0", "--http-max-body", "4M",
             "--http-request-timeout", "2s", "--http-idle-timeout", "5s")
    yield n
    n.stop()


def curl(url, *args):
    """Runs Debian's curl; returns (status, headers dict, body bytes)."""
    out = subprocess.run(["curl", "-sS", "-D", "-", "--max-time", "60", *args, url],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=True)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    # A 100-continue line comes first when curl sent Expect.
    while head.startswith(b"HTTP/1.1 100"):
        head, _, body = body.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
    return status, headers, body


def http(node, path):
    return "http://127.0.0.1:%d%s" % (node.port("http"), path)


def curl_json(url, *args):
    status, headers, body = curl(url, *args)
    return status, json.loads(body)


# -- HTTP/REST with curl ------------------------------------------------------

def test_health_server_and_model_metadata(node):
    assert curl_json(http(node, "/v2/health/live")) == (200, {"live": True})
    assert curl_json(http(node, "/v2/health/ready")) == (200, {"ready": True})
    status, meta = curl_json(http(node, "/v2"))
    assert status == 200 and meta["name"] == "modelreg"
    assert {"model_repository", "binary_tensor_data"} <= set(meta["extensions"])
    status, m = curl_json(http(node, "/v2/models/asr-en-us"))
    assert status == 200 and m["name"] == "asr-en-us"
    assert m["platform"] == "modelreg_pocketsphinx"
    assert {"name": "audio", "datatype": "INT16", "shape": [-1]} in m["inputs"]
    assert {"name": "text", "datatype": "BYTES", "shape": [1]} in m["outputs"]
    # A version in the path names the same (only) version.
    assert curl_json(http(node, "/v2/models/asr-en-us/versions/1"))[1] == m
    status, err = curl_json(http(node, "/v2/models/no-such-model"))
    assert status == 404 and "no-such-model" in err["error"]
    status, err = curl_json(http(node, "/v2/nothing-here"))
    assert status == 404 and "error" in err
    status, headers, _ = curl(http(node, "/v2/models/gain/infer"))  # GET
    assert status == 405 and headers["allow"] == "POST"


def test_a_client_that_knows_nothing_loads_runs_and_unloads_through_the_repository(node):
    status, index = curl_json(http(node, "/v2/repository/index"), "-X", "POST")
    assert status == 200
    names = {e["name"]: e for e in index}
    assert set(names) >= {"asr-en-us", "gain", "echo"}
    assert curl_json(http(node, "/v2/models/echo-batched/ready"))[0] == 503
    assert curl_json(http(node, "/v2/repository/models/echo-batched/load"), "-X", "POST") == (200, {})
    assert curl_json(http(node, "/v2/models/echo-batched/ready")) == \
        (200, {"name": "echo-batched", "ready": True})
    status, index = curl_json(http(node, "/v2/repository/index"), "-X", "POST",
                              "-d", '{"ready": true}')
    assert "echo-batched" in {e["name"] for e in index}
    assert all(e["state"] == "READY" for e in index)
    # Unloading is an admin's: plain HTTP clients have the infer role.
    status, err = curl_json(http(node, "/v2/repository/models/echo-batched/unload"), "-X", "POST")
    assert status == 403 and "permission_denied" in err["error"]
    status, err = curl_json(http(node, "/v2/repository/models/not-in-catalog/load"), "-X", "POST")
    assert status == 404
    status, err = curl_json(http(node, "/v2/repository/models/broken/load"), "-X", "POST")
    assert status == 500 and "load_failed" in err["error"]


def test_json_infer_echoes_the_id_and_answers_the_numbers(node):
    body = {"id": "req-7", "inputs": [
        {"name": "audio", "datatype": "FP32", "shape": [2, 3], "data": [[1, 2, 3], [4, 5, 6.5]]}]}
    status, out = curl_json(http(node, "/v2/models/gain/infer"), "-d", json.dumps(body))
    assert status == 200, out
    assert out["id"] == "req-7" and out["model_name"] == "gain"
    (o,) = out["outputs"]
    assert o == {"name": "audio", "datatype": "FP32", "shape": [2, 3],
                 "data": [0.5, 1, 1.5, 2, 2.5, 3.25]}
    # Integers, booleans and requested outputs.
    body = {"inputs": [{"name": "a", "datatype": "INT16", "shape": [3], "data": [-3, 0, 32767]},
                       {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]}],
            "outputs": [{"name": "b"}]}
    status, out = curl_json(http(node, "/v2/models/echo/infer"), "-d", json.dumps(body))
    assert status == 200, out
    assert out["outputs"] == [{"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]}]


def test_speech_recognition_with_binary_audio_answers_text(node, folder):
    audio = GOFORWARD.read_bytes()
    header = json.dumps({"inputs": [{"name": "audio", "datatype": "INT16",
                                     "shape": [len(audio) // 2],
                                     "parameters": {"binary_data_size": len(audio)}}],
                         "outputs": [{"name": "text"}]}).encode()
    body = os.path.join(folder, "asr.bin")
    Path(body).write_bytes(header + audio)
    status, out = curl_json(http(node, "/v2/models/asr-en-us/infer"),
                            "-H", "Inference-Header-Content-Length: %d" % len(header),
                            "-H", "Content-Type: application/octet-stream",
                            "--data-binary", "@" + body)
    assert status == 200, out
    assert out["outputs"] == [{"name": "text", "datatype": "BYTES", "shape": [1],
                               "data": ["go forward ten meters"]}]


def test_text_to_speech_takes_a_string(node):
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["hello"]}],
            "outputs": [{"name": "sample_rate"}, {"name": "audio", "parameters": {"binary_data": True}}]}
    status, headers, raw = curl(http(node, "/v2/models/tts-en-us/infer"), "-d", json.dumps(body))
    assert status == 200, raw
    n = int(headers["inference-header-content-length"])
    out = json.loads(raw[:n])
    rate, audio = out["outputs"]
    assert rate["data"] == [16000]
    assert audio["datatype"] == "INT16" and audio["parameters"]["binary_data_size"] == len(raw) - n
    samples = np.frombuffer(raw[n:], dtype="<i2")
    assert samples.size == audio["shape"][0] > 1000 and np.abs(samples).max() > 1000


def test_a_one_mebibyte_tensor_goes_both_ways_in_binary(node, folder):
    x = np.random.default_rng(7).standard_normal(262144).astype("<f4")
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [262144],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    body = os.path.join(folder, "mib.bin")
    Path(body).write_bytes(header + x.tobytes())
    status, headers, raw = curl(http(node, "/v2/models/echo/infer"),
                                "-H", "Inference-Header-Content-Length: %d" % len(header),
                                "--data-binary", "@" + body)
    assert status == 200, raw[:200]
    assert headers["content-type"] == "application/octet-stream"
    n = int(headers["inference-header-content-length"])
    (o,) = json.loads(raw[:n])["outputs"]
    assert o["parameters"]["binary_data_size"] == x.nbytes and o["shape"] == [262144]
    np.testing.assert_array_equal(np.frombuffer(raw[n:], dtype="<f4"), x)


# -- bad input over HTTP ------------------------------------------------------

@pytest.mark.parametrize("body, code, words", [
    ("{\"inputs\": [", 400, "not valid JSON"),
    ("[1, 2]", 400, "JSON object"),
    ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3]}]}',
     400, "3 values but shape [2,2] needs 4"),
    ('{"inputs": [{"name": "x", "datatype": "FP33", "shape": [1], "data": [1]}]}',
     400, "unknown datatype 'FP33'"),
    ('{"inputs": [{"name": "x", "datatype": "INT8", "shape": [1], "data": [300]}]}',
     400, "out of range"),
    ('{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": []}]}',
     400, "negative dimension"),
    ('{"inputs": [{"name": "audio", "datatype": "FP32", "shape": [1], "data": ["a"]}]}',
     400, "not a number"),
    ('{"inputs": [{"name": "wrong", "datatype": "FP32", "shape": [1], "data": [1]}]}',
     400, "audio"),
])
def test_bad_requests_get_the_protocols_error(node, body, code, words):
    status, err = curl_json(http(node, "/v2/models/gain/infer"), "-d", body)
    assert status == code, err
    assert words in err["error"]


def test_unknown_model_is_404_and_a_failing_loader_500(node):
    body = '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}'
    status, err = curl_json(http(node, "/v2/models/nope/infer"), "-d", body)
    assert status == 404 and "model_not_found" in err["error"]
    status, err = curl_json(http(node, "/v2/models/broken/infer"), "-d", body)
    assert status == 500 and "load_failed" in err["error"]


def test_a_body_over_the_limit_is_refused_before_it_is_read(node, folder):
    big = os.path.join(folder, "big.bin")
    with open(big, "wb") as f:
        f.truncate(5 << 20)
    status, err = curl_json(http(node, "/v2/models/echo/infer"), "--data-binary", "@" + big)
    assert status == 413 and "4194304" in err["error"]
    # Chunked, with no length up front: also refused.
    status, err = curl_json(http(node, "/v2/models/echo/infer"), "-H", "Transfer-Encoding: chunked",
                            "--data-binary", "@" + big)
    assert status == 413


def test_a_truncated_binary_body_is_refused(node, folder):
    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1024],
                                     "parameters": {"binary_data_size": 4096}}]}).encode()
    body = os.path.join(folder, "cut.bin")
    Path(body).write_bytes(header + b"\0" * 100)
    status, err = curl_json(http(node, "/v2/models/echo/infer"),
                            "-H", "Inference-Header-Content-Length: %d" % len(header),
                            "--data-binary", "@" + body)
    assert status == 400 and "truncated" in err["error"]
    status, err = curl_json(http(node, "/v2/models/echo/infer"),
                            "-H", "Inference-Header-Content-Length: 999999",
                            "--data-binary", "@" + body)
    assert status == 400 and "Inference-Header-Content-Length" in err["error"]


def shm_infers_work(node, n=50):
    """`n` inferences by a shared-memory client, all right."""
    if modelreg is None:
        d = tempfile.mkdtemp(prefix="shm-", dir=os.path.dirname(node.sock))
        try:
            x = np.arange(256, dtype=np.float32)
            np.save(os.path.join(d, "x.npy"), x)
            for _ in range(min(n, 3)):
                subprocess.run([CLI, "infer", "gain", "--input", "audio=" + os.path.join(d, "x.npy"),
                                "--output", d, "--force", "--socket", node.sock, "--timeout", "60s"],
                               check=True, capture_output=True, timeout=120)
                np.testing.assert_array_equal(np.load(os.path.join(d, "audio.npy")), x * 0.5)
        finally:
            shutil.rmtree(d, ignore_errors=True)
        return True
    with modelreg.connect("unix:" + node.sock) as c:
        c.load("gain")
        x = np.arange(256, dtype=np.float32)
        for _ in range(n):
            out = c.infer("gain", {"audio": x})
            np.testing.assert_array_equal(np.asarray(out["audio"]), x * 0.5)
    return True


def test_idle_and_slow_http_clients_cost_the_shared_memory_clients_nothing(node):
    port = node.port("http")
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(200)]
    slow = socket.create_connection(("127.0.0.1", port))
    try:
        # A client sending one byte a second: closed on the request deadline
        # (2 s here), while shared-memory and HTTP clients are served.
        request = b"POST /v2/models/gain/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        slow.settimeout(1.0)
        closed = False
        sent = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and sent < len(request):
            try:
                slow.send(request[sent:sent + 1])
                sent += 1
                if slow.recv(1, socket.MSG_PEEK) == b"":
                    closed = True
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = True
                break
        assert closed, "the slow client was not closed (sent %d bytes)" % sent
        assert sent < len(request)
        assert shm_infers_work(node)
        status, _ = curl_json(http(node, "/v2/health/live"))
        assert status == 200
    finally:
        for s in idle + [slow]:
            s.close()
    # The idle ones were closed on the idle deadline; the metrics say so.
    assert eventually(lambda: metric(node, 'modelreg_connections{protocol="http"}') <= 1)
    assert metric(node, 'modelreg_protocol_connections_refused_total{protocol="http"}') >= 1


# -- metrics ------------------------------------------------------------------

def metrics_text(node):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % node.metrics_port(),
                                timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return r.read().decode()


def metric(node, series):
    for line in metrics_text(node).splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def test_metrics_pass_promtool_and_name_what_the_issue_asks(node, folder):
    shm_infers_work(node, 3)
    text = metrics_text(node)
    path = os.path.join(folder, "metrics.txt")
    Path(path).write_text(text)
    out = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                         capture_output=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ["modelreg_loads_total", "modelreg_load_failures_total",
                 "modelreg_load_seconds_bucket", "modelreg_load_coalesced_waiters_total",
                 "modelreg_cache_hits_total", "modelreg_cache_misses_total",
                 "modelreg_evictions_total", "modelreg_leases_held",
                 "modelreg_inference_requests_total", "modelreg_inference_errors_total",
                 "modelreg_inference_seconds_bucket", "modelreg_queue_seconds_bucket",
                 "modelreg_batch_size_bucket", "modelreg_models_loaded",
                 "modelreg_model_memory_bytes", "modelreg_budget_bytes", "modelreg_connections",
                 "modelreg_shm_zero_copy_tensors_total", "modelreg_shm_copied_bytes_total",
                 "modelreg_shm_lent_bytes", "modelreg_process_resident_memory_bytes"]:
        assert re.search("^" + name + "[{ ]", text, re.M), name
    assert 'modelreg_inference_errors_total{model="broken"' not in text  # never ran
    assert re.search(r'^modelreg_load_failures_total\{model="broken"\} [1-9]', text, re.M)
    assert re.search(r'^modelreg_connections\{protocol="shm"\} ', text, re.M)
    # The HTTP port serves the same text; the metrics port nothing else.
    assert "modelreg_loads_total" in curl(http(node, "/metrics"))[2].decode()
    status, err = curl_json("http://127.0.0.1:%d/v2/models/gain" % node.metrics_port())
    assert status == 404


def test_real_prometheus_scrapes_the_node_and_finds_what_we_caused(node, folder):
    body = '{"inputs": [{"name": "audio", "datatype": "FP32", "shape": [1], "data": [2]}]}'
    for _ in range(5):
        assert curl_json(http(node, "/v2/models/gain/infer"), "-d", body)[0] == 200
    expected = metric(node, 'modelreg_inference_requests_total{model="gain"}')
    assert expected >= 5
    prom_dir = os.path.join(folder, "prometheus")
    os.makedirs(prom_dir)
    config = os.path.join(prom_dir, "prometheus.yml")
    Path(config).write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: modelreg\n    static_configs:\n"
        "      - targets: ['127.0.0.1:%d']\n" % node.metrics_port())
    port = free_port()
    prom = subprocess.Popen(["prometheus", "--config.file=" + config,
                             "--storage.tsdb.path=" + os.path.join(prom_dir, "data"),
                             "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        query = "http://127.0.0.1:%d/api/v1/query?query=%s" % (
            port, urllib.parse.quote('modelreg_inference_requests_total{model="gain"}'))
        seen = []

        def scraped():
            try:
                with urllib.request.urlopen(query, timeout=5) as r:
                    result = json.loads(r.read())["data"]["result"]
            except OSError:
                return False
            if result:
                seen.append(float(result[0]["value"][1]))
                return seen[-1] >= expected
            return False

        assert eventually(scraped, timeout=120, step=0.5), (seen, prom.poll())
        assert seen[-1] >= expected
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=30)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        prom.stderr.close()


# -- gRPC ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def pb(folder):
    """Stubs generated from the checked-in .proto, as a v2 client would."""
    out = os.path.join(folder, "stubs")
    os.makedirs(out)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTO_DIR),
                    "--python_out=" + out, "--grpc_python_out=" + out,
                    "open_inference_grpc.proto"], check=True)
    sys.path.insert(0, out)
    try:
        import grpc
        import open_inference_grpc_pb2
        import open_inference_grpc_pb2_grpc
        yield grpc, open_inference_grpc_pb2, open_inference_grpc_pb2_grpc
    finally:
        sys.path.remove(out)


@pytest.fixture
def stub(node, pb):
    grpc, msgs, services = pb
    channel = grpc.insecure_channel("127.0.0.1:%d" % node.port("grpc"))
    yield services.GRPCInferenceServiceStub(channel), msgs, grpc
    channel.close()


def test_grpc_health_metadata_and_infer(stub):
    s, pb, grpc = stub
    assert s.ServerLive(pb.ServerLiveRequest(), timeout=30).live
    assert s.ServerReady(pb.ServerReadyRequest(), timeout=30).ready
    meta = s.ServerMetadata(pb.ServerMetadataRequest(), timeout=30)
    assert meta.name == "modelreg" and "model_repository" in meta.extensions
    m = s.ModelMetadata(pb.ModelMetadataRequest(name="asr-en-us"), timeout=30)
    assert [(t.name, t.datatype, list(t.shape)) for t in m.inputs][0] == ("audio", "INT16", [-1])
    assert ("text", "BYTES") in [(t.name, t.datatype) for t in m.outputs]
    x = np.linspace(-1, 1, 12, dtype="<f4").reshape(3, 4)
    T = pb.ModelInferRequest.InferInputTensor
    r = s.ModelInfer(pb.ModelInferRequest(model_name="gain", id="g-1",
                                          inputs=[T(name="audio", datatype="FP32", shape=[3, 4])],
                                          raw_input_contents=[x.tobytes()]), timeout=60)
    assert r.id == "g-1" and r.model_name == "gain"
    assert [(o.name, o.datatype, list(o.shape)) for o in r.outputs] == [("audio", "FP32", [3, 4])]
    np.testing.assert_array_equal(
        np.frombuffer(r.raw_output_contents[0], dtype="<f4").reshape(3, 4), x * 0.5)
    # Typed contents work too.
    r = s.ModelInfer(pb.ModelInferRequest(model_name="gain", inputs=[
        T(name="audio", datatype="FP32", shape=[2],
          contents=pb.InferTensorContents(fp32_contents=[4, -8]))]), timeout=60)
    np.testing.assert_array_equal(np.frombuffer(r.raw_output_contents[0], dtype="<f4"), [2, -4])


def test_grpc_speech_recognition(stub):
    s, pb, grpc = stub
    audio = GOFORWARD.read_bytes()
    T = pb.ModelInferRequest.InferInputTensor
    r = s.ModelInfer(pb.ModelInferRequest(
        model_name="asr-en-us", inputs=[T(name="audio", datatype="INT16", shape=[len(audio) // 2])],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="text")],
        raw_input_contents=[audio]), timeout=120)
    (o,) = r.outputs
    assert (o.name, o.datatype, list(o.shape)) == ("text", "BYTES", [1])
    raw = r.raw_output_contents[0]
    (n,) = struct.unpack("<I", raw[:4])
    assert raw[4:4 + n].decode() == "go forward ten meters"


def test_grpc_repository_and_errors(stub):
    s, pb, grpc = stub
    s.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="slow-infer"), timeout=60)
    assert s.ModelReady(pb.ModelReadyRequest(name="slow-infer"), timeout=30).ready
    index = s.RepositoryIndex(pb.RepositoryIndexRequest(ready=True), timeout=30)
    assert "slow-infer" in [m.name for m in index.models]
    T = pb.ModelInferRequest.InferInputTensor
    cases = [
        (pb.ModelInferRequest(model_name="nope", inputs=[T(name="a", datatype="FP32", shape=[1])],
                              raw_input_contents=[b"\0" * 4]), grpc.StatusCode.NOT_FOUND),
        (pb.ModelInferRequest(model_name="gain", inputs=[T(name="audio", datatype="FP32", shape=[2])],
                              raw_input_contents=[b"\0" * 4]), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ModelInferRequest(model_name="gain", inputs=[T(name="audio", datatype="XX", shape=[1])],
                              raw_input_contents=[b"\0" * 4]), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.ModelInferRequest(model_name="gain", inputs=[
            T(name="audio", datatype="FP32", shape=[3],
              contents=pb.InferTensorContents(fp32_contents=[1]))]), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            s.ModelInfer(request, timeout=60)
        assert e.value.code() == code, e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        s.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="slow-infer"), timeout=30)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        s.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=30)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    # A message over the limit (4 MiB here) is refused by gRPC itself.
    with pytest.raises(grpc.RpcError) as e:
        s.ModelInfer(pb.ModelInferRequest(model_name="echo", inputs=[
            T(name="x", datatype="UINT8", shape=[5 << 20])], raw_input_contents=[b"\0" * (5 << 20)]),
            timeout=60)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# -- command line, systemd ----------------------------------------------------

@pytest.mark.parametrize("args, words", [
    (["--http", "nonsense"], "--http takes HOST:PORT"),
    (["--grpc", "127.0.0.1:99999"], "--grpc takes HOST:PORT"),
    (["--http", "0.0.0.0:0"], "refusing --http on non-loopback"),
    (["--metrics", "0.0.0.0:0"], "refusing --metrics on non-loopback"),
    (["--grpc", "0.0.0.0:0"], "refusing --grpc on non-loopback"),
    (["--http-max-body", "12x"], "--http-max-body"),
    (["--http-request-timeout", "1ms"], "--http-request-timeout"),
    (["--insecure-admin"], "--insecure-admin is for plain"),
])
def test_serve_refuses_wrong_door_flags_by_name(folder, args, words):
    out = subprocess.run([CLI, "serve", "--socket", os.path.join(folder, "never.sock"), *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode in (1, 2), out
    assert words in out.stderr, out.stderr
    assert not os.path.exists(os.path.join(folder, "never.sock"))


def test_a_port_in_use_is_a_clear_error(folder):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        out = subprocess.run([CLI, "serve", "--socket", os.path.join(folder, "busy.sock"),
                              "--catalog", str(CATALOG), "--http", "127.0.0.1:%d" % port],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "cannot listen on HTTP" in out.stderr, out.stderr
    assert not os.path.exists(os.path.join(folder, "busy.sock"))


def test_systemd_readiness_and_socket_activation(folder):
    """A node started as systemd would: told to notify, given its Unix socket
    and its HTTP port as descriptors 3 and 4 (LISTEN_FDS)."""
    d = tempfile.mkdtemp(prefix="sd-", dir=folder)
    notify_path = os.path.join(d, "notify")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    unix_path = os.path.join(d, "activated.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    unix.bind(unix_path)
    unix.listen()
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    port = tcp.getsockname()[1]
    fds = (unix.fileno(), tcp.fileno())

    def as_systemd_does():
        os.dup2(fds[0], 3)
        os.dup2(fds[1], 4)

    env = dict(os.environ, NOTIFY_SOCKET=notify_path, LISTEN_FDS="2",
               LISTEN_FDNAMES="unix:http")
    # LISTEN_PID names the process that is to take them: the shell's pid,
    # which exec keeps.
    argv = ["sh", "-c", 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', "sh",
            CLI, "serve", "--catalog", str(CATALOG)]
    node = Node(d, argv=argv, env=env, pass_fds=fds + (3, 4), preexec_fn=as_systemd_does)
    try:
        notify.settimeout(60)
        message = notify.recv(4096).decode()
        assert "READY=1" in message, message
        assert "unix:" + unix_path in node.ready_line
        node.sock = unix_path
        assert shm_infers_work(node, 3)
        assert curl_json("http://127.0.0.1:%d/v2/health/ready" % port) == (200, {"ready": True})
        node.proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in notify.recv(4096).decode()
        assert node.proc.wait(timeout=30) == 0
        # The socket file is systemd's: left where it is.
        assert os.path.exists(unix_path)
    finally:
        node.stop()
        for s in (notify, unix, tcp):
            s.close()


def make_pki(d, name):
    """A CA and a server and a client certificate it signed (openssl)."""
    p = os.path.join(d, name)

    def sh(*args):
        subprocess.run(args, check=True, capture_output=True, timeout=120)

    sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
       "-subj", "/CN=%s-ca" % name, "-keyout", p + "-ca.key", "-out", p + "-ca.pem")
    for who in ("server", "client"):
        w = p + "-" + who
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + who,
           "-keyout", w + ".key", "-out", w + ".csr")
        sh("openssl", "x509", "-req", "-in", w + ".csr", "-CA", p + "-ca.pem", "-CAkey",
           p + "-ca.key", "-CAcreateserial", "-days", "2", "-out", w + ".pem")
    return p


def test_grpc_and_https_with_mutual_tls_take_only_certificates_of_its_ca(folder, pb):
    grpc, msgs, services = pb
    d = tempfile.mkdtemp(prefix="tls-", dir=folder)
    good = make_pki(d, "good")
    evil = make_pki(d, "evil")
    node = Node(d, "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0",
                "--tls-cert", good + "-server.pem",
                "--tls-key", good + "-server.key", "--tls-ca", good + "-ca.pem")
    try:
        assert "(mutual TLS)" in node.ready_line
        # HTTPS: curl with a client certificate of the node's CA (the server's
        # certificate names "server": curl is told that is 127.0.0.1).
        port = node.port("https")
        url = "https://server:%d" % port
        tls = ["--resolve", "server:%d:127.0.0.1" % port, "--cacert", good + "-ca.pem"]
        assert curl_json(url + "/v2/health/ready", *tls, "--cert", good + "-client.pem",
                         "--key", good + "-client.key") == (200, {"ready": True})
        body = '{"inputs": [{"name": "audio", "datatype": "FP32", "shape": [1], "data": [3]}]}'
        status, out = curl_json(url + "/v2/models/gain/infer", *tls, "--cert",
                                good + "-client.pem", "--key", good + "-client.key", "-d", body)
        assert status == 200 and out["outputs"][0]["data"] == [1.5]
        # No certificate, or one of another CA: refused.
        status, err = curl_json(url + "/v2/health/ready", *tls)
        assert status == 403 and "permission_denied" in err["error"]
        out = subprocess.run(["curl", "-sS", "--max-time", "30", *tls, "--cert", evil + "-client.pem",
                              "--key", evil + "-client.key", url + "/v2/health/ready"],
                             capture_output=True, text=True)
        assert out.returncode != 0 or '"ready":true' not in out.stdout, out
        target = "127.0.0.1:%d" % node.port("grpc")
        options = [("grpc.ssl_target_name_override", "server")]

        def stub(pki):
            creds = grpc.ssl_channel_credentials(
                root_certificates=Path(good + "-ca.pem").read_bytes(),
                private_key=Path(pki + "-client.key").read_bytes(),
                certificate_chain=Path(pki + "-client.pem").read_bytes())
            channel = grpc.secure_channel(target, creds, options)
            return channel, services.GRPCInferenceServiceStub(channel)

        channel, s = stub(good)
        try:
            assert s.ServerReady(msgs.ServerReadyRequest(), timeout=60).ready
            # TLS peers are admins (--tls-role's default): they may unload.
            s.RepositoryModelLoad(msgs.RepositoryModelLoadRequest(model_name="gain"), timeout=60)
            s.RepositoryModelUnload(msgs.RepositoryModelUnloadRequest(model_name="gain"), timeout=60)
            assert not s.ModelReady(msgs.ModelReadyRequest(name="gain"), timeout=60).ready
        finally:
            channel.close()
        channel, s = stub(evil)
        try:
            with pytest.raises(grpc.RpcError) as e:
                s.ServerReady(msgs.ServerReadyRequest(), timeout=30)
            assert e.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            channel.close()
    finally:
        node.stop()


def test_an_admin_http_door_unloads_and_a_model_in_use_is_busy(folder):
    d = tempfile.mkdtemp(prefix="admin-", dir=folder)
    node = Node(d, "--http", "127.0.0.1:0", "--insecure-admin")
    try:
        url = "http://127.0.0.1:%d" % node.port("http")
        assert curl_json(url + "/v2/repository/models/gain/load", "-X", "POST") == (200, {})
        # A shared-memory client holds a lease: the model is in use.
        if modelreg is not None:
            with modelreg.connect("unix:" + node.sock) as c:
                c.load("gain")
                status, err = curl_json(url + "/v2/repository/models/gain/unload", "-X", "POST")
                assert status == 409 and "busy" in err["error"]
        assert eventually(lambda: curl_json(url + "/v2/repository/models/gain/unload",
                                            "-X", "POST") == (200, {}))
        assert curl_json(url + "/v2/models/gain/ready")[0] == 503
        # Infers race unloads: a door sends a request straight to a loaded
        # model's actor, or loads it first; none may reach a model that left.
        body = json.dumps({"inputs": [{"name": "audio", "datatype": "FP32", "shape": [2],
                                       "data": [1, 3]}]})
        answers = []

        def infer_many():
            for _ in range(30):
                answers.append(curl_json(url + "/v2/models/gain/infer", "-d", body))

        callers = [threading.Thread(target=infer_many) for _ in range(2)]
        for t in callers:
            t.start()
        unloaded = 0
        while any(t.is_alive() for t in callers):
            st, _ = curl_json(url + "/v2/repository/models/gain/unload", "-X", "POST")
            assert st in (200, 409)  # 409: a request was on it just then
            unloaded += st == 200
        for t in callers:
            t.join()
        assert len(answers) == 60
        for st, out in answers:
            assert st == 200, out
            assert out["outputs"][0]["data"] == [0.5, 1.5]
        assert unloaded > 0
        assert eventually(lambda: curl_json(url + "/v2/repository/models/gain/unload",
                                            "-X", "POST") == (200, {}))
        # Unloading what is not loaded is no error.
        assert curl_json(url + "/v2/repository/models/gain/unload", "-X", "POST") == (200, {})
    finally:
        node.stop()


def test_one_grpc_peer_past_its_in_flight_limit_is_refused_and_others_are_served(folder, pb):
    grpc, msgs, services = pb
    d = tempfile.mkdtemp(prefix="flood-", dir=folder)
    catalog = os.path.join(d, "catalog.json")
    # A model whose load takes 4 s: calls made meanwhile stay in flight.
    Path(catalog).write_text(json.dumps({"models": {
        "held": {"backend": "identity", "params": {"load_delay_ms": 4000}},
        "gain": {"backend": "gain", "params": {"gain": 0.5}}}}))
    node = Node(d, argv=[CLI, "serve", "--socket", os.path.join(d, "node.sock"),
                         "--catalog", catalog, "--grpc", "127.0.0.1:0"])
    try:
        target = "127.0.0.1:%d" % node.port("grpc")
        flood = grpc.insecure_channel(target)
        other = grpc.insecure_channel(target, [("grpc.use_local_subchannel_pool", 1)])
        try:
            s = services.GRPCInferenceServiceStub(flood)
            T = msgs.ModelInferRequest.InferInputTensor
            request = msgs.ModelInferRequest(model_name="held", inputs=[
                T(name="x", datatype="FP32", shape=[1])], raw_input_contents=[b"\0" * 4])
            calls = [s.ModelInfer.future(request, timeout=120) for _ in range(100)]
            codes = []
            for c in calls:
                try:
                    c.result()
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as e:
                    codes.append(e.code())
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 1, codes
            assert codes.count(grpc.StatusCode.OK) >= 1, codes
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
            # Another connection was never limited by the first one's calls.
            o = services.GRPCInferenceServiceStub(other)
            r = o.ModelInfer(msgs.ModelInferRequest(model_name="gain", inputs=[
                T(name="audio", datatype="FP32", shape=[1])],
                raw_input_contents=[np.float32(4).tobytes()]), timeout=60)
            assert np.frombuffer(r.raw_output_contents[0], dtype="<f4")[0] == 2
        finally:
            flood.close()
            other.close()
    finally:
        node.stop()

"""edge-serve under the conditions a review reproduced (/tmp/s37 review, items 1-9): a drain that
gives up on a batch still in the backend, a second stop signal during a drain, an overloaded
server refusing before it tokenizes, a backend returning NaN, --max-batch-requests holding per
backend call, --max-batch-tokens refused before the load, counters shown at 0, one warning per
model name, and the small request and connection edges.

The served model is test_serve.py's tiny BERT (embed_dir). Patched backend calls hold the worker
or a lane for as long as a test needs, so nothing depends on how fast anything runs; the waits are
bounded and generous.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient
from test_serve import _free_port, embed_dir  # noqa: F401  (embed_dir: the module's fixture)
from test_serve_abandoned import _held, _post, wait_healthy

from edge_runtime import cli_serve
from edge_runtime._text import Encoded
from edge_runtime.serve import ServeConfig
from edge_runtime.serve._app import create_app
from edge_runtime.serve._batching import Batcher
from edge_runtime.serve._health import DriftMonitor
from edge_runtime.serve._metrics import ServeMetrics
from edge_runtime.serve._service import Service

ROOT = Path(__file__).resolve().parents[1]


# -- a server process whose backend is patched -------------------------------------------------

# Item 1's two ways a running batch outlives the drain: a lane (a thread interpreter exit joined:
# the process stayed up for the whole batch) blocked for good, or the daemon worker inside
# onnxruntime, calling it over and over (finalizing under it aborted the process: SIGABRT).
_PATCHED = """
import sys, threading
from edge_runtime import cli_serve
from edge_runtime.serve import _engine

how = sys.argv.pop(1)
if how == "lane-blocks":
    real = _engine.Served._call
    def _call(self, model, rows, group, out_rows):
        if model is self.lane_model:
            threading.Event().wait()
        return real(self, model, rows, group, out_rows)
    _engine.Served._call = _call
elif how == "backend-busy":
    def execute(self, rows, *args):
        feeds = self.encoder.pad(rows)
        while True:
            self.model.run(feeds)
    _engine.Served.execute = execute
elif how == "never-ends":
    _engine.Served.execute = lambda self, *args: threading.Event().wait()
sys.exit(cli_serve.main(sys.argv[1:]))
"""


@contextmanager
def _patched_server(directory: Path, how: str, log: Path, *flags: str):
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _PATCHED, how, str(directory), "--port", str(port),
             "--golden-interval", "0", "--max-batch-wait-ms", "0", *flags],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
    try:
        wait_healthy(proc, url, log)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _queued(url: str, inputs: int, proc, log: Path) -> None:
    """Wait until `inputs` inputs hold a permit (te_queue_size)."""
    deadline = time.monotonic() + 60
    while f"te_queue_size {inputs}\n" not in httpx.get(url + "/metrics", timeout=5).text:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)


@pytest.mark.parametrize(
    "how, flags",
    [("lane-blocks", ["--artifact", "onnx-int8", "--threads", "2"]),
     ("backend-busy", ["--artifact", "onnx-fp32", "--no-lanes"])],
)
def test_a_drain_that_gives_up_on_a_running_batch_exits_143_without_waiting_for_it(
    embed_dir, tmp_path, how, flags  # noqa: F811
):
    log = tmp_path / "server.log"
    with _patched_server(embed_dir, how, log, "--graceful-timeout", "1", *flags) as (proc, url):
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            post = pool.submit(httpx.post, url + "/embed", json={"inputs": ["one two", "three"]},
                               timeout=60)
            _queued(url, 2, proc, log)
            proc.send_signal(signal.SIGTERM)
            answer = post.result()
            try:  # the batch never ends: only a process that does not wait for it exits
                status = proc.wait(30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running 30 s after SIGTERM:\n{log.read_text()}")
    assert status == 143, log.read_text()  # not -6 (SIGABRT), nor a hang
    assert answer.status_code == 503 and answer.json()["error_type"] == "Unhealthy", answer.text
    text = log.read_text()
    assert "1 request dropped unfinished" in text and "still running is abandoned" in text, text
    assert "terminate called" not in text and "Traceback" not in text, text


def test_a_second_signal_during_the_drain_cuts_at_once(embed_dir, tmp_path):  # noqa: F811
    """Ctrl-C twice with a long --graceful-timeout: 503 JSON for every request still in flight,
    counted, one line, exit 130; not uvicorn's force exit (bare 500s with tracebacks, exit 0)."""
    log = tmp_path / "server.log"
    flags = ("--artifact", "onnx-fp32", "--graceful-timeout", "600", "--max-batch-requests", "1")
    with _patched_server(embed_dir, "never-ends", log, *flags) as (proc, url):
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            posts = [pool.submit(httpx.post, url + "/embed", json={"inputs": t}, timeout=60)
                     for t in ("one", "two", "three")]
            _queued(url, 3, proc, log)
            proc.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 30
            while True:  # the drain has begun once the listener is closed
                try:
                    httpx.get(url + "/health", timeout=1)
                except httpx.TransportError:
                    break
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            answers = [post.result() for post in posts]
            try:
                status = proc.wait(30)  # not after --graceful-timeout's 600 s
            except subprocess.TimeoutExpired:
                raise AssertionError(f"still running after the second SIGINT:\n{log.read_text()}")
    assert status == 130, log.read_text()
    for answer in answers:
        assert answer.status_code == 503 and answer.json()["error_type"] == "Unhealthy", answer.text
    text = log.read_text()
    said = [line for line in text.splitlines() if "dropped unfinished" in line]
    assert len(said) == 1 and re.search(
        r"drain cut short by a second SIGINT \d+\.\d s after SIGINT: 3 requests dropped", said[0]
    ), text
    for noise in ("Traceback", "Exception in ASGI application", "drained; exiting"):
        assert noise not in text, text


# -- in process --------------------------------------------------------------------------------


def test_no_permit_left_is_a_429_before_any_tokenization(embed_dir):  # noqa: F811
    service, ran, running, release = _held(embed_dir, max_concurrent_requests=1)
    served = service.slot.current
    real, tokenized = served.tokenize, []

    def tokenize(texts, *args):
        tokenized.append(list(texts))
        return real(texts, *args)

    served.tokenize = tokenize
    app = create_app(service)

    async def scenario():
        running_one = _post(app, {"inputs": "the running one"})
        assert await asyncio.to_thread(running.wait, 10)
        refused = await asyncio.wait_for(_post(app, {"inputs": "x " * 20_000}), 10)
        release.set()
        return refused, await running_one

    service.start()
    try:
        (status, body), (first, _) = asyncio.run(scenario())
    finally:
        release.set()
        service.stop()
    assert status == 429 and json.loads(body)["error_type"] == "Overloaded", body
    assert first == 200 and tokenized == [["the running one"]], "the refused request was tokenized"
    assert service.batcher.queued == 0


def test_permits_go_back_when_tokenization_refuses_the_request(embed_dir):  # noqa: F811
    service = Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=0,
                                  max_concurrent_requests=2))
    with TestClient(create_app(service)) as http:
        too_long = {"inputs": ["word " * 5000, "short"], "truncate": False}
        for _ in range(3):  # a permit leak would turn the second try into a 429
            answer = http.post("/embed", json=too_long)
            assert answer.status_code == 422 and "truncate" in answer.json()["error"], answer.text
        assert service.batcher.queued == 0
        assert http.post("/embed", json={"inputs": ["a", "b"]}).status_code == 200


@contextmanager
def _nan_backend(embed_dir):  # noqa: F811
    service = Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=0))
    model = service.slot.current.model
    real = model.run
    with TestClient(create_app(service), raise_server_exceptions=False) as http:
        assert http.post("/embed", json={"inputs": "healthy first"}).status_code == 200
        model.run = lambda feeds: {k: np.full_like(v, np.nan) for k, v in real(feeds).items()}
        yield service, http


def test_nan_outputs_are_a_424_backend_error_counted_as_inference(embed_dir):  # noqa: F811
    with _nan_backend(embed_dir) as (service, http):
        embed = http.post("/embed", json={"inputs": ["hi", "there"]})
        b64 = http.post("/v1/embeddings", json={"input": "hi", "encoding_format": "base64"})
        floats = http.post("/v1/embeddings", json={"input": "hi"})
        text = http.get("/metrics").text
    assert embed.status_code == 424 and embed.json()["error_type"] == "Backend", embed.text
    assert "NaN" in embed.json()["error"]
    for answer in (b64, floats):  # OpenAI's error shape, never a 200 of NaN vectors
        assert answer.status_code == 424 and answer.json()["type"] == "Backend", answer.text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("te_request_failure_total", (("err", "inference"),))] == 3
    assert samples[("te_request_success_total", (("method", "single"),))] == 1  # the healthy one
    assert samples[("te_request_success_total", (("method", "batch"),))] == 0
    assert math.isfinite(samples[("edge_embedding_norm_sum", ())])


def _golden_runs(http) -> dict[str, float]:
    text = http.get("/metrics").text
    return {s.labels["result"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "edge_golden_runs_total"}


def test_nan_outputs_turn_health_503_at_once_with_the_watchdog_on(embed_dir):  # noqa: F811
    """A backend gone NaN used to keep /health at 200 until the next periodic golden re-run
    (300 s by default): a load balancer went on sending traffic to a server answering 424s.
    Now the batch that came back NaN queues a golden re-run at once, and more NaN batches within
    SUSPECT_GAP_S queue none."""
    service = Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=3600))
    model = service.slot.current.model
    real = model.run
    with TestClient(create_app(service), raise_server_exceptions=False) as http:
        assert http.post("/embed", json={"inputs": "healthy first"}).status_code == 200
        assert http.get("/health").status_code == 200
        passes = _golden_runs(http).get("pass", 0)  # the re-run queued at load
        model.run = lambda feeds: {k: np.full_like(v, np.nan) for k, v in real(feeds).items()}
        for _ in range(3):
            assert http.post("/embed", json={"inputs": "now wrong"}).status_code == 424
        deadline = time.monotonic() + 60
        while http.get("/health").status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        health = http.get("/health")
        assert health.status_code == 503 and "golden" in health.json()["error"], health.text
        assert _golden_runs(http) == {"pass": passes, "fail": 1}  # one re-run for three NaN batches
        model.run = real
        assert service.watchdog.check(timeout=60)["ok"]
        assert http.get("/health").status_code == 200


def test_nan_outputs_queue_no_golden_run_with_the_watchdog_off(embed_dir):  # noqa: F811
    """--golden-interval 0 turns every automatic re-run off, the NaN-triggered one too."""
    with _nan_backend(embed_dir) as (service, http):
        assert http.post("/embed", json={"inputs": "wrong"}).status_code == 424
        assert service.batcher.call(lambda: "after the batch").result(30) == "after the batch"
        assert _golden_runs(http).get("fail", 0) == 0
        assert http.get("/health").status_code == 200


def test_histograms_and_drift_skip_non_finite_values():
    metrics = ServeMetrics(128)
    for value in (float("nan"), float("inf"), 2.0):
        metrics.embedding_norm.observe(value)
    assert metrics.embedding_norm.count() == 1
    assert "edge_embedding_norm_sum 2\n" in metrics.registry.render()
    drift = DriftMonitor(metrics, {})
    drift.observe("embedding_norm", [float("nan")] * DriftMonitor.REFERENCE + [1.0])
    assert drift._warmup["embedding_norm"] == [1.0]


def _rows(count: int) -> list[Encoded]:
    return [Encoded([i + 1], [0], ["t"], [False]) for i in range(count)]


@pytest.mark.parametrize("limit, calls", [(1, [1, 1, 1, 1, 1]), (2, [2, 2, 1]), (None, [5])])
def test_max_batch_requests_bounds_every_batch_and_backend_call(tmp_path, limit, calls):
    executed = []

    class Served:
        name = "fake"

        def execute(self, rows, batch_invariant, max_tokens):
            executed.append(len(rows))
            return np.asarray([[r.ids[0]] for r in rows], np.float32), 1, 0

    metrics = ServeMetrics(128)
    batcher = Batcher(ServeConfig(path=tmp_path, max_batch_requests=limit), metrics)
    batcher.start()
    try:
        result = batcher.submit(Served(), _rows(5)).result(10)
    finally:
        assert batcher.close(10)
    assert executed == calls
    assert result.outputs[:, 0].tolist() == [1, 2, 3, 4, 5]  # every row's own output, in order
    assert metrics.batch_size.count() == len(calls)
    assert metrics.backend_calls.value() == len(calls)


def test_max_batch_tokens_below_the_manifests_length_is_refused_before_the_load(
    embed_dir, monkeypatch, capsys  # noqa: F811
):
    import edge_runtime
    from edge_runtime.serve import _server

    def never(*args, **kwargs):
        raise AssertionError("nothing may be bound or loaded for a bad setting")

    monkeypatch.setattr(edge_runtime, "load", never)
    monkeypatch.setattr(_server, "_listen", never)
    longest = json.loads((embed_dir / "manifest.json").read_text())["tokenizer"]["max_length"]
    assert cli_serve.main([str(embed_dir), "--max-batch-tokens", str(longest - 1)]) == 2
    err = capsys.readouterr().err
    assert f"--max-batch-tokens ({longest - 1}) is below the model's maximum input length " \
           f"({longest}" in err and f"raise it to at least {longest}" in err, err


def test_labelled_counters_show_their_known_values_at_0_from_the_start():
    text = ServeMetrics(128).registry.render()
    for line in ('te_request_failure{err="overloaded"} 0', 'te_request_failure{err="inference"} 0',
                 'te_request_failure{err="disconnect"} 0', 'te_request_count{method="batch"} 0',
                 'te_request_success{method="single"} 0', 'edge_golden_runs_total{result="fail"} 0',
                 'edge_reload_total{result="success"} 0', 'edge_reload_total{result="failure"} 0'):
        assert line + "\n" in text, line


def test_a_model_name_that_is_not_served_is_warned_about_once_per_name(embed_dir, caplog):  # noqa: F811
    service = Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=0))
    with caplog.at_level(logging.WARNING, "edge_runtime.serve"), \
            TestClient(create_app(service)) as http:
        for name in ["text-embedding-3-small"] * 3 + ["other"] * 2:
            answer = http.post("/v1/embeddings", json={"input": "hello", "model": name})
            assert answer.status_code == 200, answer.text
    said = [r.getMessage() for r in caplog.records if "names model" in r.getMessage()]
    assert len(said) == 2 and "'text-embedding-3-small'" in said[0] and "'other'" in said[1], said


@pytest.fixture(scope="module")
def http(embed_dir):  # noqa: F811
    """A client of one running Service, shared by the tests of request edges."""
    service = Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=0))
    with TestClient(create_app(service)) as client:
        yield client


@pytest.mark.parametrize("value", [[], {}, 0, False, "int8"])
def test_an_encoding_format_that_is_not_a_format_is_a_422(http, value):
    answer = http.post("/v1/embeddings", json={"input": "a", "encoding_format": value})
    assert answer.status_code == 422 and "encoding_format" in answer.json()["message"], answer.text


def test_an_empty_body_is_said_to_be_empty(http):
    answer = http.post("/embed", content=b"")
    assert answer.status_code == 422 and "request body is empty" in answer.json()["error"]


def test_drift_series_outlive_a_reload_to_a_model_with_the_same_reference():
    metrics = ServeMetrics(128)
    manifest = {"input_stats": {"token_length": {"quantiles": {"0.1": 6, "0.5": 17, "0.9": 27}}}}
    drift = DriftMonitor(metrics, manifest)
    drift.observe("token_length", list(range(5, 30)) * 4)
    drift.update()
    before = metrics.drift.value(signal="token_length", reference="manifest")
    assert before is not None
    drift.reset(manifest)  # a reload: no new input yet
    drift.update()
    assert metrics.drift.value(signal="token_length", reference="manifest") == before
    drift.reset({})  # a model without input_stats: its reference is another kind
    assert metrics.drift.value(signal="token_length", reference="manifest") is None


def test_keep_alive_timeout_is_a_flag_checked_like_the_others(embed_dir, tmp_path, capsys):  # noqa: F811
    assert cli_serve.main([str(tmp_path), "--keep-alive-timeout", "-1"]) == 2
    assert "--keep-alive-timeout must be a number from 0 to 3600" in capsys.readouterr().err
    assert ServeConfig(tmp_path).keep_alive_timeout_s > 60  # above common proxies' idle timeout
    log = tmp_path / "server.log"
    with _patched_server(embed_dir, "as-is", log, "--artifact", "onnx-fp32",
                         "--keep-alive-timeout", "1") as (proc, url):
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            assert sock.recv(4096) == b"", "the idle connection is closed by the server"

"""edge-serve and the requests nobody waits for any more: a client that leaves while its inputs
are queued (they are dropped unrun and free their permits at once), and a drain whose time runs
out (the requests still unanswered get a 503, one log line says how many, the exit status is
143).

The served model is test_serve.py's tiny BERT (embed_dir); a patched backend call holds the
worker busy for as long as a test needs, so nothing here depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from test_serve import _free_port, embed_dir  # noqa: F401  (embed_dir: the module's fixture)

from edge_runtime._text import Encoded
from edge_runtime.serve import ServeConfig
from edge_runtime.serve._app import create_app
from edge_runtime.serve._batching import Batcher
from edge_runtime.serve._metrics import ServeMetrics
from edge_runtime.serve._service import Service

ROOT = Path(__file__).resolve().parents[1]


async def _until(condition, what: str) -> None:
    """Poll `condition` on the event loop; fail (not hang) if it never holds."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def wait_healthy(proc: subprocess.Popen, url: str, log: Path, seconds: float = 120) -> None:
    """Until the edge-serve subprocess `proc` answers /health with 200; its log if it exits or
    takes longer than `seconds` (a load on a busy CI machine)."""
    deadline = time.monotonic() + seconds
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)

def _post(app, body: dict, leave: asyncio.Event | None = None) -> asyncio.Future:
    """POST /embed to the app in process, as uvicorn hands it over: the body, then (once the
    client closes its connection, when `leave` is set) http.disconnect. -> (status, body)."""
    pending = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]
    sent: list[dict] = []

    async def receive():
        if pending:
            return pending.pop(0)
        await (leave or asyncio.Event()).wait()  # a client that stays never leaves
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/embed", "raw_path": b"/embed", "root_path": "",
             "query_string": b"", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 3000)}

    async def answered():
        await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return status, body

    return asyncio.ensure_future(answered())


def test_a_cancelled_job_leaves_the_queue_and_frees_its_permits_at_once(tmp_path):
    """Not when the worker gets to it: until then its permits would refuse live requests 429."""
    ran, running, release = [], threading.Event(), threading.Event()

    class Served:
        def execute(self, rows, batch_invariant, max_tokens):
            ran.append([r.ids for r in rows])
            running.set()
            release.wait(10)
            return np.zeros((len(rows), 1), np.float32), 1, 0

    served, row = Served(), Encoded([1, 2], [0, 0], ["a", "b"], [False, False])
    config = ServeConfig(path=tmp_path, max_batch_wait_ms=0, max_concurrent_requests=3)
    batcher = Batcher(config, ServeMetrics(128))
    batcher.start()
    try:
        first = batcher.submit(served, [row])
        assert running.wait(10)
        abandoned = batcher.submit(served, [row, row])
        assert batcher.queued == 3
        assert abandoned.cancel()  # what asyncio does to it when its request stops waiting
        assert batcher.queued == 1, "a job cancelled while queued gave its permits back at once"
        live = batcher.submit(served, [Encoded([7], [0], ["c"], [False])] * 2)  # 1 + 2 of 3 permits
        release.set()
        assert first.result(10).batch_size == 1 and live.result(10).batch_size == 2
        assert ran == [[[1, 2]], [[7], [7]]], "the cancelled job never ran nor took room in a batch"
        assert batcher.queued == 0 and batcher.alive
    finally:
        release.set()
        assert batcher.close(10)


def _held(directory: Path, **settings):
    """A Service whose backend calls wait for `release` (the worker is held busy), recording
    how many inputs each call got in `ran`; `running` is set once the first call started."""
    service = Service(ServeConfig(directory, artifact="onnx-fp32", golden_interval_s=0,
                                  max_batch_wait_ms=0, **settings))
    served = service.slot.current
    real, ran, running, release = served.execute, [], threading.Event(), threading.Event()

    def execute(rows, *args):
        ran.append(len(rows))
        running.set()
        release.wait(30)
        return real(rows, *args)

    served.execute = execute
    return service, ran, running, release


def test_a_client_gone_while_queued_is_never_run_nor_holds_up_live_ones(embed_dir):  # noqa: F811
    service, ran, running, release = _held(embed_dir, max_concurrent_requests=8)
    metrics, app = service.metrics, create_app(service)  # a new Service: its metrics start at 0

    async def scenario():
        live = _post(app, {"inputs": "a client that waits"})
        assert await asyncio.to_thread(running.wait, 10)
        leave = asyncio.Event()
        gone = [_post(app, {"inputs": f"a client that leaves {i}"}, leave) for i in range(6)]
        await _until(lambda: service.batcher.queued == 7, "six requests queued behind the first")
        leave.set()  # their clients close their connections while the worker is still busy
        answers = await asyncio.wait_for(asyncio.gather(*gone), 10)
        assert [status for status, _ in answers] == [499] * 6
        assert not live.done() and service.batcher.queued == 1, "their permits are back already"
        # 1 + 7 permits of 8: refused 429 if the abandoned requests still held theirs
        later = _post(app, {"inputs": ["a later client"] * 7})
        await _until(lambda: service.batcher.queued == 8, "the later request queued")
        release.set()
        return await live, await later

    service.start()
    try:
        (live_status, _), (later_status, body) = asyncio.run(scenario())
    finally:
        release.set()
        service.stop()
    assert live_status == 200 and later_status == 200, body
    assert ran == [1, 7], "the six abandoned inputs were never computed"
    assert metrics.request_failure.value(err="disconnect") == 6
    counts = [(metrics.request_count.value(method=m), metrics.request_success.value(method=m))
              for m in ("single", "batch")]
    assert counts == [(7, 1), (1, 1)]  # count = success + failures (docs/guarantees.md)


def test_the_drains_cut_answers_every_request_still_in_flight_and_drops_its_inputs(
    embed_dir,  # noqa: F811
):
    service, ran, running, release = _held(embed_dir, max_batch_requests=1)
    app = create_app(service)

    async def scenario():
        posts = [_post(app, {"inputs": "the running one"})]
        assert await asyncio.to_thread(running.wait, 10)
        posts += [_post(app, {"inputs": f"queued {i}"}) for i in range(2)]
        await _until(lambda: service.batcher.queued == 3, "two requests queued behind the first")
        service.cut()  # what the server does when graceful_timeout_s is up
        answers = await asyncio.wait_for(asyncio.gather(*posts), 10)
        queued = service.batcher.queued  # the running batch's input only: the others left
        release.set()
        return answers, queued

    service.start()
    try:
        answers, queued = asyncio.run(scenario())
    finally:
        release.set()
        service.stop()
    for status, body in answers:
        assert status == 503 and json.loads(body)["error_type"] == "Unhealthy", body
    assert queued == 1 and ran == [1], "the queued inputs of cut requests were never run"
    assert service.drained().dropped == 3 and service.inflight.cut() == 0  # nothing left to cut
    assert service.metrics.request_failure.value(err="shutdown") == 3
    assert service.metrics.request_count.value(method="single") == 3


_BATCH_NEVER_ENDS = """
import sys, threading
from edge_runtime import cli_serve
from edge_runtime.serve import _engine

_engine.Served.execute = lambda self, *args: threading.Event().wait()  # a batch that never ends
sys.exit(cli_serve.main(sys.argv[1:]))
"""


def test_a_drain_out_of_time_answers_503_says_how_many_in_one_line_and_exits_143(
    embed_dir, tmp_path  # noqa: F811
):
    port = _free_port()
    url, log = f"http://127.0.0.1:{port}", tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BATCH_NEVER_ENDS, str(embed_dir), "--port", str(port),
             "--artifact", "onnx-fp32", "--golden-interval", "0", "--graceful-timeout", "1",
             "--max-batch-wait-ms", "0", "--max-batch-requests", "1"],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
    try:
        wait_healthy(proc, url, log)
        deadline = time.monotonic() + 120
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            posts = [pool.submit(httpx.post, url + "/embed", json={"inputs": t}, timeout=60)
                     for t in ("one", "two", "three")]
            while "te_queue_size 3" not in httpx.get(url + "/metrics", timeout=5).text:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)  # one input runs forever, two wait behind it
            answers = [post.result() for post in posts]
        assert proc.wait(30) == 143, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for answer in answers:
        assert answer.status_code == 503 and answer.json()["error_type"] == "Unhealthy", answer.text
        assert "drain ran out of time" in answer.json()["error"]
    text = log.read_text()
    said = [line for line in text.splitlines() if "drain timed out" in line]
    assert len(said) == 1 and re.search(
        r"ERROR edge_runtime\.serve: drain timed out \d+\.\d s after SIGTERM: 3 requests dropped "
        r"unfinished \(answered 503 Unhealthy\)", said[0]), text
    for noise in ("Traceback", "Exception in ASGI application", "Cancel ", "drained; exiting"):
        assert noise not in text, text
    from edge_runtime import cli_serve

    assert "143 (128 + SIGTERM" in " ".join(cli_serve._parser().format_help().split())  # documented

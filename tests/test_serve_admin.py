"""edge-serve's reloads, admin routes and request counting at their edges: a symlinked DIR moved
during a load, SIGHUP before the server is up, a reload to a model the limits do not allow, an
empty reload path, IPv4 loopback clients of an IPv6 socket, a client gone mid-body.

The served model is test_serve.py's tiny BERT (embed_dir); most tests drive the app in-process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient
from test_serve import _free_port, embed_dir  # noqa: F401  (embed_dir: the module's fixture)

import edge_runtime
from edge_runtime.serve import ServeConfig
from edge_runtime.serve import _reload
from edge_runtime.serve._app import create_app
from edge_runtime.serve._service import Service

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(embed_dir):  # noqa: F811
    return Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=0))


def test_both_loads_of_a_reload_come_from_one_directory(tmp_path, monkeypatch):
    """DIR is a symlink a deployment moves; the main model and its lanes' single-threaded twin
    must not come from two directories when it moves between the two opens: the twin is the
    model's sibling (Model.sibling), opened from the directory and manifest the load read."""
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    current = tmp_path / "current"
    current.symlink_to(v1, target_is_directory=True)
    loads = []

    class Model:  # what load_served asks of a model that gets lanes
        name, batch_dependent, threads, thread_safe = "onnx-int8", True, 2, True

        def __init__(self, root):
            self.root = root

        def sibling(self, threads):
            return Model(self.root)

    def load(path, **kwargs):
        loads.append(Path(path).resolve())
        current.unlink()  # `ln -sfn v2 current` while the load runs
        current.symlink_to(v2, target_is_directory=True)
        return Model(Path(path).resolve())

    monkeypatch.setattr(edge_runtime, "load", load)
    monkeypatch.setattr(edge_runtime, "read_manifest", lambda root: {"task": "feature-extraction"})
    monkeypatch.setattr(_reload, "Served", lambda model, path, generation, lane_model: lane_model)
    lanes = _reload.load_served(ServeConfig(current), current, 1)
    assert lanes is not None and loads == [v1.resolve()] and lanes.root == v1.resolve()  # one load, one directory


_HUP_WHILE_LOADING = """
import os, pathlib, signal, sys
from edge_runtime import cli_serve
from edge_runtime.serve import _server
current, moved_to, when = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3]
parser = cli_serve._parser

def early_parser():  # `systemctl reload` right after the start: edge-serve still parses its flags
    if when == "early":
        os.kill(os.getpid(), signal.SIGHUP)
    return parser()

cli_serve._parser = early_parser

class Service(_server.Service):
    def __init__(self, config):
        if when == "loading":
            os.kill(os.getpid(), signal.SIGHUP)  # `systemctl reload` while the model loads
        super().__init__(config)
        current.unlink()  # and the link moved before the load was done
        current.symlink_to(moved_to, target_is_directory=True)

_server.Service = Service
sys.exit(cli_serve.main(sys.argv[4:]))
"""


@pytest.mark.parametrize("when", ["early", "loading"])
def test_sighup_while_starting_neither_kills_the_server_nor_is_lost(embed_dir, tmp_path, when):  # noqa: F811
    """`loading`: while the model loads. `early`: before the server's own handler exists (found by
    a review, session 49: a SIGHUP in edge-serve's first ~0.5 s ended the process, exit 129)."""
    v1 = shutil.copytree(embed_dir, tmp_path / "v1")
    v2 = shutil.copytree(embed_dir, tmp_path / "v2")
    current = tmp_path / "current"
    current.symlink_to(v1, target_is_directory=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _HUP_WHILE_LOADING, str(current), str(v2), when, str(current),
             "--port", str(port), "--artifact", "onnx-fp32", "--golden-interval", "0"],
            stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )
    try:
        deadline = time.monotonic() + 120
        while True:  # the deferred reload of v2 is counted once it swapped in
            assert proc.poll() is None, f"edge-serve exited with {proc.returncode}:\n{log.read_text()}"
            try:
                if 'edge_reload_total{result="success"} 1' in httpx.get(url + "/metrics", timeout=5).text:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert "SIGHUP while starting" in log.read_text() and "moved during the load" in log.read_text()
        assert (when == "loading") == ("the reload waits until the model being loaded is up" in log.read_text())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_reload_is_held_to_the_limits_checked_at_start(service, monkeypatch):
    load_served = _reload.load_served

    def longer(config, path, generation):  # a model whose inputs exceed --max-batch-tokens
        served = load_served(config, path, generation)
        served.max_length = config.max_batch_tokens + 1
        return served

    monkeypatch.setattr(_reload, "load_served", longer)
    before = service.slot.current
    failures = service.metrics.reloads.value(result="failure")
    outcome = service.reloader.reload()
    assert not outcome["ok"] and "max_batch_tokens (16384) is below" in outcome["error"]
    assert service.slot.current is before
    assert service.metrics.reloads.value(result="failure") == failures + 1


@pytest.mark.parametrize("client", ["::ffff:127.0.0.1", "127.0.0.1", "::1"])
def test_admin_routes_take_loopback_clients_and_an_empty_path_is_refused(service, client):
    http = TestClient(create_app(service), client=(client, 50000))
    failures = service.metrics.reloads.value(result="failure")
    for path in ("", "  "):
        answer = http.post("/admin/reload", json={"path": path})  # not 403: a loopback client
        assert answer.status_code == 422 and "`path` is empty" in answer.json()["error"], answer.text
    assert service.metrics.reloads.value(result="failure") == failures  # nothing was loaded


@pytest.mark.parametrize("client", ["::ffff:10.0.0.1", "10.0.0.1", "testclient"])
def test_admin_routes_refuse_other_clients(service, client):
    answer = TestClient(create_app(service), client=(client, 50000)).post("/admin/reload")
    assert answer.status_code == 403 and "loopback" in answer.json()["error"]


def test_a_client_gone_mid_body_is_counted_as_a_request(service):
    """te_request_count = success + failures (docs/guarantees.md), disconnects included."""
    app, metrics = create_app(service), service.metrics
    count = metrics.request_count.value(method="single")
    disconnects = metrics.request_failure.value(err="disconnect")

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        pass

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/embed", "raw_path": b"/embed", "root_path": "",
             "query_string": b"", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 3000)}
    asyncio.run(app(scope, receive, send))
    assert metrics.request_failure.value(err="disconnect") == disconnects + 1
    assert metrics.request_count.value(method="single") == count + 1


def test_a_reloaded_away_model_is_freed_without_the_cyclic_gc(embed_dir):  # noqa: F811
    """Every answered request must leave nothing pointing at its model: a job <-> future cycle kept
    each reloaded-away model (its sessions, its lane threads) alive until a gen-2 collection, and
    repeated reloads climbed to ~6x the memory of one model."""
    import gc
    import weakref

    service = Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=0))
    http = TestClient(create_app(service))
    with http:
        assert http.post("/embed", json={"inputs": ["a b c", "d e"]}).status_code == 200
        gc.collect()
        gc.disable()
        try:
            old = weakref.ref(service.slot.current)
            assert service.reloader.reload()["ok"]
            assert http.post("/embed", json={"inputs": ["a b c", "d e"]}).status_code == 200
            assert old() is None, [type(r).__name__ for r in gc.get_referrers(old())]
        finally:
            gc.enable()


def _stop_requested_while_a_reload_loads(embed_dir, monkeypatch, graceful_timeout_s: float, load) -> Service:
    """A started server whose reload (SIGHUP) is inside load_served, calling `load()`, when SIGTERM
    comes; the caller calls stop()."""
    import threading

    service = Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=0,
                                  graceful_timeout_s=graceful_timeout_s))
    loading = threading.Event()

    def hooked(config, path, generation):
        loading.set()
        return load()

    monkeypatch.setattr(_reload, "load_served", hooked)
    service.start()
    service.reloader.request()
    assert loading.wait(30)
    service.stop_requested(signal.SIGTERM)
    return service


def test_a_reload_still_loading_at_stop_is_waited_for_then_abandoned(embed_dir, monkeypatch, caplog):  # noqa: F811
    """SIGHUP just before SIGTERM: the reload thread (a daemon) was inside the backend's session
    creation when the interpreter finalized, which can abort the process. The stop now waits for
    it within the drain's time, then reports it abandoned (edge-serve leaves by os._exit), and no
    reload starts once the server is stopping."""
    import threading

    release = threading.Event()

    def blocked():
        release.wait(60)
        raise RuntimeError("released by the test")

    service = _stop_requested_while_a_reload_loads(embed_dir, monkeypatch, 1, blocked)
    try:
        service.stop()  # the load is released only after this returns: a stop that waited for it fails below
        assert service.drained().abandoned
        assert any("reload of" in r.getMessage() and "abandoned" in r.getMessage() for r in caplog.records)
    finally:
        release.set()
    deadline = time.monotonic() + 30
    while service.reloader.loading is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    refused = service.reloader.reload()
    assert not refused["ok"] and "shutting down" in refused["error"]


def test_a_reload_that_ends_within_the_drain_is_not_abandoned(embed_dir, monkeypatch):  # noqa: F811
    def short():
        time.sleep(0.3)
        raise RuntimeError("a failed reload")

    service = _stop_requested_while_a_reload_loads(embed_dir, monkeypatch, 30, short)
    service.stop()
    assert not service.drained().abandoned


def test_a_symlinked_dir_reports_the_directory_it_named_at_load(embed_dir, tmp_path, caplog):  # noqa: F811
    """`ln -sfn vN current` then SIGHUP: /info's path and the reload failure's "still serving ...
    from" said "current" alone, which by then named the directory that failed. They now give the
    directory each model was loaded from too."""
    import logging

    v1, v2 = Path(shutil.copytree(embed_dir, tmp_path / "v1")), Path(shutil.copytree(embed_dir, tmp_path / "v2"))
    broken = tmp_path / "broken"
    broken.mkdir()
    current = tmp_path / "current"
    current.symlink_to(v1, target_is_directory=True)
    service = Service(ServeConfig(current, artifact="onnx-fp32", golden_interval_s=0))
    with TestClient(create_app(service)) as http:
        info = http.get("/info").json()["artifact"]
        assert info["path"] == str(current) and info["directory"] == str(v1.resolve())
        current.unlink()
        current.symlink_to(v2, target_is_directory=True)
        assert service.reloader.reload()["ok"]
        assert http.get("/info").json()["artifact"]["directory"] == str(v2.resolve())
        current.unlink()
        current.symlink_to(broken, target_is_directory=True)
        with caplog.at_level(logging.ERROR, logger="edge_runtime.serve"):
            assert not service.reloader.reload()["ok"]
    failure = next(r.getMessage() for r in caplog.records if "reload of" in r.getMessage())
    assert f"still serving onnx-fp32 from {current} (-> {v2.resolve()})" in failure, failure


def test_a_task_without_routes_is_refused_from_the_manifest_before_loading(tmp_path, monkeypatch):
    """edge-serve of a token-classification directory loaded and verified the model (seconds of
    golden samples on a Pi) before refusing it: the manifest alone says the task."""
    import json

    import tiny_artifact

    from edge_runtime.serve._config import ServeError

    root = tmp_path / "tokens"
    manifest = tiny_artifact.build(root)
    manifest["task"] = "token-classification"
    (root / "manifest.json").write_text(json.dumps(manifest))

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the task was checked")

    monkeypatch.setattr(edge_runtime, "load", no_load)
    with pytest.raises(ServeError, match="does token-classification") as refused:
        _reload.load_served(ServeConfig(root), root, 0)
    assert refused.value.err == "model_type"


def test_a_signed_served_directory_is_not_read_before_its_signature_is_checked(tmp_path, monkeypatch):
    """Found by a review (session 49): with --trusted-key, edge-serve read manifest.json (its task,
    its max length) before load() checked the signature, unbounded and blocking (a FIFO hung the
    server, a huge sparse file crashed it): docs/signing.md promises nothing is read first. The
    task is checked after the load instead; unsigned, it is still checked before."""
    import json

    import tiny_artifact

    from edge_runtime.serve._config import ServeError

    root = tmp_path / "tokens"
    manifest = tiny_artifact.build(root)
    manifest["task"] = "token-classification"
    (root / "manifest.json").write_text(json.dumps(manifest))
    read = []
    monkeypatch.setattr(edge_runtime, "read_manifest", lambda *a, **k: read.append(a) or manifest)

    class Model:
        name, batch_dependent, threads, thread_safe, task = "onnx-fp32", False, 1, True, "token-classification"

    monkeypatch.setattr(edge_runtime, "load", lambda *a, **k: Model())
    with pytest.raises(ServeError, match="does token-classification"):
        _reload.load_served(ServeConfig(root, trusted_keys=("key.pub",)), root, 0)
    assert read == []  # refused from the loaded (verified) model, nothing read before


def test_the_manifest_read_before_a_load_is_bounded_and_never_blocks(tmp_path):
    """What edge-serve reads before its (unsigned) load: a FIFO or a file larger than any manifest
    is a ManifestError at once, not a hang or the whole file in memory."""
    from edge_runtime._manifest_bytes import MAX_MANIFEST_BYTES, read_manifest_bytes
    from edge_runtime.serve._config import manifest_max_length

    fifo = tmp_path / "fifo" / "manifest.json"
    fifo.parent.mkdir()
    os.mkfifo(fifo)
    with pytest.raises(edge_runtime.ManifestError, match="not a regular file"):
        read_manifest_bytes(fifo)
    assert manifest_max_length(fifo.parent) is None
    huge = tmp_path / "huge" / "manifest.json"
    huge.parent.mkdir()
    with open(huge, "wb") as sparse:
        sparse.truncate(MAX_MANIFEST_BYTES + 1)
    with pytest.raises(edge_runtime.ManifestError, match="a manifest is at most"):
        read_manifest_bytes(huge)
    assert manifest_max_length(huge.parent) is None

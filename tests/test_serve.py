"""edge-serve (issue 12): a real server process on 127.0.0.1 driven with a real HTTP client.

Tiny BERT models converted for x86-avx2 (ONNX FP32 + dynamic INT8), one for feature extraction
and one for text classification. Every route is checked for TEI's shapes, errors and status codes;
served vectors are compared with Model.embed on the same texts; batches are proved to form and to
leave each input's numbers its own; /metrics is parsed with prometheus_client's parser; reloads
(good and bad), SIGHUP and the SIGTERM drain run against the process. No speed is asserted; the
batch-wait test tells "waited 3 s" from "went at once" by seconds, not by tight bounds.
"""

from __future__ import annotations

import base64
import concurrent.futures
import json
import os
import shutil
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

import edge_runtime
from converters import ConvertConfig, convert

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "hello world",
    "a much longer sentence about nothing in particular that goes on and on",
    "short",
    "the weather is nice today and the sun is out",
    "x",
    "Ünïcödé works too",
]


@pytest.fixture(scope="module")
def embed_dir(tiny_model_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "embed"
    convert(
        ConvertConfig(
            model=tiny_model_factory("bert", "feature-extraction"),
            target="x86-avx2",
            out=out,
            latency_runs=1,
        )
    )
    return out


@pytest.fixture(scope="module")
def classify_dir(tiny_model_factory, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve") / "classify"
    convert(
        ConvertConfig(
            model=tiny_model_factory("bert", "text-classification"),
            target="x86-avx2",
            out=out,
            latency_runs=1,
        )
    )
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)

    def metrics(self) -> dict[str, dict]:
        """{sample name: {sorted labels: value}} as prometheus_client's parser reads /metrics
        (it names counter samples NAME_total)."""
        text = httpx.get(self.url + "/metrics", timeout=30).text
        samples: dict[str, dict] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                    sample.value
                )
        return samples


@contextmanager
def serving(directory: Path, *flags: str, log_dir: Path):
    """`python -m edge_runtime.serve DIR --port P FLAGS` until it answers /health; stopped after."""
    port = _free_port()
    log = log_dir / f"server-{port}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edge_runtime.serve",
                str(directory),
                "--port",
                str(port),
                *flags,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"edge-serve exited with {proc.returncode}:\n{log.read_text()}"
                )
            try:
                if httpx.get(server.url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"edge-serve did not become healthy:\n{log.read_text()}")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _post_all(server: Server, path: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST every body at once, each from its own connection."""

    def one(body):
        with server.client() as client:
            return client.post(path, json=body)

    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(one, bodies))


def test_import_edge_runtime_does_not_load_the_server_stack():
    code = (
        "import sys, edge_runtime, edge_runtime.serve\n"
        "print(sorted(m for m in ('starlette', 'uvicorn', 'anyio', 'h11') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


def test_embedding_routes_match_model_embed(embed_dir, tmp_path, monkeypatch):
    with serving(embed_dir, log_dir=tmp_path) as server, server.client() as client:
        info = client.get("/info").json()
        name = info["artifact"]["artifact"]
        model = edge_runtime.load(embed_dir, artifact=name)
        # TEI's "normalize" (default true) decides, whatever the manifest's pooling says
        expected = _unit(model.embed(TEXTS))
        assert info["model_type"] == {"embedding": {"pooling": "mean"}}
        assert info["max_input_length"] == model._text().max_length
        assert info["max_client_batch_size"] == 32 and info["max_batch_tokens"] == 16384
        assert (
            info["model_dtype"] == model.artifact["precision"]
            and info["version"] == edge_runtime.__version__
        )

        health = client.get("/health")
        assert health.status_code == 200 and health.content == b""

        single = client.post("/embed", json={"inputs": TEXTS[0]})
        assert single.status_code == 200
        assert np.asarray(single.json()).shape == (1, expected.shape[1])
        assert np.abs(np.asarray(single.json()[0]) - expected[0]).max() < 1e-6
        assert int(single.headers["x-compute-tokens"]) == len(
            model._text().encode_texts([TEXTS[0]])[0].ids
        )

        batch_response = client.post("/embed", json={"inputs": TEXTS})
        batch = np.asarray(batch_response.json(), dtype=np.float32)
        assert batch.shape == expected.shape and np.abs(batch - expected).max() < 1e-6
        # float32 values in 9 significant digits (test_json_floats_keep_every_float32_bit)
        assert len(batch_response.content) < 0.7 * len(json.dumps(batch.astype(np.float64).tolist()))

        raw = np.asarray(client.post("/embed", json={"inputs": TEXTS, "normalize": False}).json())
        norms = np.linalg.norm(raw, axis=1)
        assert not np.allclose(norms, 1.0, atol=1e-3)  # really not normalized
        assert np.abs(raw / norms[:, None] - expected).max() < 1e-5

        cut = np.asarray(client.post("/embed", json={"inputs": TEXTS[:2], "dimensions": 8}).json())
        assert cut.shape == (2, 8) and np.allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)

        openai = client.post(
            "/v1/embeddings", json={"input": TEXTS[:3], "model": "whatever"}
        ).json()
        assert openai["object"] == "list" and openai["model"] == info["model_id"]
        assert [d["index"] for d in openai["data"]] == [0, 1, 2]
        assert all(d["object"] == "embedding" for d in openai["data"])
        assert (
            np.abs(np.asarray([d["embedding"] for d in openai["data"]]) - expected[:3]).max() < 1e-6
        )
        tokens = sum(len(e.ids) for e in model._text().encode_texts(TEXTS[:3]))
        assert openai["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}

        # an existing TEI client, unchanged: huggingface_hub posts to the server's URL itself.
        # Its offline switch (conftest's HF_HUB_OFFLINE=1) refuses even loopback URLs; the hub
        # itself is never contacted here.
        from huggingface_hub import InferenceClient, constants

        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

        hub = InferenceClient(model=server.url).feature_extraction(TEXTS[2])
        assert hub.shape == (1, expected.shape[1]) and np.abs(hub[0] - expected[2]).max() < 1e-6

        b64 = client.post(
            "/v1/embeddings", json={"input": TEXTS[1], "encoding_format": "base64"}
        ).json()
        decoded = np.frombuffer(base64.b64decode(b64["data"][0]["embedding"]), dtype="<f4")
        assert np.abs(decoded - expected[1]).max() < 1e-6


def test_batches_form_and_padding_is_masked(embed_dir, tmp_path):
    """Inputs of different lengths sent at once share one padded backend call (FP32: batched even
    under batch invariance) and each still gets the vector it gets alone."""
    # lengths within the padding budget of one call (Served._groups), all different
    texts = [" ".join(["word"] * n) + f" {n}" for n in (10, 11, 12, 13, 14, 15)]
    alone = edge_runtime.load(embed_dir, artifact="onnx-fp32")
    expected = _unit(np.concatenate([alone.embed([t]) for t in texts]))
    with serving(
        embed_dir, "--artifact", "onnx-fp32", "--max-batch-wait-ms", "300", log_dir=tmp_path
    ) as server:
        responses = _post_all(server, "/embed", [{"inputs": t} for t in texts])
        assert [r.status_code for r in responses] == [200] * len(texts)
        got = np.concatenate([np.asarray(r.json(), dtype=np.float32) for r in responses])
        assert np.abs(got - expected).max() < 1e-5
        samples = server.metrics()
        assert samples["te_batch_next_size_count"][()] < len(texts), (
            "every request ran alone: nothing was batched"
        )
        assert samples["te_batch_next_size_sum"][()] == len(texts)
        assert samples["edge_backend_calls_total"][()] < len(texts)
        assert samples["edge_padding_tokens_total"][()] > 0, "no input was padded: masking untested"


def test_batch_dependent_artifact_stays_batch_invariant(embed_dir, tmp_path):
    """Dynamic INT8 vectors depend on their batch; by default the server runs each input alone, so
    a vector equals Model.embed's whoever else was queued: on 2 single-threaded lanes (the
    default with --threads 2), one after another (--no-lanes), or with --workers 2 (two inputs at
    a time, each alone). --no-batch-invariant really batches."""
    texts = TEXTS * 2
    model = edge_runtime.load(embed_dir, artifact="onnx-int8")
    assert model.batch_dependent
    expected = _unit(np.concatenate([model.embed([t]) for t in texts]))
    workers = ("--workers", "2", "--threads", "1")  # inputs alone, two at a time: still exact
    cases = ((("--threads", "2"), True, 2), (("--threads", "2", "--no-lanes"), True, 1), (workers, True, 1),
             (("--no-batch-invariant",), False, 1))
    for flags, exact, lanes in cases:
        with serving(
            embed_dir,
            "--artifact",
            "onnx-int8",
            "--max-batch-wait-ms",
            "300",
            *flags,
            log_dir=tmp_path,
        ) as server:
            responses = _post_all(server, "/embed", [{"inputs": t} for t in texts])
            got = np.concatenate([np.asarray(r.json(), dtype=np.float32) for r in responses])
            assert server.metrics()["te_batch_next_size_count"][()] < len(texts)
            with server.client() as client:
                assert client.get("/info").json()["artifact"]["lanes"] == lanes, flags
            drift = np.abs(got - expected).max()
            assert (drift < 1e-6) if exact else (drift > 1e-6), (flags, drift)


def test_batch_groups_limit_padding():
    """Rows are sorted by length and cut where padding would pass Served.PADDING_WASTE or the
    token budget; every row is in exactly one group."""
    from edge_runtime._text import Encoded
    from edge_runtime.serve._engine import Served

    lengths = [12, 50, 11, 13, 40, 12, 14, 41]
    rows = [Encoded([1] * n, [0] * n, [], []) for n in lengths]
    groups = Served._groups(rows, max_tokens=16384)
    assert sorted(i for g in groups for i in g) == list(range(len(rows)))
    for group in groups:
        longest, real = max(lengths[i] for i in group), sum(lengths[i] for i in group)
        assert len(group) * longest <= (1 + Served.PADDING_WASTE) * real
    assert [sorted(lengths[i] for i in g) for g in groups] == [[11, 12, 12, 13, 14], [40, 41, 50]]
    assert all(len(g) * 14 <= 28 for g in Served._groups(rows[:1] + rows[2:4], max_tokens=28))


def test_errors_are_tei_shaped(embed_dir, tmp_path):
    # On the pure-Python stack (h11, asyncio): every other server test runs httptools/uvloop
    # where the serve extra installed them, and errors must read the same on both.
    with (
        serving(
            embed_dir, "--max-client-batch-size", "4", "--payload-limit", "20000",
            "--http", "h11", "--loop", "asyncio", log_dir=tmp_path
        ) as server,
        server.client() as client,
    ):

        def error(path, status, kind, **kwargs):
            response = client.post(path, **kwargs)
            assert response.status_code == status, response.text
            body = response.json()
            assert set(body) == {"error", "error_type"} and body["error_type"] == kind
            return body["error"]

        assert "batch size 5 > maximum allowed batch size 4" in error(
            "/embed", 422, "Validation", json={"inputs": ["a"] * 5}
        )
        assert "cannot be empty" in error("/embed", 400, "Empty", json={"inputs": []})
        assert "cannot be empty" in error("/embed", 400, "Empty", json={"inputs": ""})
        assert "not valid JSON" in error("/embed", 422, "Validation", content=b"{nope")
        deep = b'{"inputs":' + b"[" * 9_000 + b"]" * 9_000 + b"}"  # a client's fault, not the backend's
        assert "not valid JSON" in error("/embed", 422, "Validation", content=deep)
        assert "must be a string" in error("/embed", 422, "Validation", json={"inputs": ["ok", 3]})
        assert "missing field `inputs`" in error("/embed", 422, "Validation", json={"input": "a"})
        surrogate = b'{"inputs": ["a\\ud800b"]}'  # JSON allows it; it is not a Unicode text
        assert "inputs[0] holds a character" in error("/embed", 422, "Validation", content=surrogate)
        assert "/embed" in error("/predict", 424, "Backend", json={"inputs": "a"})
        assert "/embed" in error("/predict", 424, "Backend", json={"inputs": []})  # the route first
        assert "`dimensions` must be" in error(
            "/embed", 422, "Validation", json={"inputs": "a", "dimensions": 10**6}
        )
        assert "not supported" in error(
            "/embed", 422, "Validation", json={"inputs": "a", "truncation_direction": "left"}
        )
        assert "`normalize` must be" in error(
            "/embed", 422, "Validation", json={"inputs": "a", "normalize": "yes"}
        )
        bad_format = client.post("/v1/embeddings", json={"input": "a", "encoding_format": "int8"})
        assert bad_format.status_code == 422 and "encoding_format" in bad_format.json()["message"]
        assert "limit" in error("/embed", 413, "Validation", json={"inputs": "a " * 20000})
        long = "word " * 400
        message = error(
            "/embed", 422, "Validation", json={"inputs": ["fine", long], "truncate": False}
        )
        encoder = edge_runtime.load(embed_dir, artifact="onnx-fp32")._text()
        assert f"inputs[1] has {encoder.token_count(long)[0]} tokens" in message
        assert f"at most {encoder.max_length}" in message and '"truncate": true' in message
        assert client.post("/embed", json={"inputs": long}).status_code == 200  # auto-truncate
        assert client.post("/embed", json={"inputs": long, "truncate": True}).status_code == 200
        openai = client.post("/v1/embeddings", json={"input": []})
        assert (
            openai.status_code == 400
            and openai.json()["type"] == "Empty"
            and openai.json()["code"] == 400
            and "`input` cannot be empty" in openai.json()["message"]  # OpenAI's field name
        )
        ids = client.post("/v1/embeddings", json={"input": [[1, 2, 3]]})  # OpenAI allows token ids
        assert ids.status_code == 422 and "token ids are not supported" in ids.json()["message"]

        families = server.metrics()
        failures = {dict(k)["err"]: v for k, v in families["te_request_failure_total"].items()}
        assert (
            failures["batch_size"] == 1
            and failures["model_type"] == 2
            and failures["validation"] >= 13
            and failures.get("inference", 0) == 0  # shown at 0 from the start
        )
        count = sum(families["te_request_count_total"].values())
        success = sum(families["te_request_success_total"].values())
        assert count == success + sum(failures.values())


def test_overload_answers_429_and_metrics_parse(embed_dir, tmp_path):
    """Two permits: a request holding both (its batch waits for company) makes the next one 429."""
    with serving(
        embed_dir, "--max-concurrent-requests", "2", "--max-batch-wait-ms", "1500", log_dir=tmp_path
    ) as server:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(
                lambda: httpx.post(server.url + "/embed", json={"inputs": ["a", "b"]}, timeout=60)
            )
            deadline = time.monotonic() + 30
            while server.metrics()["te_queue_size"][()] < 2:
                assert time.monotonic() < deadline and not first.done()
                time.sleep(0.02)
            refused = httpx.post(server.url + "/embed", json={"inputs": "c"}, timeout=60)
            assert refused.status_code == 429
            assert refused.json() == {"error": "Model is overloaded", "error_type": "Overloaded"}
            assert first.result().status_code == 200
        # more inputs than there are permits could never be served: 422, not a 429 to retry forever
        never = httpx.post(server.url + "/embed", json={"inputs": ["a", "b", "c"]}, timeout=60)
        assert never.status_code == 422 and "maximum concurrent requests 2" in never.json()["error"]
        families = server.metrics()
        assert families["te_request_failure_total"][(("err", "overloaded"),)] == 1
        assert families["te_queue_size"][()] == 0
        for name in (
            "te_request_duration",
            "te_request_queue_duration",
            "te_request_inference_duration",
            "te_request_tokenization_duration",
            "te_batch_next_tokens",
            "te_request_input_length",
            "te_batch_next_size",
            "edge_embedding_norm",
        ):
            assert families[name + "_count"][()] >= 1, name
        assert families["process_resident_memory_bytes"][()] > 10e6
        assert families["edge_golden_ok"][()] == 1
        assert families["edge_golden_last_run_timestamp_seconds"][()] > 1.7e9
        # the first re-run is queued at start, before the first batch: its cosine is there already
        assert families["edge_golden_runs_total"][(("result", "pass"),)] == 1
        assert families["edge_golden_cosine_min"][()] > 0.99
        # the golden re-run on demand, on the serving backend
        check = httpx.post(server.url + "/admin/check", timeout=60).json()
        assert check["ok"] and check["cosine_min"] > 0.99
        after = server.metrics()
        assert after["edge_golden_runs_total"][(("result", "pass"),)] == 2
        assert after["edge_golden_cosine_min"][()] == pytest.approx(check["cosine_min"])


def test_predict_route(classify_dir, tmp_path):
    with (
        serving(classify_dir, "--golden-interval", "0.5", log_dir=tmp_path) as server,
        server.client() as client,
    ):
        info = client.get("/info").json()
        model = edge_runtime.load(classify_dir, artifact=info["artifact"]["artifact"])
        labels = model.manifest["postprocess"]["labels"]
        assert info["model_type"]["classifier"]["id2label"] == {
            str(i): n for i, n in enumerate(labels)
        }
        single = client.post("/predict", json={"inputs": TEXTS[0]}).json()
        assert sorted(p["label"] for p in single) == sorted(labels)
        assert [p["score"] for p in single] == sorted((p["score"] for p in single), reverse=True)
        assert abs(sum(p["score"] for p in single) - 1) < 1e-6
        top = model.classify([TEXTS[0]])[0]
        assert single[0]["label"] == top["label"] and abs(single[0]["score"] - top["score"]) < 1e-6
        batch = client.post("/predict", json={"inputs": TEXTS}).json()
        assert len(batch) == len(TEXTS) and [b[0]["label"] for b in batch] == [
            r["label"] for r in model.classify(TEXTS)
        ]
        raw = client.post("/predict", json={"inputs": TEXTS[0], "raw_scores": True}).json()
        assert abs(sum(p["score"] for p in raw) - 1) > 1e-3  # logits, not probabilities
        wrong = client.post("/embed", json={"inputs": "a"})
        assert wrong.status_code == 424 and "/predict" in wrong.json()["error"]
        # the watchdog re-runs the golden samples on its own, every 0.5 s here
        deadline = time.monotonic() + 60
        while server.metrics().get("edge_golden_runs_total", {}).get((("result", "pass"),), 0) < 2:
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.2)
        assert server.metrics()["edge_golden_ok"][()] == 1
        assert client.get("/health").status_code == 200


def _tamper(directory: Path) -> None:
    data = directory / "onnx-int8.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))


def test_reload_swaps_verified_models_and_keeps_the_old_one_on_failure(
    embed_dir, classify_dir, tmp_path
):
    v1 = shutil.copytree(embed_dir, tmp_path / "v1")
    v2 = shutil.copytree(classify_dir, tmp_path / "v2")
    bad = shutil.copytree(embed_dir, tmp_path / "bad")
    _tamper(bad)
    current = tmp_path / "current"
    current.symlink_to(v1)
    with (
        serving(current, "--artifact", "onnx-int8", log_dir=tmp_path) as server,
        server.client() as client,
    ):
        before = client.post("/embed", json={"inputs": TEXTS}).json()

        failed = client.post("/admin/reload", json={"path": str(bad)})
        assert failed.status_code == 422 and "sha256" in failed.json()["error"]
        assert "still serving onnx-int8" in failed.json()["error"]
        assert (
            client.post("/embed", json={"inputs": TEXTS}).json() == before
        )  # the old model serves
        assert client.get("/health").status_code == 200
        families = server.metrics()
        assert families["edge_reload_total"][(("result", "failure"),)] == 1
        assert "reload of" in server.log.read_text() and "failed" in server.log.read_text()

        same = client.post("/admin/reload")  # the same directory, re-read and verified
        assert same.status_code == 200 and same.json()["generation"] == 1
        assert client.post("/embed", json={"inputs": TEXTS}).json() == before

        # SIGHUP after the symlink moves to a classifier: it verifies, but would answer clients
        # differently (another route, no vectors): refused, the embedding model keeps serving.
        current.unlink()
        current.symlink_to(v2)
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while server.metrics()["edge_reload_total"].get((("result", "failure"),)) != 2:
            assert time.monotonic() < deadline, server.log.read_text()
            time.sleep(0.1)
        refused = server.log.read_text()
        assert "would answer clients differently" in refused
        assert "task 'feature-extraction' -> 'text-classification'" in refused and "allow_change" in refused
        assert client.get("/info").json()["task"] == "feature-extraction"
        assert client.post("/embed", json={"inputs": TEXTS}).json() == before

        # Asked for explicitly, the change is made. A POST / whose body is still on its way then
        # follows the model served once the body is in (found by a review, session 49: it took
        # the route of the model serving when its headers came, and got a 424).
        body = json.dumps({"inputs": "a"}).encode()
        pending = socket.create_connection(("127.0.0.1", server.port))
        pending.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.3)  # the request is in the app, waiting for its body
        changed = client.post("/admin/reload", json={"allow_change": True})
        assert changed.status_code == 200, changed.text
        pending.sendall(body)
        pending.settimeout(60)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith((b"]", b"}")):
            chunk = pending.recv(65536)
            assert chunk, answer
            answer += chunk
        pending.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
        assert b'"label"' in answer, answer[:300]
        assert client.get("/info").json()["task"] == "text-classification"
        assert client.post("/predict", json={"inputs": "a"}).status_code == 200
        assert client.post("/embed", json={"inputs": "a"}).status_code == 424
        assert client.post("/admin/reload", json={"allow_change": "yes"}).status_code == 422
        families = server.metrics()
        assert families["edge_reload_total"][(("result", "success"),)] == 2
        (labels,) = [dict(k) for k in families["edge_model_info"]]
        assert labels["generation"] == "2"

def test_a_signed_directory_is_verified_once_for_the_model_and_its_lanes(embed_dir, tmp_path, monkeypatch):
    """The lanes' single-threaded session is the served model's sibling: one signature check for
    both (it was verified twice, at every start and reload: a review, session 52), and a file
    written between the two opens is refused against that one check."""
    from converters.packaging import signing
    from edge_runtime import _signing
    from edge_runtime.serve import ServeConfig
    from edge_runtime.serve._reload import load_served

    private, public = signing.generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
    signed = shutil.copytree(embed_dir, tmp_path / "signed")
    signing.sign_directory(signed, signing.load_signing_key(private))
    checks = []
    real = _signing.verify_directory
    monkeypatch.setattr(_signing, "verify_directory", lambda *a, **k: checks.append(a[0]) or real(*a, **k))
    config = ServeConfig(signed, trusted_keys=(str(public),), threads=2, artifact="onnx-int8")
    served = load_served(config, signed, 0)
    assert served.lane_model is not None and served.lane_model.threads == 1
    assert len(checks) == 1
    np.testing.assert_array_equal(served.lane_model.embed(TEXTS), served.model.embed(TEXTS))
    # The sibling holds the files to the one signature check: a model file written since is refused.
    model_file = signed / served.model.artifact["files"][0]["path"]
    model_file.write_bytes(model_file.read_bytes())  # same bytes, a new write
    with pytest.raises(edge_runtime.SignatureError, match="was replaced or written since its signature"):
        served.model.sibling(threads=1)


def test_trusted_keys_hold_at_start_and_at_every_reload(embed_dir, tmp_path):
    from converters.packaging import signing

    private, public = signing.generate_key_pair(tmp_path / "key.pem", tmp_path / "key.pub")
    signed = shutil.copytree(embed_dir, tmp_path / "signed")
    signing.sign_directory(signed, signing.load_signing_key(private))
    unsigned = shutil.copytree(embed_dir, tmp_path / "unsigned")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime.serve",
            str(unsigned),
            "--trusted-key",
            str(public),
            "--port",
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert refused.returncode == 1 and "model.sig" in refused.stderr, refused.stderr
    with (
        serving(signed, "--trusted-key", str(public), log_dir=tmp_path) as server,
        server.client() as client,
    ):
        failed = client.post("/admin/reload", json={"path": str(unsigned)})
        assert failed.status_code == 422 and failed.json()["error_class"] == "SignatureError"
        assert client.get("/info").json()["artifact"]["path"] == str(signed)
        assert client.post("/admin/reload").status_code == 200  # the signed one, re-verified


def test_sigterm_drains_in_flight_requests_then_exits_0(embed_dir, tmp_path):
    with serving(embed_dir, "--max-batch-wait-ms", "1500", log_dir=tmp_path) as server:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(
                    lambda t=t: httpx.post(server.url + "/embed", json={"inputs": t}, timeout=60)
                )
                for t in TEXTS[:4]
            ]
            deadline = time.monotonic() + 30
            while server.metrics()["te_queue_size"][()] < 4:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            server.proc.send_signal(signal.SIGTERM)  # four requests wait in the queue
            assert [f.result().status_code for f in futures] == [200] * 4
        assert server.proc.wait(30) == 0, server.log.read_text()
        assert "Traceback" not in server.log.read_text()
        with pytest.raises(httpx.TransportError):
            httpx.get(server.url + "/health", timeout=5)


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_sigterm_answers_requests_waiting_to_be_accepted(embed_dir, tmp_path, http):
    """Connections the kernel accepted before the stop, their requests sent, were reset with the
    listening socket (uvicorn's shutdown; a review, session 52): 30 of 30 here before the fix.
    The server is stopped (SIGSTOP) while they connect, so every one waits in the accept queue
    when SIGTERM comes; they are taken up and answered, and the exit status 0 stays true."""
    with serving(embed_dir, "--http", http, log_dir=tmp_path) as server:
        server.proc.send_signal(signal.SIGSTOP)
        sockets = []
        try:
            for i in range(30):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=60)
                body = json.dumps({"inputs": f"request {i} sent before the stop"}).encode()
                sock.sendall(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                sockets.append(sock)
            server.proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
        finally:
            server.proc.send_signal(signal.SIGCONT)
        answers = []
        for sock in sockets:
            with sock:
                try:
                    answers.append(sock.recv(64).split(b"\r\n")[0].decode() or "closed unanswered")
                except ConnectionResetError:
                    answers.append("reset")
        assert answers == ["HTTP/1.1 200 OK"] * 30, answers
        assert server.proc.wait(30) == 0, server.log.read_text()
        assert "at the stop: " in server.log.read_text()


def test_failing_golden_rerun_turns_health_503(embed_dir):
    """A backend that starts computing wrong numbers after load is caught by the watchdog."""
    from starlette.testclient import TestClient

    from edge_runtime.serve import ServeConfig
    from edge_runtime.serve._app import create_app
    from edge_runtime.serve._service import Service

    service = Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=0))
    with TestClient(create_app(service)) as client:
        assert client.get("/health").status_code == 200
        # TestClient's peer is "testclient", not a loopback address: the admin routes refuse it
        for route in ("/admin/reload", "/admin/check"):
            refused = client.post(route)
            assert refused.status_code == 403 and "loopback" in refused.json()["error"]
        session = service.slot.current.model._session
        real = session.run
        session.run = lambda feeds: {k: v * 0 + 0.5 for k, v in real(feeds).items()}
        result = service.watchdog.check(timeout=60)
        assert not result["ok"] and result["cosine_min"] < 0.99
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["error_type"] == "Unhealthy"
        assert "golden" in health.json()["error"]
        assert "edge_golden_ok 0" in client.get("/metrics").text
        session.run = real
        assert service.watchdog.check(timeout=60)["ok"]
        assert client.get("/health").status_code == 200


def test_the_watchdog_checks_the_model_loaded_whatever_happens_to_its_path_later(embed_dir, tmp_path):
    """Served through a symlink (the documented way to swap directories), then the link points
    elsewhere and a reload fails: the old model keeps serving, and its checks still compare it
    with the golden outputs load() verified. A check that cannot run says so in JSON (no NaN)."""
    import json

    from edge_runtime.serve import ServeConfig
    from edge_runtime.serve._service import Service

    link = tmp_path / "current"
    link.symlink_to(embed_dir, target_is_directory=True)
    service = Service(ServeConfig(link, artifact="onnx-fp32", golden_interval_s=0))
    service.start()  # the worker thread the checks run on
    try:
        before = service.slot.current.model.embed(["a sentence"])
        empty = tmp_path / "half-copied"
        empty.mkdir()
        link.unlink()
        link.symlink_to(empty, target_is_directory=True)
        assert not service.reloader.reload()["ok"]
        assert service.watchdog.check(timeout=60)["ok"]
        np.testing.assert_array_equal(service.slot.current.model.embed(["a sentence"]), before)

        session = service.slot.current.model._session
        session.run = lambda feeds: (_ for _ in ()).throw(RuntimeError("backend gone"))
        result = service.watchdog.check(timeout=60)
        assert not result["ok"] and result["cosine_min"] is None and "backend gone" in result["problems"][0]
        json.dumps(result, allow_nan=False)  # what /admin/check answers with its 503
    finally:
        service.stop()


def test_drift_signal():
    from edge_runtime.serve._health import DriftMonitor
    from edge_runtime.serve._metrics import ServeMetrics

    rng = np.random.default_rng(0)
    metrics = ServeMetrics(128)
    drift = DriftMonitor(metrics, {})
    drift.observe("token_length", rng.integers(5, 30, DriftMonitor.REFERENCE))
    drift.observe("token_length", rng.integers(5, 30, 500))
    drift.update()
    same = metrics.drift.value(signal="token_length", reference="warmup")
    drift.observe("token_length", rng.integers(60, 120, DriftMonitor.WINDOW))
    drift.update()
    shifted = metrics.drift.value(signal="token_length", reference="warmup")
    assert same < 0.15 and shifted > 0.9
    # a manifest that records quantiles at conversion is the reference instead of the warm-up
    drift.reset({"input_stats": {"token_length": {"quantiles": {"0.1": 6, "0.5": 17, "0.9": 27}}}})
    drift.observe("token_length", rng.integers(5, 30, 200))
    drift.update()
    assert metrics.drift.value(signal="token_length", reference="manifest") < 0.15
    assert metrics.drift.value(signal="token_length", reference="warmup") is None


def test_cli_errors_name_flags(embed_dir):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_runtime.serve",
            str(embed_dir),
            "--max-batch-tokens",
            "16",
            "--port",
            str(_free_port()),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    # a bad setting (exit 2), read from the manifest before anything loads
    assert done.returncode == 2 and "--max-batch-tokens (16) is below" in done.stderr, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "edge_runtime.serve", str(embed_dir / "missing")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1 and "edge-serve: error:" in done.stderr


def test_manifest_input_stats_are_the_drift_reference(embed_dir):
    """The converter records the validation texts' token lengths and pre-normalization norms;
    the same texts served by the artifact show no drift against them, other texts do."""
    import edge_runtime
    from converters.inputs.calibration import load_texts, split_texts
    from edge_runtime._text import pool
    from edge_runtime.serve._health import DriftMonitor
    from edge_runtime.serve._metrics import ServeMetrics

    manifest = json.loads((embed_dir / "manifest.json").read_text())
    stats = manifest["input_stats"]
    assert stats["texts"] == "validation" and len(stats["token_length"]["quantiles"]) == 19
    for name in ("token_length", "embedding_norm"):
        values = list(stats[name]["quantiles"].values())
        assert values == sorted(values) and values[0] > 0, (name, values)

    model = edge_runtime.load(embed_dir, artifact="onnx-int8")
    texts = list(split_texts(load_texts()).validation.texts)
    encoder = model._text()
    post = manifest["postprocess"]

    def observe(drift, batch):
        feeds = encoder.encode(batch)
        hidden = model.run(feeds)[post["output"]]
        drift.observe("token_length", feeds["attention_mask"].sum(axis=1))
        drift.observe("embedding_norm", np.linalg.norm(pool(hidden, feeds["attention_mask"], post["pooling"], False), axis=-1))

    metrics = ServeMetrics(128)
    drift = DriftMonitor(metrics, manifest)
    observe(drift, texts)
    drift.update()
    for name in ("token_length", "embedding_norm"):
        assert metrics.drift.value(signal=name, reference="manifest") < 0.1, name
    shifted = DriftMonitor(metrics, manifest)
    observe(shifted, [" ".join(texts[i:i + 4]) for i in range(0, len(texts), 1)])  # 4x longer inputs
    shifted.update()
    assert metrics.drift.value(signal="token_length", reference="manifest") > 0.5


def test_workers_run_batches_side_by_side(tmp_path):
    """--workers N: N threads take batches off one queue and call the backend at the same time;
    every job still gets its own rows' outputs, and close() drains and stops them all."""
    import threading

    from edge_runtime._text import Encoded
    from edge_runtime.serve._batching import Batcher
    from edge_runtime.serve._config import ServeConfig
    from edge_runtime.serve._metrics import ServeMetrics

    class SlowServed:
        running, peak, threads = 0, 0, set()
        lock = threading.Lock()

        def execute(self, rows, batch_invariant, max_tokens):
            with self.lock:
                SlowServed.running += 1
                SlowServed.peak = max(SlowServed.peak, SlowServed.running)
                SlowServed.threads.add(threading.current_thread().name)
            time.sleep(0.05)
            with self.lock:
                SlowServed.running -= 1
            outputs = np.array([[float(len(r.ids))] for r in rows], dtype=np.float32)
            return outputs, 1, 0

    served = SlowServed()
    for workers, peak in ((1, 1), (2, 2)):
        SlowServed.peak, SlowServed.threads = 0, set()
        config = ServeConfig(path=tmp_path, workers=workers, max_batch_requests=1, max_batch_wait_ms=0)
        batcher = Batcher(config, ServeMetrics(128))
        batcher.start()
        rows = [Encoded(list(range(n)), [0] * n, ["t"] * n, [False] * n) for n in range(1, 9)]
        futures = [batcher.submit(served, [row]) for row in rows]
        assert [float(f.result(10).outputs[0, 0]) for f in futures] == [float(n) for n in range(1, 9)]
        assert SlowServed.peak == peak and len(SlowServed.threads) == workers
        assert batcher.alive and batcher.close(10) and not batcher.alive
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        ServeConfig(path=tmp_path, workers=0)


def test_server_stack_resolves_auto_and_names_a_missing_package(tmp_path, monkeypatch):
    import importlib.util

    from edge_runtime.serve._config import ServeConfig, server_stack

    installed = {"httptools", "uvloop"}
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in installed else
                        (None if name in ("httptools", "uvloop") else real(name, *a)))
    assert server_stack(ServeConfig(path=tmp_path)) == ("httptools", "uvloop")
    assert server_stack(ServeConfig(path=tmp_path, http="h11", loop="asyncio")) == ("h11", "asyncio")
    installed.clear()  # e.g. a 32-bit ARM board without wheels: the pure-Python stack
    assert server_stack(ServeConfig(path=tmp_path)) == ("h11", "asyncio")
    with pytest.raises(edge_runtime.EdgeRuntimeError, match="pip install httptools"):
        server_stack(ServeConfig(path=tmp_path, http="httptools"))
    with pytest.raises(ValueError, match="http must be one of auto, h11, httptools"):
        ServeConfig(path=tmp_path, http="fast")


def test_a_batch_waits_for_more_only_after_an_idle_spell(tmp_path):
    """max_batch_wait_ms tops up a batch that starts while the worker was idle; a batch of what
    queued while the previous one ran goes at once (waiting then only idles the worker)."""
    import threading

    from edge_runtime._text import Encoded
    from edge_runtime.serve._batching import Batcher
    from edge_runtime.serve._config import ServeConfig
    from edge_runtime.serve._metrics import ServeMetrics

    calls = []
    first_running = threading.Event()

    class Served:
        def execute(self, rows, batch_invariant, max_tokens):
            calls.append((time.perf_counter(), len(rows)))
            first_running.set()
            time.sleep(0.2)
            return np.zeros((len(rows), 1), np.float32), 1, 0

    served = Served()
    # A wait far longer than the test's own steps: whether a batch waited is then told apart by
    # whole seconds, whatever else slows the machine down (no tight time bounds).
    batcher = Batcher(ServeConfig(path=tmp_path, max_batch_wait_ms=3000), ServeMetrics(128))
    batcher.start()
    row = Encoded([1, 2], [0, 0], ["a", "b"], [False, False])
    started = time.perf_counter()
    futures = [batcher.submit(served, [row])]
    time.sleep(0.05)
    futures.append(batcher.submit(served, [row]))  # joins the first batch: it is still topping up
    assert first_running.wait(5)
    futures += [batcher.submit(served, [row]) for _ in range(3)]  # queue while the first batch runs
    for future in futures:
        future.result(10)
    assert batcher.close(10)
    (t1, n1), (t2, n2) = calls
    assert (n1, n2) == (2, 3)
    assert t1 - started >= 2.9, "the first batch (after an idle spell) waited for more"
    assert t2 - t1 < 0.2 + 2.5, "the second (a backlog) went at once, without another 3 s wait"


def test_a_missing_serve_extra_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    # `pip install .` (or the device wheel's [onnx]) has no uvicorn: say which extra to install,
    # not a ModuleNotFoundError traceback once the model has loaded.
    from edge_runtime import cli_serve

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    assert cli_serve.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "uvicorn" in err and "install the serve extra: pip install '.[serve]' in a checkout of edge-runtime, or the device wheel with [serve]" in err


def test_a_cancelled_request_neither_runs_nor_stops_the_worker(tmp_path):
    """A request cancelled while queued (client gone, shutdown timed out) gives its permits back
    unrun; one cancelled while running is dropped; the worker lives on for the next request."""
    import threading

    from edge_runtime._text import Encoded
    from edge_runtime.serve._batching import Batcher
    from edge_runtime.serve._config import ServeConfig
    from edge_runtime.serve._metrics import ServeMetrics

    ran, running, release = [], threading.Event(), threading.Event()

    class Served:
        def execute(self, rows, batch_invariant, max_tokens):
            ran.append(len(rows))
            running.set()
            release.wait(10)
            return np.zeros((len(rows), 1), np.float32), 1, 0

    served = Served()
    batcher = Batcher(ServeConfig(path=tmp_path, max_batch_wait_ms=0, max_batch_requests=1), ServeMetrics(128))
    batcher.start()
    row = Encoded([1, 2], [0, 0], ["a", "b"], [False, False])
    first = batcher.submit(served, [row])
    assert running.wait(10)
    queued = batcher.submit(served, [row])
    assert first.cancel() and queued.cancel()  # asyncio's wrap_future cancels them like this
    release.set()
    after = batcher.submit(served, [row])
    assert after.result(10).outputs.shape == (1, 1)
    assert ran == [1, 1], "the request cancelled while queued never ran"
    assert batcher.alive and batcher.queued == 0
    assert batcher.close(10)


@pytest.mark.parametrize(
    "setting", [{"max_batch_wait_ms": float("inf")}, {"max_batch_wait_ms": float("nan")},
                {"max_batch_wait_ms": 1e13}, {"golden_interval_s": float("inf")},
                {"graceful_timeout_s": -5}, {"graceful_timeout_s": float("nan")}],
)
def test_waits_that_would_park_the_worker_are_refused(tmp_path, setting):
    from edge_runtime.serve._config import ServeConfig

    with pytest.raises(ValueError, match=f"{next(iter(setting))} must be a number from 0 to"):
        ServeConfig(path=tmp_path, **setting)


def test_a_taken_port_or_unknown_host_is_said_before_the_model_loads(tmp_path, capsys):
    from edge_runtime import cli_serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # the directory does not exist: had the model loaded first, that would be the error
        assert cli_serve.main([str(tmp_path / "missing"), "--port", str(port)]) == 1
        err = capsys.readouterr().err
        assert f"edge-serve: error: cannot listen on 127.0.0.1:{port}" in err and "--port" in err
    assert cli_serve.main([str(tmp_path / "missing"), "--host", "no-such-host.invalid", "--port", "0"]) == 1
    assert "cannot listen on no-such-host.invalid:0" in capsys.readouterr().err
    assert cli_serve.main([str(tmp_path), "--max-batch-wait-ms", "inf"]) == 2
    assert "--max-batch-wait-ms must be a number from 0 to" in capsys.readouterr().err


def test_json_floats_keep_every_float32_bit():
    from edge_runtime.serve._app import _floats

    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.standard_normal((4, 384)), rng.uniform(-1e-30, 1e-30, (1, 384)),
                           rng.uniform(-3e38, 3e38, (1, 384))]).astype(np.float32)
    text = json.dumps(_floats(rows))
    assert np.array_equal(np.asarray(json.loads(text), np.float32), rows)
    assert len(text) < 0.7 * len(json.dumps(rows.tolist()))

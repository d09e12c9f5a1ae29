"""Review s39: edge-serve's admin routes refuse requests a web page can make (a cross-site request
forgery: a page in a browser on the device POSTed text/plain to /admin/reload and swapped the
served model), and the manifest reader bounds the integers that crashed load() and embed() with
TypeError/OverflowError (runtime.threads.*, tokenizer.pad_token_id).

The served model is test_serve.py's tiny BERT (embed_dir); the manifest tests use the hand-made
artifact of tiny_artifact.py.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import tiny_artifact
from starlette.testclient import TestClient
from test_serve import embed_dir  # noqa: F401  (the module's fixture)

import edge_runtime
from edge_runtime import ManifestError, read_manifest
from edge_runtime._manifest import MAX_THREADS, MAX_TOKEN_ID
from edge_runtime.serve import ServeConfig
from edge_runtime.serve._app import create_app
from edge_runtime.serve._service import Service

# -- edge-serve's admin routes -------------------------------------------------------------------

# What a page's fetch(url, {method: "POST", mode: "no-cors", body}) sends: a "simple" request,
# which the browser sends without a CORS preflight.
_FROM_A_PAGE = {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}


@pytest.fixture(scope="module")
def service(embed_dir):  # noqa: F811
    return Service(ServeConfig(embed_dir, artifact="onnx-fp32", golden_interval_s=0))


@pytest.fixture(scope="module")
def local(service):
    """A client of the started service (the watchdog answers /admin/check) whose peer is
    loopback, as curl on the device is."""
    with TestClient(create_app(service), client=("127.0.0.1", 50000)) as client:
        yield client


def _reloads(service) -> tuple[float, float]:
    metrics = service.metrics.reloads
    return metrics.value(result="success"), metrics.value(result="failure")


def _refused(answer, status: int, *words: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == "Validation", body
    for word in words:
        assert word in body["error"], body["error"]
    return body["error"]


def test_a_text_plain_reload_is_refused_and_nothing_is_loaded(service, local):
    """The reproduction: a JSON text sent as text/plain (no Origin: as a page's request would be
    were its Origin stripped) reloaded the model (200); now 415, like TEI, and no reload runs."""
    before, served = _reloads(service), service.slot.current
    body = json.dumps({"allow_change": True})
    for content_type in ("text/plain", "text/plain;charset=UTF-8",
                         "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        answer = local.post("/admin/reload", content=body, headers={"Content-Type": content_type})
        _refused(answer, 415, "Content-Type: application/json", content_type)
    answer = local.post("/admin/reload", content=body)  # a body with no Content-Type at all
    _refused(answer, 415, "no Content-Type")
    assert _reloads(service) == before and service.slot.current is served


@pytest.mark.parametrize("route", ["/admin/reload", "/admin/check"])
@pytest.mark.parametrize("headers", [
    _FROM_A_PAGE,
    {"Origin": "http://evil.example"},
    {"Origin": "null"},  # a sandboxed iframe, a file:// page
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port or subdomain of the same site
], ids=lambda h: ",".join(f"{k}={v}" for k, v in h.items()))
def test_a_request_from_a_web_page_is_refused(service, local, route, headers):
    """JSON and all: a page may send application/json with CORS (a preflight the server does not
    answer), but refusal must not hang on that; what a browser marks as a page's is refused."""
    before, served = _reloads(service), service.slot.current
    answer = local.post(route, json={"allow_change": True}, headers=headers)
    error = _refused(answer, 403, "web browsers", "script or curl")
    said = "the Origin header" if "Origin" in headers else "its Sec-Fetch-Site header"
    assert said in error
    assert _reloads(service) == before and service.slot.current is served


def test_a_script_still_reloads_and_checks(service, local):
    """curl and scripts send neither Origin nor Sec-Fetch-Site; a browser's own navigation
    (Sec-Fetch-Site: none) is not a page's request either."""
    successes = _reloads(service)[0]
    answer = local.post("/admin/reload", json={"allow_change": False})
    assert answer.status_code == 200 and answer.json()["ok"], answer.text
    answer = local.post("/admin/reload", content=b'{}',
                        headers={"Content-Type": "application/json; charset=utf-8"})
    assert answer.status_code == 200, answer.text
    assert local.post("/admin/reload").status_code == 200  # no body: no type needed
    assert local.post("/admin/reload", headers={"Sec-Fetch-Site": "none"}).status_code == 200
    assert _reloads(service)[0] == successes + 4
    assert local.post("/admin/check").status_code == 200
    assert local.post("/admin/check", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415


def test_the_loopback_refusal_still_comes_first(service):
    answer = TestClient(create_app(service), client=("10.0.0.1", 50000)).post(
        "/admin/reload", content=b"{}", headers={"Content-Type": "text/plain", **_FROM_A_PAGE})
    _refused(answer, 403, "loopback")


def test_the_inference_routes_still_take_a_body_of_any_content_type(local):
    """Unlike TEI (415), as docs/serve.md says: they change nothing, and `curl -d` sends a form type."""
    answer = local.post("/embed", content=b'{"inputs": "a b c"}',
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 200 and len(answer.json()) == 1, answer.text


# -- manifest integers with no upper bound ----------------------------------------------------------


def _rewrite(root: Path, edit) -> None:
    path = root / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("key", ["inter_op", "intra_op"])
@pytest.mark.parametrize("value", [10**30, MAX_THREADS + 1, -1, 2.0, True])
def test_a_thread_count_out_of_range_is_a_manifest_error(tmp_path, key, value):
    """inter_op 10**30 passed the reader and then load() raised TypeError from onnxruntime's
    SessionOptions."""
    tiny_artifact.build(tmp_path, runtime={"threads": {"intra_op": 0, "inter_op": 1}, "backends": [
        {"name": "onnxruntime", "execution_providers": ["CPUExecutionProvider"]}]})
    _rewrite(tmp_path, lambda m: m["runtime"]["threads"].__setitem__(key, value))
    message = rf"runtime.threads.{key} must be an integer in 0..{MAX_THREADS}, got {value!r}"
    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError, match=rf"threads.{key}"):
        edge_runtime.load(tmp_path, artifact="onnx-fp32", device_cache=False, tune=False)


def test_thread_counts_at_the_bounds_still_load(tmp_path):
    tiny_artifact.build(tmp_path, runtime={"threads": {"intra_op": MAX_THREADS, "inter_op": 2}, "backends": [
        {"name": "onnxruntime", "execution_providers": ["CPUExecutionProvider"]}]})
    model = edge_runtime.load(tmp_path, artifact="onnx-fp32", threads=1, device_cache=False, tune=False)
    assert model.run({"input_ids": tiny_artifact.IDS})["last_hidden_state"].shape == (2, 3, tiny_artifact.WIDTH)


def _with_tokenizer(root: Path, **fields) -> None:
    """The tiny artifact with a tokenizer section (its files exist; the reader does not parse them)."""
    tiny_artifact.build(root)
    (root / "tokenizer.json").write_text("{}")

    def edit(manifest):
        manifest["tokenizer"] = {"files": [tiny_artifact._file(root, "tokenizer.json")],
                                 "max_length": 16, "pad_token_id": 0, **fields}
    _rewrite(root, edit)


@pytest.mark.parametrize("key, value, low", [
    ("pad_token_id", 10**30, 0), ("pad_token_id", MAX_TOKEN_ID + 1, 0), ("pad_token_id", -1, 0),
    ("max_length", 10**30, 1), ("max_length", 0, 1), ("pad_token_id", "0", 0),
])
def test_a_tokenizer_integer_out_of_range_is_a_manifest_error(tmp_path, key, value, low):
    _with_tokenizer(tmp_path, **{key: value})
    with pytest.raises(ManifestError, match=rf"tokenizer.{key} must be an integer in {low}..{MAX_TOKEN_ID}, "
                                            rf"got {value!r}"):
        read_manifest(tmp_path)


def test_a_pad_id_past_the_vocabulary_is_a_manifest_error(tmp_path):
    """input_ids records its table's size (values_below): a pad id at or past it would make every
    padded batch fail in Model.run's input check."""
    _with_tokenizer(tmp_path, pad_token_id=100)
    _rewrite(tmp_path, lambda m: m["inputs"][0].__setitem__("values_below", 100))
    with pytest.raises(ManifestError, match=r"tokenizer.pad_token_id must be in 0..99, an id of the vocabulary "
                                            r"\(input 'input_ids' values_below 100\), got 100"):
        read_manifest(tmp_path)
    _rewrite(tmp_path, lambda m: m["tokenizer"].__setitem__("pad_token_id", 99))
    assert read_manifest(tmp_path)["tokenizer"]["pad_token_id"] == 99
    _rewrite(tmp_path, lambda m: m["tokenizer"].__setitem__("pad_token_id", MAX_TOKEN_ID))
    del_values = lambda m: m["inputs"][0].pop("values_below")  # noqa: E731
    _rewrite(tmp_path, del_values)
    assert read_manifest(tmp_path)["tokenizer"]["pad_token_id"] == MAX_TOKEN_ID


def test_a_huge_pad_id_no_longer_crashes_embed(embed_dir, tmp_path):  # noqa: F811
    """The reproduction: a real artifact whose pad_token_id is 10**30 loaded, and embed() raised
    OverflowError from np.full; now load() refuses it naming the field."""
    root = shutil.copytree(embed_dir, tmp_path / "embed")
    _rewrite(root, lambda m: m["tokenizer"].__setitem__("pad_token_id", 10**30))
    with pytest.raises(ManifestError, match=r"tokenizer.pad_token_id must be an integer in 0\.\."):
        edge_runtime.load(root, artifact="onnx-fp32", device_cache=False, tune=False)

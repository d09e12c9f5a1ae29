"""One artifact, opened and ready to run: `Model` (run, embed, classify, self_check) and
`open_entry`, which checks and opens one manifest entry. Choosing the entry, threads and caches
for a directory is `edge_runtime.load` (edge_runtime/_load.py)."""

from __future__ import annotations

import hashlib
import logging
import operator
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime import _compat, _device, _inputs, _load_args, _memory, _select, backends
from edge_runtime._errors import (
    ArtifactError,
    BackendUnavailableError,
    DeviceMismatchError,
    InputError,
    ManifestError,
)
from edge_runtime._golden import check_golden, compare_outputs, golden_samples
from edge_runtime._manifest import files_to_verify, resolve, verify_files
from edge_runtime._text import Encoded, TextEncoder, sentence_vectors, softmax
from edge_runtime._select import physical_cores
from edge_runtime._signing_files import check_still_signed
from edge_runtime._verified import Verifications, kernel_key, signatures_of
from edge_runtime.backends._cache import cpu_tag
from edge_runtime.backends._tensorrt import full_precision

__all__ = ["Model", "compare_outputs", "golden_samples", "open_artifact", "open_entry", "physical_cores"]

log = logging.getLogger("edge_runtime")

# Backends whose sessions may run from several threads at once (onnxruntime documents
# InferenceSession.run as thread-safe); calls into any other (a TFLite interpreter holds its
# tensors in the interpreter) are serialized by a lock per Model.
_THREAD_SAFE_BACKENDS = ("onnxruntime",)
# embed/classify tokenize this many texts at a time: a text's tokens as Python objects (ids, strings,
# offsets) weigh far more than its vector, and a list tokenized at once grew memory with the list.
TOKENIZE_CHUNK = 256


class Model:
    """One artifact of an artifact directory, ready to run on this device."""

    def __init__(self, root: Path, manifest: dict[str, Any], artifact: dict[str, Any], session, threads: int, load_seconds: float, memory_budget_mb: float | None = None):
        # Resolved once: the tokenizer and golden files read after load() come from the directory
        # loaded, even when a symlink is re-pointed or the working directory changes meanwhile.
        self.root = Path(root).resolve()
        self.manifest = manifest
        self.artifact = artifact
        self.threads = threads
        self.load_seconds = load_seconds
        # Activation memory one backend call may take; a larger batch is split (see run()).
        # None: the memory available when the call starts, minus _memory.headroom_mb.
        self.memory_budget_mb = memory_budget_mb
        self._session = session
        self._encoder: TextEncoder | None = None
        self._encoder_lock = threading.Lock()
        self._tokenizer_text: str | None = None  # the tokenizer file as read at load (keep_tokenizer)
        thread_safe = getattr(session, "backend_name", None) in _THREAD_SAFE_BACKENDS
        self._run_lock: threading.Lock | None = None if thread_safe else threading.Lock()
        self._reopen: Any = None  # open_entry with this load's checks and caches, for sibling()

    # -- description -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.artifact["name"]

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.manifest["inputs"]

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return self.manifest["outputs"]

    @property
    def backend(self) -> str:
        return f"{self._session.backend_name} {self._session.backend_version} ({', '.join(self._session.providers)})"

    @property
    def thread_safe(self) -> bool:
        """Whether run() may be called from several threads at once without a lock between them."""
        return self._run_lock is None

    @property
    def batch_dependent(self) -> bool:
        """Whether a row's outputs may depend on the other rows of its batch.

        True for dynamically quantized artifacts (onnxruntime's DynamicQuantizeLinear takes one
        activation scale per tensor, i.e. per batch: measured up to 0.019 per element on MiniLM
        INT8 between batch 1 and 16, benchmarks/RESULTS.md run R; issue 10), for integer
        artifacts whose scheme the manifest does not state as static, and for TFLite (which runs
        rows one by one anyway, padded to a bucket chosen by the batch's longest row). False for
        ONNX FP32/FP16 and static INT8, whose rows are computed independently (masked padding
        contributes exact zeros)."""
        entry = self.artifact
        if entry["format"] != "onnx":
            return True
        mode = (entry.get("quantization") or {}).get("mode")
        if mode == "dynamic":
            return True
        return entry["precision"] not in ("fp32", "fp16") and mode != "static"

    def __repr__(self) -> str:
        return f"<edge_runtime.Model {self.name} task={self.task} backend={self.backend} threads={self.threads}>"

    # -- raw tensors -------------------------------------------------------------------------
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named input arrays; returns named output arrays.

        Inputs are checked first (names, ranks, dtypes, shared axis sizes, ids >= 0, masks 0/1;
        InputError otherwise, edge_runtime/_inputs.py); integer arrays are cast to the model's
        integer type when their values fit. A batch of zero rows returns zero-row outputs. A
        batch whose estimated activations exceed memory_budget_mb is run in parts and the
        outputs joined, so a large batch slows down instead of exhausting memory."""
        prepared, axes = _inputs.check_feeds(feeds, self.inputs)
        batch = next(iter(prepared.values())).shape[0] if prepared else 0
        if prepared and batch == 0:
            return _inputs.empty_outputs(self.outputs, axes)
        per_row = _inputs.row_bytes(self.outputs, axes, self.manifest.get("source"))
        if self.memory_budget_mb is None and per_row * batch <= _inputs.SMALL_BATCH_BYTES:
            return self._run_backend(prepared)
        step = _inputs.rows_per_run(batch, per_row, self._budget_bytes())
        if step >= batch:
            return self._run_backend(prepared)
        log.info("batch of %d rows over the memory budget: running %d rows at a time", batch, step)
        parts = [
            self._run_backend({k: v[start : start + step] for k, v in prepared.items()})
            for start in range(0, batch, step)
        ]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _budget_bytes(self) -> float | None:
        """Bytes one backend call may use; None when unknown (no split on a guess)."""
        budget = _load_args.check_memory_budget(self.memory_budget_mb, "Model.memory_budget_mb")  # settable
        if budget is not None:
            return max(1.0, budget * 2**20)
        available = _device.available_mb()  # the cgroup's room when that is less (_ram.py)
        if available <= 0:  # no /proc/meminfo and no psutil
            return None
        total = _device.detect(measure_int8=False).usable_total_mb()
        return max(1.0, (available - _memory.headroom_mb(total)) * 2**20)

    def _run_backend(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._run_lock is None:
            return self._session.run(feeds)
        with self._run_lock:
            return self._session.run(feeds)

    # -- text --------------------------------------------------------------------------------
    def _text(self) -> TextEncoder:
        with self._encoder_lock:
            if self._encoder is None:
                spec = self.manifest.get("tokenizer")
                if not spec:
                    raise InputError(f"{self.root} has no tokenizer (its manifest lists none), which "
                                     "embed() and classify() need: pass token ids to Model.run() instead")
                path = resolve(self.root, spec["files"][0]["path"])
                self._encoder = TextEncoder(path, spec, [i["name"] for i in self.inputs], self._tokenizer_text)
            return self._encoder

    def keep_tokenizer(self, check: bool, signed: bool = False) -> None:
        """Read the tokenizer file now, at load, and (check) hash these very bytes: embed and
        classify use what was verified, whatever happens to the directory after load (a file
        rewritten in place, the directory moved or removed by an update). The tokenizer itself
        is built from them on first use; a missing file unchecked is left to that first use,
        unless the load was `signed` (trusted_keys): then the first use must not read a file put
        there after the check."""
        spec = self.manifest.get("tokenizer") or {}
        if not spec.get("files"):
            return
        item = spec["files"][0]
        try:
            data = resolve(self.root, item["path"]).read_bytes()
        except OSError as exc:
            if check or signed:  # it was there when its hash (or the signature) was checked a moment ago
                raise ArtifactError(f"{item['path']} of {self.root} cannot be read: {exc}") from None
            return
        if check and hashlib.sha256(data).hexdigest() != item["sha256"].lower():
            raise ArtifactError(f"artifact files in {self.root} do not match manifest.json: {item['path']} changed "
                                "while it was being loaded (modified in place?); load it again")
        self._tokenizer_text = data.decode("utf-8", errors="replace")

    def sibling(self, threads: int) -> "Model":
        """The same artifact in a second session with `threads`, opened as load() opened this one
        (hashes, golden samples, device caches) from the manifest it read: a signed directory's
        signature is not verified again, each file's stat signature is held to the one that
        check took instead (edge-serve's lanes verified it twice: a review, session 52)."""
        if self._reopen is None:
            raise InputError(f"{self.name} was not opened by load(): open the artifact again with load()")
        return self._reopen(threads)

    def _require_task(self, method: str, tasks: tuple[str, ...]) -> None:
        if self.task not in tasks:
            raise InputError(
                f".{method}() needs a model for {' or '.join(tasks)}; this one does {self.task}"
            )

    def _postprocess(self, method: str) -> dict[str, Any]:
        post = self.manifest.get("postprocess")
        if post is None:  # read_manifest checked its shape when present
            raise ManifestError(f"{self.root}: the manifest has no postprocess section, which .{method}() "
                                "needs; run() takes raw tensors")
        return post

    def _forward(
        self, texts: Any, batch_size: int, truncate: bool, batch_invariant: bool, output: str
    ):
        """(first index, encodings, feeds, output array) per backend call, in text order."""
        try:  # any integer type, numpy's too; not bool, a float or a string
            size = None if isinstance(batch_size, (bool, np.bool_)) else operator.index(batch_size)
        except TypeError:
            size = None
        if size is None or size < 1:
            raise InputError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        for name, flag in (("truncate", truncate), ("batch_invariant", batch_invariant)):
            if not isinstance(flag, (bool, np.bool_)):  # "error" would read as True
                raise InputError(f"{name} must be True or False, got {flag!r}")
        texts = _inputs.check_texts(texts)
        if not texts:
            return
        encoder = self._text()
        # Batch-dependent artifacts run each text alone, unpadded: exactly what a batch of one
        # gives, whatever else is passed with it.
        step = 1 if batch_invariant and self.batch_dependent else size
        chunk = max(1, TOKENIZE_CHUNK // step) * step  # whole batches: the batches stay what they were
        for first in range(0, len(texts), chunk):
            encoded = encoder.encode_texts(texts[first : first + chunk], truncate=bool(truncate), first=first)
            for start in range(0, len(encoded), step):
                group: list[Encoded] = encoded[start : start + step]
                feeds = encoder.pad(group)
                yield first + start, group, feeds, self.run(feeds)[output]

    def _dim(self, output: str) -> int:
        """The values per text embed() gives from `output` (postprocess.truncate_dim when the manifest
        names one), else the output's last axis; 0 when only a run knows it."""
        post = self.manifest.get("postprocess") or {}
        keep = post.get("truncate_dim") if output == post.get("output") else None
        spec = next((o for o in self.outputs if o["name"] == output), None)
        last = spec["shape"][-1] if spec and spec["shape"] else None
        return keep or (last if isinstance(last, int) else 0)

    def embed(
        self, texts: list[str], batch_size: int = 32, truncate: bool = True, batch_invariant: bool = True
    ) -> np.ndarray:
        """Sentence embeddings [len(texts), dim], pooled, normalized and truncated like the source model.

        texts: str (or UTF-8 bytes) items; an empty list gives a [0, dim] array, an empty string
            the vector of [CLS] [SEP].
        truncate: True (default) keeps each text's first tokens up to the manifest's
            tokenizer max_length; False raises InputError naming the first longer text and its
            token count.
        batch_invariant: True (default): a text's vector does not depend on the texts passed
            with it (within 1e-4): artifacts whose numbers depend on the batch (batch_dependent,
            e.g. dynamic INT8) run each text alone. False: run batch_size texts per call, faster
            for such artifacts, but a vector may change with its batch neighbours."""
        self._require_task("embed", ("feature-extraction",))
        post = self._postprocess("embed")
        chunks = [
            sentence_vectors(hidden, feeds["attention_mask"], post)
            for _, _, feeds, hidden in self._forward(texts, batch_size, truncate, batch_invariant, post["output"])
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self._dim(post["output"])), np.float32)

    def classify(
        self, texts: list[str], batch_size: int = 32, truncate: bool = True, batch_invariant: bool = True,
        top_k: int | None = 1,
    ) -> list[Any]:
        """Labels with scores: one {label, score} per text for text classification (with `top_k`
        k > 1, a list of the k best per text, best first; None: every label's); for token
        classification, per text a list of {token, start, end, word, label, score} (special tokens left
        out; start/end: the token's characters in the text, end exclusive; word: text[start:end]).
        texts, truncate and batch_invariant as for embed(); an empty list gives []."""
        self._require_task("classify", ("text-classification", "token-classification"))
        if top_k is not None and (isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer))
                                  or top_k < 1):
            raise InputError(f"top_k must be an int >= 1, or None for every label's score, got {top_k!r}")
        if top_k != 1 and self.task != "text-classification":
            raise InputError(f"top_k applies to text classification; {self.root} does {self.task}")
        labels = self._postprocess("classify")["labels"]
        texts = _inputs.check_texts(texts)  # as _forward reads them (decoded bytes): what `word` slices
        results: list[Any] = []
        for first, group, _, logits in self._forward(texts, batch_size, truncate, batch_invariant, "logits"):
            if logits.shape[-1] != len(labels):  # a last axis the manifest records by name only
                raise ManifestError(f"{self.root}: postprocess.labels has {len(labels)} names but the logits "
                                    f"output gives {logits.shape[-1]} scores per row; one label per score")
            probs = softmax(logits.astype(np.float64))
            if self.task == "text-classification":
                for row in probs:
                    best = np.argsort(-row, kind="stable")[:top_k]
                    answers = [{"label": labels[int(i)], "score": float(row[i])} for i in best]
                    results.append(answers[0] if top_k == 1 else answers)
                continue
            for row, enc in enumerate(group):
                tokens = []
                for pos, (token, special, (start, end)) in enumerate(zip(enc.tokens, enc.special, enc.offsets)):
                    if special or pos >= probs.shape[1]:
                        continue
                    best = int(probs[row, pos].argmax())
                    tokens.append({"token": token, "start": start, "end": end, "word": texts[first + row][start:end],
                                   "label": labels[best], "score": float(probs[row, pos, best])})
                results.append(tokens)
        return results

    # -- checks ------------------------------------------------------------------------------
    def self_check(self, shortest_only: bool = False) -> int:
        """Run every golden sample recorded at conversion (shortest_only: the shortest), each
        alone; raise GoldenMismatchError listing every sample this device computes differently
        (issue 10: one broken sample is enough to refuse the artifact). Returns how many ran."""
        golden = self.artifact["golden"]
        return check_golden(self.run, resolve(self.root, golden["path"]), golden, self.name, self.backend,
                            self.artifact, shortest_only=shortest_only)


def open_artifact(root: Path, manifest: dict[str, Any], entry: dict[str, Any], threads: int, session=None) -> Model:
    """The Model `load(root, artifact=entry["name"], threads=threads, verify=False,
    device_cache=False, tune=False)` returns, for a manifest still in memory: the converter
    scores the packaged files this way before it writes manifest.json (converters/pipeline.py).
    `session`: an open session of the entry's files to use instead (the converter's exact-int32
    rewrite of them, for targets whose arithmetic this machine lacks); else the backend is opened
    with the manifest's runtime settings after the same arithmetic check load() makes."""
    if session is None:
        return open_entry(Path(root), manifest, entry, threads, verify=False, cache_dirs={})
    return Model(Path(root), manifest, entry, session, threads, 0.0)


def _backend_options(manifest: dict[str, Any], fmt: str) -> dict[str, Any]:
    runtime = manifest.get("runtime", {})
    for spec in runtime.get("backends", []):
        if _select.BACKEND_FORMAT.get(spec["name"]) == fmt:
            options = {}
            if fmt == "onnx":
                options["execution_providers"] = tuple(spec.get("execution_providers", ()))
                options["provider_options"] = spec.get("provider_options", {})
                options["graph_optimization_level"] = runtime.get("graph_optimization_level", "all")
                options["inter_op_threads"] = _inter_op(runtime)
            return options
    return {}


def _inter_op(runtime: dict[str, Any]) -> int:
    """The profile's threads.inter_op (recorded in the manifest): threads that run independent
    graph branches in parallel. 1 (every profile today) runs the graph sequentially."""
    threads = runtime.get("threads")
    value = threads.get("inter_op", 1) if isinstance(threads, dict) else 1
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


def open_entry(
    root: Path,
    manifest: dict[str, Any],
    entry: dict[str, Any],
    threads: int,
    verify: bool | str,
    cache_dirs: dict[str, Path],
    retried: bool = False,
    spinning: bool | None = None,
    records: Verifications | None = None,
    signed_stats: dict[str, list[int]] | None = None,
) -> Model:
    """Open one manifest entry with `threads` and check it: the runtime version it needs, the
    device's integer arithmetic (DeviceMismatchError), then, per `verify` (False, True: what
    `records` hold may be skipped, or "full"), its files' hashes and golden samples; a device
    cache that fails the golden sample is discarded and rebuilt once. No choice is made here:
    load() (edge_runtime/_load.py) and the tuning sweeps pick the entry, threads and caches.

    signed_stats: the stat signatures verify_directory took of the signed files (trusted_keys);
    a file whose signature differs now was replaced or written since, and is refused. Verified
    or signed, the files' signatures are also compared before hashing and after the backend
    opened them (_check_unchanged): a write in between would otherwise go into the device cache
    named after the verified hashes, and be run by every later load."""
    started = time.perf_counter()
    too_old = _compat.runtime_problem(entry)
    if too_old:
        raise BackendUnavailableError(too_old)
    if _compat.needs_int8_gemm_check(entry, manifest):  # the check measures the CPU (ms)
        problem = _compat.arithmetic_problem(entry, manifest, _device.detect())
        if problem:
            raise DeviceMismatchError(problem)
    records = records if verify is True else None
    # Everything this artifact reads: model files, golden sample, tokenizer (issue 10: the
    # tokenizer files were listed with hashes but never checked). Watched for changes when
    # verified or signed; hashed when verified.
    watched = files_to_verify(manifest, entry) if verify or signed_stats is not None else []
    items = watched if verify else []
    signatures = signatures_of(root, watched)  # before hashing (and before the backend reads)
    if signed_stats is not None:
        check_still_signed(root, watched, signatures, signed_stats)
    to_hash = records.unverified(root, items) if records else items
    verify_files(root, to_hash)
    if records:
        records.record_files(root, to_hash, signatures)
    main_file = resolve(root, entry["files"][0]["path"])
    options = _backend_options(manifest, entry["format"])
    if "provider_options" in options:
        options["provider_options"] = full_precision(options["provider_options"], entry["precision"], entry["name"])
    if entry["format"] == "tflite" and "tflite" in cache_dirs:
        options["weight_cache_dir"] = cache_dirs["tflite"]
        # The cache is keyed by the file's sha256. The manifest's value is the file's only once
        # verify_files has checked it; unverified, the backend hashes the file itself (a cache
        # of other weights would be used silently and compute wrong numbers).
        options["model_sha256"] = entry["files"][0]["sha256"] if verify else None
    if entry["format"] == "onnx":
        # TensorRT's engines, when the profile caches them: under the same root, or no cache
        # when device caching is off (backends/_tensorrt.py), never in the working directory.
        options["engine_cache_dir"] = cache_dirs.get("onnx")
    if entry["format"] == "onnx" and "onnx" in cache_dirs and verify:
        # Every ONNX artifact (optimized graph + prepacked weights, mapped: backends/onnx.py),
        # but only with verified files: the entry is named after their hashes.
        options["optimized_cache_dir"] = cache_dirs["onnx"]
        options["model_sha256"] = hashlib.sha256("".join(f["sha256"] for f in entry["files"]).encode()).hexdigest()
    if spinning is not None and entry["format"] == "onnx":  # from the device's tuning (_tune.py)
        options["allow_spinning"] = spinning
    session = backends.open_session(entry["format"], main_file, threads=threads, **options)
    model = Model(root, manifest, entry, session, threads, time.perf_counter() - started)
    model.keep_tokenizer(check=bool(verify), signed=signed_stats is not None)
    if verify:
        key = kernel_key(entry, items, model.backend, cpu_tag(), threads, options) if records else None
        # As a load whose samples all passed, and no cache just built: the shortest suffices.
        cache_state = getattr(session, "weight_cache_state", None) or getattr(session, "optimized_cache_state", None)
        quick = bool(key) and cache_state != "created" and records.golden_passed(key)
        try:
            samples = model.self_check(shortest_only=quick)
        except Exception:
            if quick:  # say exactly what is wrong: hash every file, run every sample
                log.warning("artifact %s failed its short golden check; checking it in full", entry["name"])
                getattr(session, "close", lambda: None)()
                return open_entry(root, manifest, entry, threads, "full", cache_dirs, retried, spinning,
                                  signed_stats=signed_stats)
            # A corrupt cache can also make the run itself fail (e.g. an index out of range).
            if getattr(session, "weight_cache_state", None) in ("reused", "created"):
                cache, state, discard = session.weight_cache, session.weight_cache_state, session.discard_weight_cache
            elif getattr(session, "optimized_cache_state", None) in ("reused", "created"):
                cache, state, discard = (session.optimized_cache, session.optimized_cache_state,
                                         session.discard_optimized_cache)
            else:
                raise
            # Never keep a cache next to a failure: a fresh one that fails would only fail again.
            try:
                discard()
            except OSError as exc:
                log.warning("could not delete device cache %s: %s", cache, exc)
            if state == "created" or retried:
                raise
            # A cache that computes wrong numbers (bit rot, a file put there by hand) must not
            # get a good artifact refused for good: load once more, which builds a fresh one;
            # once only (a cache that cannot be deleted must not loop).
            log.warning("artifact %s failed its golden sample with device cache %s; rebuilding the cache",
                        entry["name"], cache)
            return open_entry(root, manifest, entry, threads, verify, cache_dirs, retried=True,
                              spinning=spinning, records=records, signed_stats=signed_stats)
    _check_unchanged(root, watched, signatures, session)
    model._reopen = lambda count: open_entry(root, manifest, entry, count, verify, cache_dirs, spinning=spinning,
                                             records=records, signed_stats=signed_stats)
    if verify and key and not quick:  # only for files that stayed what was hashed
        records.record_golden(key, {"artifact": entry["name"], "backend": model.backend,
                                    "samples": samples, "threads": threads})
    return model


def _check_unchanged(root: Path, items: list[dict[str, Any]], before: dict[str, list[int]], session) -> None:
    """ArtifactError naming the first of `items` whose stat signature moved since `before` (taken
    before hashing), after discarding a device cache this load created from it and closing the
    session. What the backend read (and a cache it built) is then not known to be what was
    hashed or signed, and a cache entry is named after those hashes: kept, a write in that window
    would be run by every later load, the directory long restored (docs/signing.md, Limits).
    Any write changes mtime and ctime (a process cannot set ctime), a replacement the inode or
    ctime. Not seen: a write and restore both within the file system's timestamp tick of the
    first stat, which hashing the file itself (larger than a few kB) outlasts."""
    after = signatures_of(root, items)
    paths = {item["path"]: str(resolve(root, item["path"])) for item in items}
    changed = next((name for name, path in paths.items() if before.get(path) != after.get(path)), None)
    if changed is None:
        return
    discarded = ""
    for state, cache, discard in (("weight_cache_state", "weight_cache", "discard_weight_cache"),
                                  ("optimized_cache_state", "optimized_cache", "discard_optimized_cache")):
        if getattr(session, state, None) == "created":
            getattr(session, discard)()  # never raises; a cache it could not delete is named below
            built = getattr(session, cache)
            kept = built is not None and os.path.lexists(built)
            discarded = (f"; the device cache built from it ({built}) "
                         + ("could not be deleted: delete it by hand" if kept else "was discarded"))
    getattr(session, "close", lambda: None)()
    raise ArtifactError(
        f"{changed} of {root} changed while load() read it (its size, times or inode moved between "
        f"the hash check and the backend opening it){discarded}. Something writes the artifact "
        "directory: keep it writable by its owner only, and load again once it is settled"
    )

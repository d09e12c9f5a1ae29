"""Reading and checking manifest.json: the contract between edge-convert and the device.

Everything a manifest points at is checked before it is used: its structure and types here
(read_manifest: a malformed manifest raises ManifestError, never a KeyError or TypeError later),
every path stays inside the artifact directory (resolve: no absolute paths, no `..` or linked
directory leading out; a file itself may link to a file elsewhere, as huggingface_hub lays
them out), and every file the chosen artifact needs, tokenizer and golden sample included, has
the size and sha256 the manifest records (verify_files, files_to_verify). An entry of a format or
precision newer than this edge_runtime is left out with its reason (UNREADABLE), not refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import ArtifactError, ManifestError
from edge_runtime._manifest_bytes import read_manifest_bytes
from edge_runtime._manifest_post import check_postprocess

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "UNREADABLE",
    "file_sha256",
    "files_to_verify",
    "read_manifest",
    "resolve",
    "unknown_artifacts",
    "verify_files",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA_VERSION = 1  # the version edge-convert writes
SUPPORTED_SCHEMA_VERSIONS = (1,)  # the versions this edge_runtime reads
_REQUIRED = ("schema_version", "target", "source", "task", "inputs", "outputs", "artifacts")
_ARTIFACT_REQUIRED = ("name", "format", "precision", "files", "metrics", "golden")
FORMATS = ("onnx", "tflite")
PRECISIONS = ("fp32", "fp16", "int8", "int4")
# read_manifest's own key, never the file's: name -> why this edge_runtime cannot load an entry
# (a format or precision a later converter added), left out of `artifacts`; absent if none.
UNREADABLE = "_unreadable_artifacts"
# runtime.graph_optimization_level: the names backends/onnx.py maps to onnxruntime's
# GraphOptimizationLevel (targets/__init__.py checks a profile against the same four).
ONNX_OPTIMIZATION_LEVELS = ("disabled", "basic", "extended", "all")
# Bounds of integer fields: 10**30 passed a type check, then overflowed np.full (pad_token_id) or
# onnxruntime's SessionOptions (threads, a TypeError) in load() or the first embed().
MAX_THREADS = 1024  # runtime.threads.*: more than any board's cores; 0 is the backend's default
MAX_TOKEN_ID = 2**31 - 1  # tokenizer ids and lengths: int32, what every backend's ids fit in
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def unknown_artifacts(root: Path, manifest: dict[str, Any], names: list[str]) -> str:
    """The message for artifact names the manifest does not have: the names it has, then, one
    line each, the converter's reason for those it refused (its optional `refused` list; the
    reasons hold "; " themselves); a name this edge_runtime cannot load (UNREADABLE), its reason."""
    names = list(dict.fromkeys(names))
    unreadable = manifest.get(UNREADABLE) or {}
    absent = [name for name in names if name not in unreadable]
    lines = []
    if absent:
        refused = {r["name"]: r.get("reason") for r in manifest.get("refused") or []
                   if isinstance(r, dict) and isinstance(r.get("name"), str)}
        also = f" (and {', '.join(unreadable)}, which this edge_runtime cannot load)" if unreadable else ""
        lines.append(f"no artifact {', '.join(map(repr, absent))} in {root}; it has: "
                     f"{', '.join(a['name'] for a in manifest['artifacts'])}{also}")
        lines += [f"  the converter refused {name!r}: {refused[name] or '(no reason recorded)'}"
                  for name in absent if name in refused]
    lines += [f"artifact {name!r} in {root} cannot be loaded here: {unreadable[name]}"
              for name in names if name in unreadable]
    return "\n".join(lines)


def resolve(root: Path, relative: str) -> Path:
    """`root / relative`, refusing what would leave the artifact directory the user named: an
    absolute path, `..` leading out, or a directory on the way (a symlink resolved) that lies
    outside it. The file itself may be a symlink to a regular file anywhere: the layout
    huggingface_hub downloads (snapshots/REV/NAME -> ../../blobs/HASH) and a user's own links.
    Its content is hash-checked like any file's (verify_files); the link, not the manifest, chose
    it. The path returned keeps that last link unresolved, so a model's external data is looked
    up next to it, as its manifest path names it."""
    if not isinstance(relative, str) or not relative or "\x00" in relative:
        raise ManifestError(f"manifest path {relative!r} must be a non-empty relative path")
    if Path(relative).is_absolute() or relative.startswith(("/", "\\")):
        raise ManifestError(f"manifest path {relative!r} must be a non-empty relative path")
    base = Path(root).resolve()
    joined = base / relative
    try:
        if relative.split("/")[-1] in ("", ".", ".."):  # names a directory: resolved whole
            path = inside = joined.resolve()
        else:
            # Every directory on the way, links resolved (a name at the top: `base`, resolved
            # already), then the file's own link, if it is one. Each realpath is a syscall per
            # path component and a load checks ~34 paths: 0.15 -> 0.08 ms a call, ~2 ms of a
            # load (benchmarks/RESULTS.md run BA).
            inside = base if joined.parent == base else joined.parent.resolve()
            path = inside / joined.name
            target = path.resolve() if path.is_symlink() else path
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long for the OS
        raise ManifestError(f"manifest path {relative!r} cannot be resolved: {exc}") from None
    if not inside.is_relative_to(base):
        raise ManifestError(f"manifest path {relative!r} points outside {root} (to {inside}); manifest paths "
                            "must stay inside the artifact directory (to use a directory linked in from "
                            "elsewhere, copy the artifact directory with its links followed: cp -rL SRC DST)")
    leaves = path != inside and not target.is_relative_to(base)
    if leaves and target.exists() and not target.is_file():
        raise ManifestError(f"manifest path {relative!r} is a symlink to {target}, which is not a regular file; "
                            "a file of the artifact directory may link to a file only (or copy the directory "
                            "with its links followed: cp -rL SRC DST)")
    return path


def _check_file_item(root: Path, item: Any, where: str) -> None:
    """A file entry: {"path": relative str, "sha256": 64 hex chars, "bytes": int >= 0}."""
    if not isinstance(item, dict):
        raise ManifestError(f"{where} must be an object with path, sha256 and bytes")
    missing = [key for key in ("path", "sha256", "bytes") if key not in item]
    if missing:
        raise ManifestError(f"{where}: missing keys {missing}")
    digest, size = item["sha256"], item["bytes"]
    if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _HEX_DIGITS:
        raise ManifestError(f"{where}: sha256 {digest!r} is not 64 hexadecimal digits")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ManifestError(f"{where}: bytes {size!r} must be an integer >= 0")
    try:
        resolve(root, item["path"])
    except ManifestError as exc:
        raise ManifestError(f"{where}: {exc}") from None


def _valid_tolerance(tolerance: Any) -> bool:
    return isinstance(tolerance, dict) and all(_is_number(tolerance.get(k)) for k in ("cosine_min", "rel_l2_max"))


def _plain_dtype(text: str) -> bool:
    """A tensor's dtype is a plain numeric or bool numpy type. np.dtype() also parses comma
    strings ("01" raises SyntaxError from its literal parser), records and strings: none of
    those is a tensor type a backend takes."""
    try:
        dtype = np.dtype(text)
    except Exception:  # TypeError, ValueError, SyntaxError: numpy's parsers differ per form
        return False
    return dtype.kind in "biuf" and dtype.fields is None and dtype.subdtype is None


def _check_tensor_specs(specs: Any, where: str) -> None:
    if not isinstance(specs, list):
        raise ManifestError(f"{where} must be a list")
    if not specs:
        raise ManifestError(f"{where} is empty: a model takes and gives at least one tensor")
    for index, spec in enumerate(specs):
        here = f"{where}[{index}]"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ManifestError(f"{here} must be an object with a string name")
        if not isinstance(spec.get("dtype"), str):
            raise ManifestError(f"{here}: dtype must be a string, got {spec.get('dtype')!r}")
        if not _plain_dtype(spec["dtype"]):
            raise ManifestError(f"{here}: unknown dtype {spec['dtype']!r} (e.g. int64, float32)")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, str) or (type(d) is int and d >= 0)
                                                  for d in shape):  # type(): a bool is no size
            raise ManifestError(f"{here}: shape {shape!r} must be a list of sizes (int >= 0) or axis names (str)")
        # Optional limits, checked by edge_runtime/_inputs.py: ids below a table's size, axes' sizes
        below = spec.get("values_below")
        if below is not None and not (isinstance(below, int) and not isinstance(below, bool) and below >= 1):
            raise ManifestError(f"{here}: values_below must be an integer >= 1, got {below!r}")
        axis_max = spec.get("axis_max", {})
        if not isinstance(axis_max, dict) or not all(isinstance(k, str) and isinstance(v, int)
                                                     and not isinstance(v, bool) and v >= 1 for k, v in axis_max.items()):
            raise ManifestError(f"{here}: axis_max must map axis names to sizes >= 1, got {axis_max!r}")


def _parse(path: Path, raw: bytes | None = None) -> Any:
    if raw is None:
        raw = read_manifest_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path} is not UTF-8 text (invalid byte at offset {exc.start}); "
                            "the file is damaged or not a manifest") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column "
                            f"{exc.colno} (character {exc.pos}); the file is damaged or was cut short") from None
    except RecursionError:
        raise ManifestError(f"{path} is not a manifest: JSON nested too deeply") from None


def read_manifest(root: Path, raw: bytes | None = None) -> dict[str, Any]:
    """Parse and structurally check `root/manifest.json`. Raises ManifestError on anything it
    cannot use: never returns a manifest whose listed paths, hashes or sizes are ill-formed.
    raw: the manifest's bytes as already read (a signed load parses the bytes that matched the
    signature, not the file read again: _signing_files.py)."""
    root = Path(root)
    path = root / MANIFEST_NAME
    if not root.exists():
        raise ManifestError(f"{root} does not exist (expected an edge-convert output directory)")
    if not root.is_dir():
        raise ManifestError(f"{root} is not a directory (expected an edge-convert output)")
    if raw is None and not path.is_file():
        targets = []
        with contextlib.suppress(OSError):  # a directory we may not list gives the plain message
            targets = sorted(str(d) for d in root.iterdir() if (d / MANIFEST_NAME).is_file())
        if targets:  # the parent of a multi-target run's outputs (edge-convert --target a,b)
            raise ManifestError(f"{root} holds the outputs of several targets; pass one of them: "
                                + ", ".join(targets))
        raise ManifestError(f"{root} has no {MANIFEST_NAME}: not an edge-convert artifact directory, "
                            "or the conversion did not finish")
    manifest = _parse(path, raw)
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: top level must be an object, got {type(manifest).__name__}")
    # The version first: a newer schema may have moved any other key.
    if "schema_version" not in manifest:
        raise ManifestError(f"{path}: missing keys ['schema_version']")
    version = manifest["schema_version"]
    if isinstance(version, bool) or version not in SUPPORTED_SCHEMA_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_SCHEMA_VERSIONS)
        raise ManifestError(f"{path}: schema_version {version!r}; this edge_runtime reads schema_version "
                            f"{supported}. Re-convert, or install the matching edge_runtime.")
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing keys {missing}")
    if not isinstance(manifest["task"], str):
        raise ManifestError(f"{path}: task must be a string, got {manifest['task']!r}")
    _check_tensor_specs(manifest["inputs"], f"{path}: inputs")
    _check_tensor_specs(manifest["outputs"], f"{path}: outputs")
    _check_described(manifest, path)
    tokenizer = manifest.get("tokenizer")
    if tokenizer is not None:
        _check_tokenizer(root, tokenizer, manifest["inputs"], f"{path}: tokenizer")
    artifacts = manifest["artifacts"]
    if not isinstance(artifacts, list):
        raise ManifestError(f"{path}: artifacts must be a list")
    if not artifacts:
        raise ManifestError(f"{path}: lists no artifacts")
    names = set()
    for index, entry in enumerate(artifacts):
        where = f"{path}: artifacts[{index}]"
        if not isinstance(entry, dict):
            raise ManifestError(f"{where} must be an object")
        missing = [key for key in _ARTIFACT_REQUIRED if key not in entry]
        if missing:
            raise ManifestError(f"{where}: missing keys {missing}")
        if not isinstance(entry["name"], str) or not entry["name"]:
            raise ManifestError(f"{where}: name must be a non-empty string")
        if entry["name"] in names:
            raise ManifestError(f"{where}: duplicate artifact name {entry['name']!r}")
        names.add(entry["name"])
        for key in ("format", "precision"):
            if not isinstance(entry[key], str) or not entry[key]:
                raise ManifestError(f"{where}: {key} must be a string, got {entry[key]!r:.80}")
        files = entry["files"]
        if not isinstance(files, list) or not files:
            raise ManifestError(f"{where}: files must be a non-empty list")
        for number, item in enumerate(files):
            _check_file_item(root, item, f"{where}.files[{number}]")
        golden = entry["golden"]
        _check_file_item(root, golden, f"{where}.golden")
        # Optional here (hand-made test manifests omit it); self_check needs it when it runs.
        tolerance = golden.get("tolerance")
        if tolerance is not None and not _valid_tolerance(tolerance):
            raise ManifestError(f"{where}.golden: tolerance must give cosine_min and rel_l2_max")
        _check_golden_samples(golden.get("samples"), f"{where}.golden")
        _check_artifact_facts(entry, where)
    return _set_aside_unknown(manifest, path)


def _not_known(entry: dict[str, Any]) -> str:
    """Why this edge_runtime cannot load a well-formed entry ("" if it can): a format or precision
    a later converter added. Schema 1 fixes an entry's shape, not these values: such an entry is
    left out with this reason, as one whose backend is missing is, not a damaged manifest."""
    from edge_runtime import __version__  # lazily: the package imports this module

    unknown = [(f"{key} {entry[key]!r}", ", ".join(known))
               for key, known in (("format", FORMATS), ("precision", PRECISIONS)) if entry[key] not in known]
    if not unknown:
        return ""
    what, knows = " and ".join(u[0] for u in unknown), "; ".join(u[1] for u in unknown)
    return (f"{what} {'is' if len(unknown) == 1 else 'are'} not known to edge_runtime {__version__} "
            f"(it knows {knows}): upgrade edge_runtime to use it")


def _set_aside_unknown(manifest: dict[str, Any], path: Path) -> dict[str, Any]:
    """Move the entries this edge_runtime cannot load from `artifacts` to UNREADABLE, where
    selection, --info and a load by name find them; none left to load is a ManifestError."""
    manifest.pop(UNREADABLE, None)  # the reader's own key, never the file's
    reasons = {entry["name"]: why for entry in manifest["artifacts"] if (why := _not_known(entry))}
    if len(reasons) == len(manifest["artifacts"]):
        raise ManifestError(f"{path}: no artifact this edge_runtime can load:\n"
                            + "\n".join(f"  {name}: {why}" for name, why in reasons.items()))
    if reasons:
        manifest["artifacts"] = [entry for entry in manifest["artifacts"] if entry["name"] not in reasons]
        manifest[UNREADABLE] = reasons
    return manifest


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _check_described(manifest: dict[str, Any], path: Path) -> None:
    """What selection, embed/classify and --info read besides the tensors: the target, the
    source, the runtime settings and, for text tasks, the post-processing."""
    target = manifest["target"]
    if not isinstance(target, dict) or not isinstance(target.get("id", ""), str):
        raise ManifestError(f"{path}: target must be an object (with a string id), got {target!r:.80}")
    if not isinstance(manifest["source"], dict):
        raise ManifestError(f"{path}: source must be an object, got {manifest['source']!r:.80}")
    # target.profile is read for artifacts without `requires` (manifests older than it: _compat.py)
    profile = target.get("profile") or {}  # null reads as absent there
    if not isinstance(profile, dict) or not all(isinstance(profile.get(key) or {}, dict) for key in ("int8", "int4")):
        raise ManifestError(f"{path}: target.profile must be an object whose int8 and int4 are objects")
    _check_runtime(manifest.get("runtime", {}), f"{path}: runtime")
    check_postprocess(manifest, path)


def _check_runtime(runtime: Any, where: str) -> None:
    """The settings load() opens the backend with (_model.py _backend_options, backends/onnx.py)."""
    if not isinstance(runtime, dict):
        raise ManifestError(f"{where} must be an object")
    backends = runtime.get("backends", [])
    if not isinstance(backends, list) or not all(isinstance(b, dict) and isinstance(b.get("name"), str) for b in backends):
        raise ManifestError(f"{where}.backends must be a list of objects with a string name")
    for index, spec in enumerate(backends):
        if not _is_str_list(spec.get("execution_providers", [])):
            raise ManifestError(f"{where}.backends[{index}].execution_providers must be a list of provider "
                                f"names (e.g. [\"CPUExecutionProvider\"]), got {spec.get('execution_providers')!r:.80}")
        options = spec.get("provider_options", {})
        if not isinstance(options, dict) or not all(
            isinstance(v, dict) and all(isinstance(o, (str, int, float)) for o in v.values()) for v in options.values()
        ):
            raise ManifestError(f"{where}.backends[{index}].provider_options must map provider names to objects of "
                                f"option values (strings, numbers, booleans), got {options!r:.80}")
    level = runtime.get("graph_optimization_level", "all")
    if not isinstance(level, str) or level not in ONNX_OPTIMIZATION_LEVELS:
        raise ManifestError(f"{where}.graph_optimization_level {level!r:.40} is not one of "
                            f"{list(ONNX_OPTIMIZATION_LEVELS)}")
    if not _is_str_list(runtime.get("artifact_preference", [])):
        raise ManifestError(f"{where}.artifact_preference must be a list of precisions")
    threads = runtime.get("threads", {})
    if not isinstance(threads, dict):
        raise ManifestError(f"{where}.threads must map intra_op / inter_op to integers in 0..{MAX_THREADS}")
    for key, value in threads.items():
        _check_int(value, 0, MAX_THREADS, f"{where}.threads.{key}")


def _check_int(value: Any, low: int, high: int, what: str) -> None:
    if type(value) is not int or not low <= value <= high:  # type(): a bool is no count
        raise ManifestError(f"{what} must be an integer in {low}..{high}, got {value!r:.40}")


def _check_artifact_facts(entry: dict[str, Any], where: str) -> None:
    metrics = entry["metrics"]
    if not isinstance(metrics, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in metrics.items()):
        raise ManifestError(f"{where}: metrics must map names to numbers")
    requires = entry.get("requires")
    kinds = requires.get("int8_gemm", ["any"]) if isinstance(requires, dict) else None
    if requires is not None and not (_is_str_list(kinds) and kinds):
        raise ManifestError(f"{where}: requires.int8_gemm must be a non-empty list of INT8 GEMM kinds")
    # Both read at every load (null reads as absent there): quantization.mode by
    # Model.batch_dependent, min_runtime by selection and _compat.runtime_problem.
    quantization = entry.get("quantization") or {}
    if not isinstance(quantization, dict) or not isinstance(quantization.get("mode", ""), str):
        raise ManifestError(f"{where}: quantization must be an object (with a string mode such as \"dynamic\"), "
                            f"got {quantization!r:.80}")
    needs = entry.get("min_runtime") or {}
    if not isinstance(needs, dict) or not all(isinstance(v, str) for v in needs.values()):
        raise ManifestError(f"{where}: min_runtime must map package names to version strings "
                            f"(e.g. {{\"onnxruntime\": \"1.17\"}}), got {needs!r:.80}")


def _check_golden_samples(samples: Any, where: str) -> None:
    """golden.samples (issue 10; absent in older manifests, whose file holds one sample under
    plain keys): a non-empty list of {prefix: str, kind: str, tolerance?: {...}}."""
    if samples is None:
        return
    if not isinstance(samples, list) or not samples:
        raise ManifestError(f"{where}: samples must be a non-empty list")
    prefixes = set()
    for index, sample in enumerate(samples):
        here = f"{where}.samples[{index}]"
        if not isinstance(sample, dict) or not isinstance(sample.get("prefix"), str):
            raise ManifestError(f"{here} must be an object with a string prefix")
        if sample["prefix"] in prefixes:
            raise ManifestError(f"{here}: duplicate prefix {sample['prefix']!r}")
        prefixes.add(sample["prefix"])
        tolerance = sample.get("tolerance")
        if tolerance is not None and not _valid_tolerance(tolerance):
            raise ManifestError(f"{here}: tolerance must give cosine_min and rel_l2_max")


def _check_tokenizer(root: Path, spec: Any, inputs: list[dict[str, Any]], where: str) -> None:
    """Its files, max_length and pad_token_id; a max_length past an input's axis_max["sequence"], or
    a pad id past input_ids' values_below, would fail long texts or padded batches at run time."""
    if not isinstance(spec, dict):
        raise ManifestError(f"{where} must be an object")
    files = spec.get("files")
    if not isinstance(files, list) or not files:
        raise ManifestError(f"{where}: files must be a non-empty list (tokenizer.json first)")
    for number, item in enumerate(files):
        _check_file_item(root, item, f"{where}.files[{number}]")
    _check_int(spec.get("max_length"), 1, MAX_TOKEN_ID, f"{where}.max_length")
    _check_int(spec.get("pad_token_id"), 0, MAX_TOKEN_ID, f"{where}.pad_token_id")
    for tensor in inputs:
        limit = (tensor.get("axis_max") or {}).get("sequence")
        if limit is not None and spec["max_length"] > limit:
            raise ManifestError(f"{where}.max_length {spec['max_length']} is more than input "
                                f"{tensor['name']!r} takes (axis_max sequence {limit})")
        below = tensor.get("values_below") if tensor["name"] == "input_ids" else None
        if below is not None and spec["pad_token_id"] >= below:
            raise ManifestError(f"{where}.pad_token_id must be in 0..{below - 1}, an id of the vocabulary (input "
                                f"'input_ids' values_below {below}), got {spec['pad_token_id']}")


def files_to_verify(manifest: dict[str, Any], entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file loading `entry` reads: its model files, its golden sample and the tokenizer."""
    tokenizer = manifest.get("tokenizer") or {}
    return [*entry["files"], entry["golden"], *tokenizer.get("files", [])]


def _digests_differ(actual: str, expected: str) -> str:
    """Two different sha256 digests shown far enough to differ: 16 hex digits, or up to 4 past
    the first difference, which is then named (else they can read as two identical strings)."""
    first = next(i for i, (a, b) in enumerate(zip(actual, expected)) if a != b)
    shown = 16 if first < 16 else min(first + 5, 64)
    where = "" if first < 16 else f" (first difference at hex digit {first + 1})"
    dots = "..." if shown < 64 else ""
    return f"sha256 {actual[:shown]}{dots} differs from the manifest's {expected[:shown]}{dots}{where}"


def verify_files(root: Path, items: list[dict[str, Any]]) -> None:
    """Check every listed file exists with the recorded size and sha256; one error lists every
    file that does not, with what the manifest expects and what is there."""
    problems = []
    for item in items:
        path = resolve(root, item["path"])
        if not path.is_file():
            what = "a directory, not a file" if path.is_dir() else "missing"
            problems.append(f"{item['path']}: {what} (manifest expects {item['bytes']} bytes)")
            continue
        try:
            size = path.stat().st_size
            if size != item["bytes"]:
                kind = "truncated" if size < item["bytes"] else "too long"
                problems.append(f"{item['path']}: {kind}: {size} bytes, manifest expects {item['bytes']}")
                continue
            actual = file_sha256(path)
        except OSError as exc:  # mode 000, say: the user loading it must be able to read it
            problems.append(f"{item['path']}: cannot be read ({exc.strerror or exc}); make it "
                            "readable by the user loading it")
            continue
        expected = item["sha256"].lower()
        if actual != expected:
            problems.append(f"{item['path']}: {_digests_differ(actual, expected)} (same size: modified in place?)")
    if problems:
        raise ArtifactError(f"artifact files in {root} do not match manifest.json (copied incompletely or "
                            "modified?):\n  " + "\n  ".join(problems))

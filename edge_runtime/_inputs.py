"""Checking what callers pass to Model.run / embed / classify before a backend sees it.

A backend given the wrong thing either fails deep inside with its own message (onnxruntime:
"Reshape node ... cannot be reshaped", for a batch of zero rows) or, worse, answers: a negative
token id is a valid Gather index in ONNX (it counts from the end of the embedding table) and
gives a vector for the wrong token. Everything here raises InputError naming the input, the text
index or the axis, what was given and what the model takes.

Dtype policy (docs/guarantees.md): integer inputs accept any integer or bool array whose values
fit the model's integer type, cast losslessly (int32 ids for an int64 model; an int64 value that
does not fit int32 is an error, never wrapped); float arrays for integer inputs are refused
(token ids in a float array are almost always a bug, and 3.7 has no token). Float inputs accept
any real array and take float32 (float64 -> float32 rounds, as every framework does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_runtime._errors import InputError, ManifestError

__all__ = [
    "ROW_ACTIVATION_FACTOR",
    "SMALL_BATCH_BYTES",
    "check_feeds",
    "check_texts",
    "empty_outputs",
    "row_bytes",
    "rows_per_run",
]

# Inputs whose values index a table (negative would silently count from its end) or are a mask.
_INDEX_INPUTS = ("input_ids", "token_type_ids", "position_ids")
_MASK_INPUTS = ("attention_mask",)


def _model_dtype(spec: dict[str, Any]) -> np.dtype:
    try:
        return np.dtype(spec["dtype"])
    except TypeError:
        raise ManifestError(f"manifest input {spec['name']!r} has unknown dtype {spec['dtype']!r}") from None


def _cast(name: str, array: np.ndarray, want: np.dtype) -> np.ndarray:
    have = array.dtype
    if want.kind in "iu":
        if have.kind == "b":
            return np.ascontiguousarray(array, dtype=want)
        if have.kind not in "iu":
            raise InputError(
                f"input {name!r} has dtype {have}; the model takes {want} (integer token ids or "
                f"masks): pass an integer array, e.g. np.asarray(x, dtype=np.{want})"
            )
        if not np.can_cast(have, want, casting="safe") and array.size:
            info = np.iinfo(want)
            low, high = int(array.min()), int(array.max())
            if low < info.min or high > info.max:
                raise InputError(
                    f"input {name!r} ({have}) holds values in [{low}, {high}], outside the "
                    f"model's {want} range [{info.min}, {info.max}]"
                )
        return np.ascontiguousarray(array, dtype=want)
    if want.kind == "f":
        if have.kind not in "biuf":
            raise InputError(f"input {name!r} has dtype {have}; the model takes {want} numbers")
        return np.ascontiguousarray(array, dtype=want)
    return np.ascontiguousarray(array, dtype=want)


def check_feeds(
    feeds: Any, specs: list[dict[str, Any]]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(arrays cast to the model's dtypes, size of every named axis) or InputError.

    A batch of zero rows is valid (the caller returns empty outputs); any other empty axis is not.
    """
    if not isinstance(feeds, Mapping):
        raise InputError(
            f"inputs must be a dict of name -> array, got {type(feeds).__name__}; the model "
            f"takes {[s['name'] for s in specs]}"
        )
    expected = {spec["name"]: spec for spec in specs}
    missing = sorted(set(expected) - set(feeds))
    extra = sorted(str(k) for k in set(feeds) - set(expected))
    if missing or extra:
        wrong = ", ".join(f"{what} {names}" for what, names in (("missing", missing), ("unexpected", extra)) if names)
        raise InputError(f"inputs do not match the model: {wrong}; the model takes {sorted(expected)}")
    prepared: dict[str, np.ndarray] = {}
    axes: dict[str, tuple[int, str]] = {}  # axis name -> (size, first input that set it)
    for name, spec in expected.items():
        try:
            array = np.asarray(feeds[name])
        except (ValueError, TypeError) as exc:  # ragged nested lists
            raise InputError(f"input {name!r} is not a rectangular array: {exc}") from None
        shape = spec["shape"]
        if array.ndim != len(shape):
            raise InputError(
                f"input {name!r} has rank {array.ndim} (shape {array.shape}); the model takes "
                f"rank {len(shape)} {shape}"
            )
        for axis, (dim, size) in enumerate(zip(shape, array.shape)):
            if isinstance(dim, int):
                if size != dim:
                    raise InputError(
                        f"input {name!r} has size {size} on axis {axis}; the model takes {dim} "
                        f"there (shape {shape})"
                    )
                continue
            if dim in axes and axes[dim][0] != size:
                raise InputError(
                    f"inputs disagree on axis {dim!r}: {axes[dim][1]!r} has {axes[dim][0]}, "
                    f"{name!r} has {size}; every input must have the same {dim} size"
                )
            axes.setdefault(dim, (size, name))
            if size == 0 and axis > 0:
                raise InputError(f"input {name!r} has an empty {dim!r} axis (shape {array.shape})")
            most = spec.get("axis_max", {}).get(dim)
            if most is not None and size > most:
                raise InputError(
                    f"input {name!r} has {size} on axis {dim!r}; the model takes at most {most} there "
                    "(its position table): shorten or split the input"
                )
        cast = _cast(name, array, _model_dtype(spec))
        if cast.size and name in _INDEX_INPUTS and cast.min() < 0:
            where = tuple(int(i) for i in np.argwhere(cast < 0)[0])
            raise InputError(
                f"input {name!r} holds a negative value {int(cast[where])} at {where}; ids "
                "must be >= 0 (a negative index would read another row of the table)"
            )
        below = spec.get("values_below")
        if cast.size and below is not None and cast.max() >= below:
            where = tuple(int(i) for i in np.argwhere(cast >= below)[0])
            raise InputError(
                f"input {name!r} holds {int(cast[where])} at {where}; the model's table has {below} "
                f"rows, so values must be < {below} (ids from another model's tokenizer?)"
            )
        if cast.size and name in _MASK_INPUTS and (cast.min() < 0 or cast.max() > 1):
            where = tuple(int(i) for i in np.argwhere((cast < 0) | (cast > 1))[0])
            raise InputError(
                f"input {name!r} must hold only 0 and 1; it has {int(cast[where])} at {where}"
            )
        prepared[name] = cast
    return prepared, {dim: size for dim, (size, _) in axes.items()}


def empty_outputs(outputs: list[dict[str, Any]], axes: dict[str, int]) -> dict[str, np.ndarray]:
    """The outputs of a zero-row batch, shaped from the manifest (no backend run)."""
    result = {}
    for spec in outputs:
        shape = []
        for dim in spec["shape"]:
            if isinstance(dim, int):
                shape.append(dim)
            elif dim in axes:
                shape.append(axes[dim])
            else:
                raise InputError(
                    f"a batch of zero rows has no defined {spec['name']!r} output: its axis "
                    f"{dim!r} depends on the data; pass at least one row"
                )
        result[spec["name"]] = np.zeros(shape, dtype=np.dtype(spec["dtype"]))
    return result


def check_texts(texts: Any) -> list[str]:
    """A list of str (or a 1-D array of them); UTF-8 bytes are decoded. Anything else names the
    offending index."""
    single = "texts must be a list of strings (wrap a single text in a list)"
    if isinstance(texts, (str, bytes, bytearray)):
        raise InputError(single)
    if isinstance(texts, (Mapping, set, frozenset)):  # a mapping's keys, a set in no defined order
        raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
    if isinstance(texts, np.ndarray):
        if texts.ndim == 0:  # np.array("a"): one text, as a str is (tolist() would give "a")
            raise InputError(single)
        if texts.ndim > 1:  # its rows would be reported as lists
            raise InputError(f"texts must be a list of str or a 1-D array of str, got a {texts.ndim}-D array")
        texts = texts.tolist()
    try:
        items = list(texts)
    except TypeError:
        raise InputError(
            f"texts must be a list of strings, got {type(texts).__name__}"
        ) from None
    checked = []
    for index, text in enumerate(items):
        if isinstance(text, (bytes, bytearray)):
            try:
                text = bytes(text).decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"texts[{index}] is bytes that are not valid UTF-8 (byte {exc.start}: "
                    f"{bytes(text)[exc.start:exc.start + 1]!r}); decode it with the right "
                    "encoding and pass str"
                ) from None
        elif not isinstance(text, str):
            raise InputError(
                f"texts[{index}] is {type(text).__name__}, not str: texts must be a list of "
                "strings (or UTF-8 bytes)"
            )
        else:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # lone surrogates, e.g. from errors="surrogateescape"
                raise InputError(
                    f"texts[{index}] holds a character that is not valid Unicode text "
                    f"({text[exc.start]!r} at position {exc.start}, a lone surrogate); it cannot "
                    "be tokenized"
                ) from None
        checked.append(text)
    return checked


# Resident activation bytes per row of a transformer encoder run, as a multiple of one
# [seq, hidden] float32 tensor: Q, K, V and the attention context (4), the FFN's intermediate
# before and after its activation (2 x 4), residual sums and LayerNorm outputs (2), the output
# (1), rounded up to 16. The attention scores add heads x seq x seq floats twice (scores and
# softmax); heads are taken as hidden / 32 (MiniLM: 384 / 12 = 32; BERT-base: 64), which
# overestimates for wider heads. An estimate, not a measurement: it decides only where a large
# batch is split, and splitting changes no number (FP32) or only within batch-dependence
# (dynamic INT8, already run row by row by the text APIs).
ROW_ACTIVATION_FACTOR = 16


def row_bytes(outputs: list[dict[str, Any]], axes: dict[str, int], source: Any = None) -> int:
    """Estimated activation bytes one row of the batch needs while it runs. `source`: the
    manifest's source record, whose hidden_size and num_heads are the encoder's; without them the
    widest fixed output dimension stands for the hidden size (a classifier's logits are not:
    found by a review, session 49: a 2-label classifier was estimated at 1/35 of its encoder)."""
    source = source if isinstance(source, dict) else {}

    def given(key: str) -> int | None:
        value = source.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else None

    hidden = given("hidden_size") or max(
        [d for spec in outputs for d in spec["shape"] if isinstance(d, int)] + [1]
    )
    seq = max([size for dim, size in axes.items() if dim != "batch"] + [1])
    heads = given("num_heads") or max(1, hidden // 32)
    return 4 * (ROW_ACTIVATION_FACTOR * seq * hidden + 2 * heads * seq * seq)


# Below this estimate a batch is not checked against the memory available: reading it
# (/proc/meminfo) costs ~1 ms, as much as running a small batch, and any device that loaded the
# model has this much to spare.
SMALL_BATCH_BYTES = 64 * 2**20


def rows_per_run(batch: int, per_row: int, budget_bytes: float | None) -> int:
    """How many rows fit the budget at once (all of them when the budget is unknown): at least 1
    (a single row is never split further: an estimate must not refuse a job that may fit)."""
    if budget_bytes is None or per_row <= 0:
        return max(1, batch)
    return max(1, min(batch, int(budget_bytes // per_row)))

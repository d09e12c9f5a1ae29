"""Golden samples: the input/output pairs recorded at conversion that a device re-runs at load
to prove it computes the numbers the converter measured (Model.self_check), and how outputs
are compared with them."""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime._errors import ArtifactError, GoldenMismatchError, InputError, ManifestError, ModelLoadError

__all__ = ["check_golden", "compare_outputs", "golden_samples"]


def compare_outputs(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], tolerance: dict[str, float]
) -> list[str]:
    """Problems (empty if none) comparing outputs row by row: cosine and relative L2 error."""
    problems = []
    for name, expected in want.items():
        actual = got.get(name)
        if actual is None or actual.shape != expected.shape:
            shape = None if actual is None else actual.shape
            problems.append(f"{name}: shape {shape}, expected {expected.shape}")
            continue
        a = actual.reshape(len(actual), -1).astype(np.float64)
        b = expected.reshape(len(expected), -1).astype(np.float64)
        if not np.all(np.isfinite(a)):
            problems.append(f"{name}: contains NaN or Inf")
            continue
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        cosine = float(np.min((a * b).sum(axis=1) / np.clip(norms, 1e-30, None)))
        rel = float(np.max(np.linalg.norm(a - b, axis=1) / np.clip(np.linalg.norm(b, axis=1), 1e-30, None)))
        if cosine < tolerance["cosine_min"] or rel > tolerance["rel_l2_max"]:
            problems.append(
                f"{name}: cosine {cosine:.6f} (needs >= {tolerance['cosine_min']}), "
                f"relative L2 error {rel:.3g} (needs <= {tolerance['rel_l2_max']})"
            )
    return problems


def golden_samples(golden: dict[str, Any], arrays: dict[str, np.ndarray], name: str = "artifact"):
    """(label, inputs, expected outputs, tolerance) per golden sample of a manifest entry.

    Manifests since issue 10 list `samples` (key prefix, kind, tolerance); older ones hold one
    sample under the plain `input:` / `output:` keys, checked with `golden.tolerance`."""
    samples = golden.get("samples") or [{"prefix": "", "kind": "sample"}]
    for index, sample in enumerate(samples):
        prefix = sample.get("prefix", "")
        tolerance = sample.get("tolerance") or golden.get("tolerance")
        if tolerance is None:
            raise ManifestError(f"artifact {name!r}: golden sample {index} has no tolerance to check against")
        inputs = {k[len(prefix) + len("input:"):]: v for k, v in arrays.items() if k.startswith(prefix + "input:")}
        want = {k[len(prefix) + len("output:"):]: v for k, v in arrays.items() if k.startswith(prefix + "output:")}
        if not inputs or not want:
            raise ManifestError(
                f"artifact {name!r}: golden sample {index} ({prefix or 'no prefix'}) is not in "
                f"{golden['path']} (it holds {sorted(arrays)[:6]})"
            )
        tokens = sample.get("tokens")
        label = f"sample {index} ({sample.get('kind', 'sample')}" + (f", {tokens} tokens)" if tokens else ")")
        yield label, inputs, want, tolerance



def check_golden(run: Callable[[dict], dict], path: Path, golden: dict[str, Any], name: str, backend: str,
                 entry: dict[str, Any], shortest_only: bool = False) -> int:
    """Run every golden sample of `golden` (its arrays at `path`) through `run`, each alone
    (shortest_only: only the one with the fewest tokens); returns how many ran.
    GoldenMismatchError lists every sample computed differently (one is enough to refuse the
    artifact); a sample the backend fails to run (it loaded the file: an operator or type it
    lacks, e.g. INT4 tables under tflite-runtime 2.14) is ModelLoadError naming what the artifact
    was made for. Input errors pass through."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:  # missing, not an .npz, damaged
        raise ArtifactError(
            f"{path}: artifact {name!r}'s golden samples cannot be read ({type(exc).__name__}: "
            f"{str(exc)[:200]}); the file is missing or damaged: copy the directory again (a verified "
            "load names every file that differs from the manifest)"
        ) from None
    problems = []
    samples = list(golden_samples(golden, arrays, name))
    if shortest_only:
        samples = [min(samples, key=lambda sample: _tokens(sample[1]))]
    for label, inputs, want, tolerance in samples:
        try:
            got = run(inputs)
        except InputError:
            raise
        except Exception as exc:
            needs = entry.get("min_runtime") or {}
            made_for = f". It was made for {', '.join(f'{k} >= {v}' for k, v in needs.items())}" if needs else ""
            raise ModelLoadError(
                f"artifact {name!r} loaded on {backend} but failed to run its golden sample ({label}): "
                f"{type(exc).__name__}: {str(exc).strip()[:300]}{made_for}; try another artifact "
                "(artifact=...) or that runtime.") from exc
        problems += [f"{label}: {p}" for p in compare_outputs(got, want, tolerance)]
    if problems:
        raise GoldenMismatchError(
            f"artifact {name!r} computes wrong numbers on {backend}; refusing it. "
            "Golden samples from conversion:\n  " + "\n  ".join(problems)
            + "\nTry another artifact (artifact=...) or another backend version."
        )
    return len(samples)


def _tokens(inputs: dict[str, np.ndarray]) -> int:
    """Elements of a sample's largest input (batch x tokens for text models)."""
    return max(int(np.asarray(value).size) for value in inputs.values())

"""ai-edge-quantizer as this package drives it: per-op recipe entries, calibration feeds, a run.

Every TFLite artifact below FP32 is laid out by ai-edge-quantizer (its tensor types, scale
tensors and op versions are what XNNPACK and the runtimes expect); our writers then only replace
values inside the tensors it wrote. Our recipes name each op by its exact scope, so one weight's
choice applies in every signature and nowhere else.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from converters._errors import ConversionError

__all__ = ["QuantizerSession", "calibration_feeds", "op_entry", "run_quantizer", "scoped_entries"]


def op_entry(regex: str, operation: str, bits: int, block: int) -> dict[str, Any]:
    """One ai-edge-quantizer recipe entry: symmetric INT weights of `bits` for the ops of kind
    `operation` whose scope matches `regex`, per channel (block 0) or in `block`-element blocks;
    activations stay float and are quantized per run by the kernel."""
    granularity = f"BLOCKWISE_{block}" if block else "CHANNELWISE"
    return {
        "regex": regex,
        "operation": operation,
        "algorithm_key": "min_max_uniform_quantize",
        "op_config": {
            "weight_tensor_config": {
                "num_bits": bits,
                "symmetric": True,
                "granularity": granularity,
                "dtype": "INT",
                "block_size": block,
            },
            # INTEGER compute without explicit dequantize: XNNPACK's dynamic-range kernels
            "compute_precision": "INTEGER",
            "explicit_dequantize": False,
            "skip_checks": False,
        },
    }


def scoped_entries(choices: Iterable[tuple[str, str, int, int]]) -> list[dict[str, Any]]:
    """Recipe entries for ops named by their exact scope: `choices` = (scope, operation, bits,
    block) per op. The scopes of one (operation, bits, block) share one entry, an alternation of
    the anchored scopes: ai-edge-quantizer runs every entry's regex against every op of the model
    (RecipeManager.get_quantization_configs), so one entry per op made that matching quadratic:
    with MiniLM's 148 scoped ops a TFLite INT4 candidate's build took 0.439 s instead of 0.292 s
    (benchmarks/bench_tflite_build.py, RESULTS.md run AC). Each scope is in one entry, so the entries' order (the last
    match wins) cannot change a choice; a scope given two different choices is refused."""
    groups: dict[tuple[str, int, int], list[str]] = {}
    chosen: dict[str, tuple[str, int, int]] = {}
    for scope, operation, bits, block in choices:
        key = (operation, bits, block)
        if chosen.setdefault(scope, key) != key:
            raise ValueError(f"op scope {scope!r} given two recipes: {chosen[scope]} and {key}")
        if scope not in groups.setdefault(key, []):
            groups[key].append(scope)
    return [op_entry("^(?:" + "|".join(re.escape(scope) for scope in scopes) + ")$", operation, bits, block)
            for (operation, bits, block), scopes in groups.items()]


def calibration_feeds(
    path: Path, calibration: list[dict[str, np.ndarray]]
) -> dict[str, list[dict[str, np.ndarray]]]:
    """Per signature, each calibration row cut/padded to the signature's length (pad 0, mask 0)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    feeds: dict[str, list[dict[str, np.ndarray]]] = {}
    for key, spec in interpreter.get_signature_list().items():
        details = interpreter.get_signature_runner(key).get_input_details()
        length = int(details[spec["inputs"][0]]["shape"][1])
        rows = []
        for sample in calibration:
            missing = set(spec["inputs"]) - set(sample)
            if missing:
                raise ConversionError(
                    f"calibration sample lacks inputs {sorted(missing)}; "
                    f"the model takes {spec['inputs']}"
                )
            batch = np.atleast_2d(np.asarray(sample[spec["inputs"][0]])).shape[0]
            for row in range(batch):
                feed = {}
                for name in spec["inputs"]:
                    value = np.atleast_2d(np.asarray(sample[name]))[row, :length]
                    padded = np.zeros((1, length), details[name]["dtype"])
                    padded[0, : value.shape[0]] = value
                    feed[name] = padded
                rows.append(feed)
        feeds[key] = rows
    return feeds


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """ai-edge-quantizer 0.10's Quantizer.quantize drops its enable_progress_bar argument on the way
    to ModelModifier.modify_model (quantizer.py, _get_quantized_model), so any model of 100 tensors
    or more gets an "Applying Transformations to tensors" tqdm bar on stderr per call. Its
    ProgressBar is looked up on the module at each use: replaced by a disabled one meanwhile."""
    from ai_edge_quantizer.utils import progress_utils

    original = progress_utils.ProgressBar

    class _Disabled(original):
        def __init__(self, total_steps: int, description: str = "", disappear_on_finish: bool = False,
                     enable: bool | None = None):
            super().__init__(total_steps, description, disappear_on_finish, enable=False)

    progress_utils.ProgressBar = _Disabled
    try:
        yield
    finally:
        progress_utils.ProgressBar = original


def run_quantizer(in_path: Path, out_path: Path, recipe, calibration=None) -> None:
    """Quantize `in_path` with an ai-edge-quantizer `recipe` (its own, or a list of op_entry)
    into `out_path`; `calibration` is used only when the recipe needs it."""
    QuantizerSession(in_path).run(out_path, recipe, calibration)


class QuantizerSession:
    """ai-edge-quantizer's Quantizer for one float model, kept across recipes.

    A TFLite search quantizes the same model once per candidate (60 times for MiniLM's INT4),
    and candidates differ in one weight's recipe. Two things were redone for every candidate:
    reading the model into ai-edge-quantizer's object tree, and the quantization parameters of
    every weight (min/max per channel or block, the quantized values): together more than half of a build
    (benchmarks/RESULTS.md run T). Kept here instead: the Quantizer (it copies the tree before
    it changes anything: ModelModifier._copy_with_views) and, for weight-only recipes (no
    calibration), ai-edge-quantizer's own TensorQuantParamsCache - keyed by (weight buffer,
    tensor quantization config), which one quantize() call already shares between all ops
    reading a weight - shared by every call of this session instead of rebuilt per call. Our
    recipes give each weight one op kind, so a key means the same parameters in every call.
    Outputs are byte-identical to a plain Quantizer per recipe (tests/test_tflite_recipes.py).
    The cache relies on ai-edge-quantizer internals (Quantizer._get_quantization_params,
    ParamsGenerator._tensor_quant_params_cache): when they are not what this expects, the
    session uses the plain path for every call (`shares_parameters` says which)."""

    def __init__(self, in_path: Path):
        self.in_path = Path(in_path)
        self._quantizer = None
        self.shares_parameters = False

    def _make(self):
        import inspect

        from ai_edge_quantizer import quantizer

        try:
            from ai_edge_quantizer import params_generator
            from ai_edge_quantizer.algorithms.utils import common_utils

            shared = common_utils.TensorQuantParamsCache()
            expected = ["self", "calibration_result", "enable_progress_bar"]
            usable = (
                list(inspect.signature(quantizer.Quantizer._get_quantization_params).parameters) == expected
                and "model_recipe_manager" in inspect.signature(
                    params_generator.ParamsGenerator.generate_quantization_parameters).parameters
            )
        except (ImportError, AttributeError, TypeError, ValueError):
            usable = False
        if not usable:
            return quantizer.Quantizer(str(self.in_path))
        session = self

        class _SharedParams(quantizer.Quantizer):
            def _get_quantization_params(self, calibration_result=None, enable_progress_bar=None):
                plain = super()._get_quantization_params
                if calibration_result is not None:  # statistics of this call: nothing to share
                    return plain(calibration_result, enable_progress_bar)
                try:
                    generator = params_generator.ParamsGenerator(self._float_model)
                    recipes = self._recipe_manager
                except AttributeError:
                    session.shares_parameters = False
                    return plain(calibration_result, enable_progress_bar)
                if not isinstance(getattr(generator, "_tensor_quant_params_cache", None),
                                  common_utils.TensorQuantParamsCache):
                    session.shares_parameters = False
                    return plain(calibration_result, enable_progress_bar)
                generator._tensor_quant_params_cache = shared
                session.shares_parameters = True
                return generator.generate_quantization_parameters(recipes, calibration_result, enable_progress_bar)

        return _SharedParams(str(self.in_path))

    def run(self, out_path: Path, recipe, calibration=None) -> None:
        if self._quantizer is None:
            self._quantizer = self._make()
        qt = self._quantizer
        qt.load_quantization_recipe(recipe)
        calibrated = None
        if qt.need_calibration:
            calibrated = qt.calibrate(calibration_feeds(self.in_path, calibration), num_threads=1)
        printed = io.StringIO()  # its report on stdout: kept for the error message, not shown
        try:
            # All-zero weight blocks (e.g. the padding row of an embedding table) get scale 0 and
            # numpy warns on 0/0; those blocks dequantize to 0 whatever the cast gave.
            with (
                contextlib.redirect_stdout(printed),
                np.errstate(invalid="ignore", divide="ignore"),
                _no_progress_bars(),
            ):
                result = qt.quantize(
                    calibrated, enable_progress_bar=False, enable_progress_report=False
                )
            # export_model(overwrite=True) logs "WARNING:root: The model ... already exists" for
            # every candidate a search rewrites into the same probe file; replacing it is the plan.
            Path(out_path).unlink(missing_ok=True)
            result.export_model(str(out_path))
        except (RuntimeError, ValueError, KeyError) as exc:
            tail = printed.getvalue().strip().splitlines()[-20:]
            raise ConversionError(
                f"ai-edge-quantizer could not quantize {self.in_path.name}: {exc}"
                + ("\nit printed:\n" + "\n".join(tail) if tail else "")
            ) from exc

"""The named TFLite recipes: what each produces, which need calibration, which are refused.

A target profile names a recipe per precision ([tflite] recipes in targets/*.toml); this is the
one list those names are checked against. Two kinds:

- ai-edge-quantizer's own, applied as they are (names follow its convention: w = weights,
  a = activations, i8/i4 = integer bits, b32 = 32-element blocks, fp32 = float).
- ours (`ours=True`): ai-edge-quantizer's layout with GPTQ-rounded values and a measured
  mixed precision (gptq_int8.py, gptq_int4.py).

Recipes ai-edge-quantizer offers but that were measured to be wrong or slow here are refused
with the measured reason, so a profile cannot pick them by accident.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from converters._errors import ConversionError

__all__ = [
    "GPTQ_INT8_RECIPE",
    "GPTQ_RECIPE",
    "RECIPES",
    "REFUSED",
    "TfliteRecipe",
    "lookup",
    "registry",
]


@dataclass(frozen=True)
class TfliteRecipe:
    name: str  # an ai_edge_quantizer.recipe function of the same name, or one of ours
    precision: str  # manifest precision of the result
    needs_calibration: bool
    note: str
    ours: bool = False  # built by this package (GPTQ + measured mixed precision)


GPTQ_RECIPE = "gptq_wi4b32_afp32"
GPTQ_INT8_RECIPE = "gptq_wi8_afp32"

# Recipes ai-edge-quantizer offers that we refuse, with the measured reason.
REFUSED = {
    "static_wi8_ai8": (
        "static int8 activations give wrong numbers on BERT-style encoders with ai-edge-quantizer "
        "0.10 / ai-edge-litert 2.3 (MiniLM sentence cosine 0.288 in the prototype, 0.42 mean / "
        "0.19 min re-measured): the decomposed LayerNorm (MEAN, SQUARED_DIFFERENCE, MUL, ADD) "
        "cannot be computed in per-tensor int8, and the graph splits into 62 XNNPACK partitions. "
        "Static int8 on the FULLY_CONNECTED ops alone stays in one partition but is no faster "
        "than dynamic_wi8_afp32 (0.42x vs 0.41x FP32) and less accurate (0.953 / 0.84: the "
        "FFN-output inputs need more than one int8 range per tensor). See "
        "docs/notes/tflite-findings.md."
    ),
    "static_wi8_ai16": (
        "int16 activations run on reference kernels (int16 ops are not delegated to XNNPACK), "
        "many times slower than FP32 with XNNPACK, and on MiniLM were not accurate either with "
        "every op int16 (see docs/notes/tflite-findings.md)."
    ),
}


def registry(recipes: Iterable[TfliteRecipe]) -> dict[str, TfliteRecipe]:
    """`recipes` by name; a name given twice, or one that is refused, is our bug: raise."""
    found: dict[str, TfliteRecipe] = {}
    for recipe in recipes:
        if recipe.name in found or recipe.name in REFUSED:
            where = "twice" if recipe.name in found else "and also refused (REFUSED)"
            raise ValueError(f"TFLite recipe {recipe.name!r} is registered {where}")
        found[recipe.name] = recipe
    return found


RECIPES = registry(
    (
        TfliteRecipe(
            "dynamic_wi8_afp32",
            "int8",
            False,
            "int8 per-channel weights, activations quantized per run (XNNPACK QD8 kernels)",
        ),
        TfliteRecipe(
            "dynamic_wi4b32_afp32",
            "int4",
            False,
            "int4 weights in 32-element blocks, activations quantized per run; accuracy is "
            "model-dependent (MiniLM cosine 0.96 / min 0.82): validate before shipping",
        ),
        TfliteRecipe(
            "weight_only_wi8_afp32",
            "int8",
            False,
            "int8 weights dequantized to FP32 at load: 4x smaller file, FP32 speed and accuracy",
        ),
        TfliteRecipe(
            GPTQ_INT8_RECIPE,
            "int8",
            True,
            "dynamic_wi8_afp32's layout (int8 per-channel weights, activations quantized per "
            "run) with the FULLY_CONNECTED codes rounded by GPTQ on the calibration texts",
            ours=True,
        ),
        TfliteRecipe(
            GPTQ_RECIPE,
            "int4",
            True,
            "int4 weights in 32-element blocks rounded by GPTQ on the calibration texts, int4 "
            "word embeddings; the most sensitive layers int8 within the size budget; "
            "activations quantized per run (XNNPACK QD8 kernels)",
            ours=True,
        ),
    )
)


def lookup(recipe: str) -> TfliteRecipe:
    """The registered recipe named `recipe`; a refused or unknown name raises ConversionError
    listing the supported ones (and, when refused, why)."""
    if recipe in REFUSED:
        raise ConversionError(
            f"TFLite recipe {recipe!r} is not supported: {REFUSED[recipe]} "
            f"Supported: {', '.join(RECIPES)}"
        )
    if recipe not in RECIPES:
        raise ConversionError(f"unknown TFLite recipe {recipe!r}; supported: {', '.join(RECIPES)}")
    return RECIPES[recipe]

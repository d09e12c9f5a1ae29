"""TFLite artifacts: litert-torch export, then ai-edge-quantizer recipes (stock or ours).

    from converters.tflite import TfliteExportConfig, export_tflite, quantize_tflite
    export_tflite(source, Path("fp32.tflite"), TfliteExportConfig(buckets=(32, 64, 128)))
    quantize_tflite(Path("fp32.tflite"), Path("int8.tflite"), "gptq_wi8_afp32", calibration)

The package reads top to bottom like the stage it implements:

    export.py          the pass that writes one FP32 .tflite, a signature per sequence bucket
    quantize.py        the pass that quantizes it with a named recipe (and drives ours)
    recipes.py         the recipe registry: names, precisions, refused recipes and why
    config.py          the settings of our recipes (GptqInt4Config, GPTQ damping, ranking)
    edge_quantizer.py  ai-edge-quantizer as we drive it (per-op entries, calibration, one run)
    gptq_int8.py       gptq_wi8_afp32's writer (GPTQ codes in the stock INT8 layout)
    gptq_int4.py       gptq_wi4b32_afp32's writer (GPTQ codes and block scales in INT4 blocks)
    hessians.py        the input-statistics tap GPTQ rounds against
    judge.py           standalone scoring against the FP32 .tflite (the pipeline passes its own)
    space.py           a recipe's candidates as the shared search sees them (probe files, cut scoring)
    prefix.py          candidates scored from their first changed op (the start's prefix kept)
    signatures.py      running a bucketed model row by row on calibration rows
    flatbuffer.py      reading and rewriting the flatbuffer (op names, weights, tensor names)
    flatbuffer_raw.py  the same at the byte level where the generated accessors are too slow
    shared_quantization.py  each quantized tensor's parameters stored once, not once per bucket

Heavy libraries (litert-torch, ai-edge-quantizer, ai-edge-litert) are imported inside the
functions that use them.
"""

from converters.tflite.config import GptqInt4Config
from converters.tflite.export import (
    TFLITE_EXPORT_CONFIG_VERSION,
    TfliteExportConfig,
    export_tflite,
    ops_outside_delegate,
    signature_name,
)
from converters.tflite.flatbuffer import op_counts
from converters.tflite.quantize import quantize_tflite
from converters.tflite.recipes import GPTQ_INT8_RECIPE, GPTQ_RECIPE, RECIPES, TfliteRecipe

__all__ = [
    "GPTQ_INT8_RECIPE",
    "GPTQ_RECIPE",
    "RECIPES",
    "TFLITE_EXPORT_CONFIG_VERSION",
    "GptqInt4Config",
    "TfliteExportConfig",
    "TfliteRecipe",
    "export_tflite",
    "op_counts",
    "ops_outside_delegate",
    "quantize_tflite",
    "signature_name",
]

"""Pass: keep the residual Add in front of each LayerNormalization out of onnxruntime's
SkipLayerNormalization fusion.

When a session starts (graph optimization level "extended" or "all"), onnxruntime rewrites
Add (+ a bias Add) + LayerNormalization into its contrib op SkipLayerNormalization whenever the
Add's inputs have matching shapes. Its CPU kernel normalizes with a scalar loop and a division
per element (onnxruntime/contrib_ops/cpu/skip_layer_norm.cc), where LayerNormalization is
vectorized. On an AMD EPYC (Zen 3, AVX2, no VNNI, 2 threads; benchmarks/profile_onnx_ops.py)
the x86-avx2 INT4 MiniLM artifact's 6 fused ops took 0.19 ms each against 0.07 ms for a
LayerNormalization of the same shape, and the artifact ran at 0.766x of plain ORT FP32 before
this pass and table_gather, 0.699x after (/work/notes/int8_avx2_profile.md). Which Adds fuse
depends on what shape inference proves about them, so speed changed with unrelated rewrites
(the INT8 graph's token-0 split hid the pattern behind a Concat; the INT4 graph's did not).

The rewrite: an Add whose only consumer is a LayerNormalization becomes a Sum of the same two
inputs: the same arithmetic and the same elementwise kernel speed, which the fusion does not
match (it looks for Add). Exact in FP32.

Precondition: a graph with LayerNormalization nodes (opset >= 17). Postcondition, checked on
the result: no LayerNormalization reads an Add.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["KeepUnfusedConfig", "keep_layernorm_unfused"]

CONFIG_VERSION = 1
_FUSIONS = ("SkipLayerNormalization",)


@dataclass(frozen=True)
class KeepUnfusedConfig:
    # onnxruntime fusions to keep from happening; only SkipLayerNormalization is handled.
    fusions: tuple[str, ...] = ("SkipLayerNormalization",)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.fusions) - set(_FUSIONS))
        if unknown:
            raise ValueError(f"KeepUnfusedConfig.fusions {unknown}: supported {list(_FUSIONS)}")

    def describe(self) -> dict:
        return {"config_version": CONFIG_VERSION, "fusions": list(self.fusions)}


def keep_layernorm_unfused(
    model_path: Path, out_path: Path, config: KeepUnfusedConfig = KeepUnfusedConfig()
) -> list[str]:
    """Rewrite `model_path` into `out_path`; returns the names of the Adds made Sums."""
    import onnx

    model = onnx.load(str(model_path))
    changed = _rewrite(model.graph) if "SkipLayerNormalization" in config.fusions else []
    if "SkipLayerNormalization" in config.fusions:
        _check(model.graph)
    onnx.save(model, str(out_path))
    return changed


def _rewrite(graph) -> list[str]:
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    changed = []
    for node in graph.node:
        if node.op_type != "LayerNormalization" or not node.input:
            continue
        add = producer.get(node.input[0])
        # An Add that also feeds another node or is a graph output stays: the fusion skips it
        # too, and a Sum there would change nothing.
        if add is None or add.op_type != "Add" or add.domain not in ("", "ai.onnx"):
            continue
        if consumers.get(add.output[0], 0) != 1 or add.output[0] in outputs:
            continue
        add.op_type = "Sum"  # Sum-8 broadcasts like Add-14; both inputs are kept in order
        changed.append(add.name or add.output[0])
    return changed


def _check(graph) -> None:
    from converters._errors import ConversionError

    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    outputs = {o.name for o in graph.output}
    left = [
        n.name
        for n in graph.node
        if n.op_type == "LayerNormalization"
        and n.input
        and getattr(producer.get(n.input[0]), "op_type", None) == "Add"
        and consumers.get(n.input[0], 0) == 1
        and n.input[0] not in outputs
    ]
    if left:
        raise ConversionError(
            f"keep_layernorm_unfused: LayerNormalization {left} still read(s) a fusable Add"
        )

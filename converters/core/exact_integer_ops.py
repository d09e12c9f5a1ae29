"""Pass: rewrite a quantized graph's integer GEMMs into exact float arithmetic, so that any
CPU computes what a target whose INT8 GEMM accumulates in 32 bits computes.

Why: the workstation's own onnxruntime kernels are not the target's. On x86 CPUs without VNNI,
MLAS multiplies u8 activations by s8 weights with VPMADDUBSW, which adds the products of
adjacent rows (k = 2j, 2j+1) into a saturating int16: unconstrained 8-bit weights overflow there
(MiniLM INT8 made for a VNNI or ARM64 target: cosine 0.983 mean / 0.946 min on that kernel,
benchmarks/RESULTS.md run E), while VNNI (VPDPBUSD), AMX, ARM64 (SDOT/UMULL, MLAS's NEON
kernels) and TensorRT accumulate in int32 and are exact. Validating an artifact made for those
targets on the workstation's AVX2 kernel refuses or degrades artifacts that are fine on the
device (issue 8). This pass gives the validator the target's numbers on any host.

Rewrites (every other node is left as it is):

    MatMulInteger(A, B, a_zp, b_zp) -> int32
        A' = Cast<float>(A) - a_zp,  B' = Cast<float>(B) - b_zp  (integers, |A'| <= 255, |B'| <= bmax)
        Y  = sum over K-chunks c of Cast<int32>(MatMul(A'[:, c], B'[c, :]))

      Each chunk holds at most floor(2^24 / (255 * bmax)) rows of K, so every partial sum of
      the float GEMM is an integer below 2^24: float32 represents all of them exactly, whatever
      order the kernel adds in (the result is exact, not "close"). The chunks are added in int32,
      like the target does. bmax is the largest |B - b_zp| of a constant weight, else the
      type's bound.

    DequantizeLinear(x, scale, zp) feeding a MatMul/Gemm (static QDQ graphs)
        -> Mul(Cast<float>(x) - Cast<float>(zp), scale)
      so that onnxruntime cannot fuse the QDQ pattern back into its integer kernels
      (QLinearMatMul / MatMulIntegerToFloat). The float product of dequantized values differs
      from the target's int32 sum x scale only by float32 rounding (relative ~1e-7).

Integer ops this pass does not know (QAttention, QLinearMatMul, ConvInteger, ...) are an error:
validating them on the host's kernel would silently give the host's numbers.

Precondition: an ONNX model (opset >= 13) as the INT8/INT4 passes write it.
Postcondition (checked on the result): no op of _INTEGER_GEMMS is left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._errors import ConversionError

__all__ = ["ExactIntegerConfig", "chunk_rows", "exact_integer_ops"]

CONFIG_VERSION = 1
_EXACT_FLOAT = 1 << 24  # float32 holds every integer up to 2^24 exactly
# Integer GEMM ops onnxruntime runs with MLAS's (possibly saturating) INT8 kernels.
_INTEGER_GEMMS = ("MatMulInteger", "QAttention", "QLinearMatMul", "QGemm", "ConvInteger", "QLinearConv",
                  "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QOrderedMatMul")
_MATMUL_CONSUMERS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class ExactIntegerConfig:
    activation_bound: int = 255  # |A - a_zp| for 8-bit activations (u8 or s8, any zero point)

    def describe(self) -> dict[str, Any]:
        return {"config_version": CONFIG_VERSION, "activation_bound": self.activation_bound}


def chunk_rows(activation_bound: int, weight_bound: int) -> int:
    """Rows of K per float32 GEMM chunk whose every partial sum stays an exact integer."""
    if activation_bound < 1 or weight_bound < 1:
        raise ValueError(f"bounds must be >= 1, got {activation_bound}, {weight_bound}")
    return max(1, (_EXACT_FLOAT - 1) // (activation_bound * weight_bound))


def exact_integer_ops(model_path: Path, out_path: Path, config: ExactIntegerConfig = ExactIntegerConfig()) -> dict:
    """Write the rewritten model to `out_path` (weights inline or next to it as external data,
    as onnx.save decides by size). Returns what was rewritten."""
    import onnx

    model = onnx.load(str(model_path))
    rewriter = _Rewriter(model, config)
    report = rewriter.run()
    left = sorted({n.op_type for n in model.graph.node if n.op_type in _INTEGER_GEMMS})
    if left:  # our bug: _Rewriter refuses unknown ops before it changes anything
        raise ConversionError(f"exact_integer_ops left integer GEMMs in {model_path.name}: {left}")
    _save(model, out_path)
    return report


def _save(model, out_path: Path) -> None:
    import onnx

    out_path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() < 1_800_000_000:
        onnx.save(model, str(out_path))
    else:  # protobuf's 2 GB limit
        onnx.save(model, str(out_path), save_as_external_data=True, location=out_path.name + ".data")


class _Rewriter:
    def __init__(self, model, config: ExactIntegerConfig):
        self.model = model
        self.graph = model.graph
        self.config = config
        self.constants = {init.name: init for init in self.graph.initializer}
        self.new_inits: list = []
        self.counter = 0

    # -- helpers ---------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        self.counter += 1
        return f"{base}__exact{self.counter}"

    def _const(self, base: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self._name(base)
        self.new_inits.append(numpy_helper.from_array(value, name))
        return name

    def _constant_array(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        init = self.constants.get(name)
        return None if init is None else numpy_helper.to_array(init)

    def _shapes(self) -> dict[str, list[int | None]]:
        """Static shapes by tensor name (initializers and ONNX shape inference)."""
        import onnx

        shapes = {init.name: list(init.dims) for init in self.graph.initializer}
        try:
            inferred = onnx.shape_inference.infer_shapes(self.model, strict_mode=False)
        except Exception:  # noqa: BLE001 - contrib ops: inference is best effort, K is checked below
            inferred = self.model
        for info in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            dims = info.type.tensor_type.shape.dim
            shapes.setdefault(info.name, [d.dim_value if d.HasField("dim_value") else None for d in dims])
        return shapes

    # -- the pass --------------------------------------------------------------------------
    def run(self) -> dict:
        unknown = sorted({n.op_type for n in self.graph.node if n.op_type in _INTEGER_GEMMS
                          and n.op_type != "MatMulInteger"})
        if unknown:
            raise ConversionError(
                f"cannot validate {unknown} on the target's exact int32 arithmetic: only MatMulInteger "
                "(dynamic INT8, onnx.fusion = false) and QDQ MatMuls are supported. Set onnx.fusion = false "
                "and int8.quant_format = 'qdq' or 'operator' with dynamic mode in the target profile"
            )
        consumers: dict[str, list] = {}
        for node in self.graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        shapes = self._shapes()
        nodes, matmuls, dequantized = [], [], []
        for node in self.graph.node:
            if node.op_type == "MatMulInteger":
                chunks = self._matmul_integer(node, shapes, nodes)
                matmuls.append({"node": node.name, "k_chunks": chunks})
            elif node.op_type == "DequantizeLinear" and any(
                c.op_type in _MATMUL_CONSUMERS for c in consumers.get(node.output[0], [])
            ):
                self._dequantize(node, shapes, nodes)
                dequantized.append(node.name)
            else:
                nodes.append(node)
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.graph.initializer.extend(self.new_inits)
        return {"matmul_integer": matmuls, "dequantize_linear": dequantized, **self.config.describe()}

    def _centered(self, value: str, zero_point: str | None, out_base: str, nodes: list) -> str:
        """Cast<float>(value) - Cast<float>(zero_point)."""
        from onnx import TensorProto, helper

        as_float = self._name(out_base + "_f")
        nodes.append(helper.make_node("Cast", [value], [as_float], to=TensorProto.FLOAT, name=self._name("cast")))
        if not zero_point:
            return as_float
        zp_float = self._name(out_base + "_zp_f")
        centered = self._name(out_base + "_c")
        nodes.append(helper.make_node("Cast", [zero_point], [zp_float], to=TensorProto.FLOAT, name=self._name("cast")))
        nodes.append(helper.make_node("Sub", [as_float, zp_float], [centered], name=self._name("sub")))
        return centered

    def _weight_bound(self, weight: str, zero_point: str | None) -> int:
        """Largest |B - b_zp|: measured on constant weights, else the bound of B's type."""
        import onnx

        values = self._constant_array(weight)
        zp = self._constant_array(zero_point) if zero_point else np.zeros(1, np.int64)
        if values is not None and zp is not None:
            return max(1, int(np.abs(values.astype(np.int64) - zp.astype(np.int64)).max(initial=0)))
        init = self.constants.get(weight)
        signed_zero = not zero_point or (zp is not None and not np.any(zp))
        if init is not None and init.data_type == onnx.TensorProto.INT8 and signed_zero:
            return 128
        return 255

    def _matmul_integer(self, node, shapes: dict, nodes: list) -> int:
        from onnx import TensorProto, helper

        a, b = node.input[0], node.input[1]
        a_zp = node.input[2] if len(node.input) > 2 and node.input[2] else None
        b_zp = node.input[3] if len(node.input) > 3 and node.input[3] else None
        b_shape = shapes.get(b)
        if not b_shape or len(b_shape) != 2 or b_shape[0] is None:
            raise ConversionError(
                f"MatMulInteger {node.name!r}: the weight {b!r} needs a static 2-D shape [K, N] for the "
                f"exact rewrite (found {b_shape})"
            )
        if a_zp is not None:
            zp = self._constant_array(a_zp)
            zp_shape = shapes.get(a_zp)
            if (zp is not None and zp.size != 1) or (zp is None and zp_shape not in (None, [], [1])):
                raise ConversionError(f"MatMulInteger {node.name!r}: per-row activation zero points are not supported")
        k = int(b_shape[0])
        step = chunk_rows(self.config.activation_bound, self._weight_bound(b, b_zp))
        a_c = self._centered(a, a_zp, node.name + "_a", nodes)
        b_c = self._centered(b, b_zp, node.name + "_b", nodes)
        out = node.output[0]
        parts = []
        starts = list(range(0, k, step))
        for start in starts:
            stop = min(k, start + step)
            if len(starts) == 1:
                a_part, b_part = a_c, b_c
            else:
                a_part, b_part = self._name(node.name + "_a_part"), self._name(node.name + "_b_part")
                begin, end = self._const("start", np.array([start], np.int64)), self._const("stop", np.array([stop], np.int64))
                nodes.append(helper.make_node("Slice", [a_c, begin, end, self._const("axis", np.array([-1], np.int64))],
                                              [a_part], name=self._name("slice")))
                nodes.append(helper.make_node("Slice", [b_c, begin, end, self._const("axis", np.array([0], np.int64))],
                                              [b_part], name=self._name("slice")))
            product = self._name(node.name + "_y_f")
            nodes.append(helper.make_node("MatMul", [a_part, b_part], [product], name=self._name("matmul")))
            part = out if len(starts) == 1 else self._name(node.name + "_y_part")
            nodes.append(helper.make_node("Cast", [product], [part], to=TensorProto.INT32, name=self._name("cast")))
            parts.append(part)
        total = parts[0]
        for index, part in enumerate(parts[1:], 1):
            target = out if index == len(parts) - 1 else self._name(node.name + "_y_sum")
            nodes.append(helper.make_node("Add", [total, part], [target], name=self._name("add")))
            total = target
        return len(starts)

    def _dequantize(self, node, shapes: dict, nodes: list) -> None:
        from onnx import helper

        x, scale = node.input[0], node.input[1]
        zero_point = node.input[2] if len(node.input) > 2 and node.input[2] else None
        centered = self._centered(x, zero_point, node.name + "_x", nodes)
        scale_shape = shapes.get(scale) or []
        x_shape = shapes.get(x)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        scale_name = scale
        if len(scale_shape) == 1 and scale_shape[0] not in (None, 1):
            if x_shape is None:
                raise ConversionError(f"DequantizeLinear {node.name!r}: per-axis scales on an input of unknown rank")
            axis = axis % len(x_shape)
            if axis != len(x_shape) - 1:  # broadcast the scale along `axis`
                trailing = len(x_shape) - 1 - axis
                shape = self._const("scale_shape", np.array([-1] + [1] * trailing, np.int64))
                scale_name = self._name(scale + "_b")
                nodes.append(helper.make_node("Reshape", [scale, shape], [scale_name], name=self._name("reshape")))
                if zero_point:  # the zero point was broadcast the same (wrong) way: redo it
                    raise ConversionError(f"DequantizeLinear {node.name!r}: per-axis zero points on axis {axis} "
                                          "are not supported by the exact rewrite")
        nodes.append(helper.make_node("Mul", [centered, scale_name], [node.output[0]], name=node.name or self._name("dq")))

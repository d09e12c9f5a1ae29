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

    MatMulInteger(A u8, B s8, a_zp, b_zp), with ExactIntegerConfig.u8_weights
        -> MatMulInteger(A, B + 128 as u8, a_zp, b_zp + 128 as u8)

      The same integer sums (every product (a - a_zp)(b - b_zp) is unchanged), run on
      onnxruntime's u8 x u8 kernel, which widens both operands to int16 and adds pairs of
      products into int32 (MLAS VPMADDWD on AVX2 / AVX-512BW; no saturating int16 step): exact
      at integer-kernel speed, where the float rewrite costs float GEMMs, casts and K-chunks.
      Only where u8u8_gemm_is_exact() has measured that on this machine's kernel; MatMulIntegers
      with u8 weights already are left as they are then.

Integer ops this pass does not know (QAttention, QLinearMatMul, ConvInteger, ...) are an error:
validating them on the host's kernel would silently give the host's numbers.

Precondition: an ONNX model (opset >= 13) as the INT8/INT4 passes write it.
Postcondition (checked on the result): no op of _INTEGER_GEMMS is left.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from converters._errors import ConversionError
from converters._graph import without_weight_values

__all__ = ["ExactIntegerConfig", "chunk_rows", "exact_integer_ops", "integer_gemm_is_exact", "u8u8_gemm_is_exact"]

log = logging.getLogger("converters")

CONFIG_VERSION = 2
_EXACT_FLOAT = 1 << 24  # float32 holds every integer up to 2^24 exactly
# Integer GEMM ops onnxruntime runs with MLAS's (possibly saturating) INT8 kernels.
_INTEGER_GEMMS = ("MatMulInteger", "QAttention", "QLinearMatMul", "QGemm", "ConvInteger", "QLinearConv",
                  "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QOrderedMatMul")
_MATMUL_CONSUMERS = ("MatMul", "Gemm")


@dataclass(frozen=True)
class ExactIntegerConfig:
    activation_bound: int = 255  # |A - a_zp| for 8-bit activations (u8 or s8, any zero point)
    # Run u8-activation MatMulIntegers on the u8 x u8 integer kernel (weights shifted to u8)
    # instead of float GEMMs. True only where u8u8_gemm_is_exact() holds on this machine.
    u8_weights: bool = False

    def describe(self) -> dict[str, Any]:
        return {"config_version": CONFIG_VERSION, "activation_bound": self.activation_bound,
                "u8_weights": self.u8_weights}


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
    left = sorted({n.op_type for n in model.graph.node
                   if n.op_type in _INTEGER_GEMMS and not rewriter.on_u8_kernel(n)})
    if left:  # our bug: _Rewriter refuses unknown ops before it changes anything
        raise ConversionError(f"exact_integer_ops left integer GEMMs in {model_path.name}: {left}")
    _save(model, out_path)
    return report


@functools.cache
def u8u8_gemm_is_exact() -> bool:
    """Whether this process's onnxruntime computes u8 x u8 MatMulInteger exactly in int32.
    Measured, not assumed from the CPU flags (integer_gemm_is_exact)."""
    return integer_gemm_is_exact(np.uint8)


def integer_gemm_is_exact(weight_type: type) -> bool:
    """Whether onnxruntime's MatMulInteger of u8 activations by `weight_type` (np.uint8 or
    np.int8) weights equals numpy int64 on the worst operands: activations 255 times the type's
    largest weight over K = 64, so a kernel that adds pairs of products into a saturating int16
    fails (2 x 255 x 255 and 2 x 255 x 127 both exceed 32767), plus columns that reach the same
    magnitude through a weight zero point. For s8 weights this is the saturation
    edge_runtime's probe detects: False on x86 without VNNI (tests use it as the witness that
    the check can fail). Any error is False: then the float rewrite, exact everywhere, is used."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        k, n = 64, 16
        top = int(np.iinfo(weight_type).max)
        weights = np.full((k, n), top, weight_type)
        weights[:, n // 2:] = 0
        zero = np.zeros(n, weight_type)
        zero[n // 2:] = top
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "w", "", "wz"], ["y"])], "integer_gemm_probe",
            [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])],
            [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(zero, "wz")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 7
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        a = np.full((4, k), 255, np.uint8)
        (y,) = session.run(None, {"a": a})
    except Exception as exc:  # noqa: BLE001 - no probe, no integer shortcut: the float rewrite is exact anywhere
        log.debug("integer GEMM probe (%s weights) failed: %s", np.dtype(weight_type).name, exc)
        return False
    want = a.astype(np.int64) @ (weights.astype(np.int64) - zero.astype(np.int64))
    return bool(np.array_equal(y, want))


def _save(model, out_path: Path) -> None:
    import onnx

    out_path.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() < 1_800_000_000:
        onnx.save(model, str(out_path))
    else:  # protobuf's 2 GB limit
        onnx.save(model, str(out_path), save_as_external_data=True, location=out_path.name + ".data")


def _optional_input(node, index: int) -> str | None:
    """The name of `node`'s optional input `index`, None when absent or empty."""
    return node.input[index] if len(node.input) > index and node.input[index] else None


def _read_names(graph) -> set[str]:
    """Every tensor name a node of `graph` or of its subgraphs (If, Loop, Scan bodies) reads."""
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                names |= _read_names(sub)
    return names


class _Rewriter:
    def __init__(self, model, config: ExactIntegerConfig):
        self.model = model
        self.graph = model.graph
        self.config = config
        self.constants = {init.name: init for init in self.graph.initializer}
        self.new_inits: list = []
        self.types: dict[str, int] = {}  # element types by tensor name (_shapes fills it)
        self.as_u8: dict[str, str] = {}  # s8 tensor -> its u8 (+128) twin, made once per tensor
        self.made_types: dict[str, int] = {}  # element type of every tensor the u8 path created
        # Initializers listed as graph inputs can be overridden at run time: never baked, never dropped.
        self.graph_inputs = {i.name for i in self.graph.input}
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
        self.types = {init.name: init.data_type for init in self.graph.initializer}
        try:
            inferred = onnx.shape_inference.infer_shapes(without_weight_values(self.model), strict_mode=False)
        except Exception:  # noqa: BLE001 - contrib ops: inference is best effort, K is checked below
            inferred = self.model
        for info in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
            dims = info.type.tensor_type.shape.dim
            shapes.setdefault(info.name, [d.dim_value if d.HasField("dim_value") else None for d in dims])
            if info.type.tensor_type.elem_type:
                self.types.setdefault(info.name, info.type.tensor_type.elem_type)
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
            if node.op_type == "MatMulInteger" and self._on_u8_kernel(node):
                matmuls.append({"node": node.name, "method": self._u8_weights(node, nodes)})
            elif node.op_type == "MatMulInteger":
                chunks = self._matmul_integer(node, shapes, nodes)
                matmuls.append({"node": node.name, "method": "float-chunks", "k_chunks": chunks})
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
        self._drop_unused(set(self.as_u8))
        return {"matmul_integer": matmuls, "dequantize_linear": dequantized, **self.config.describe()}

    def _drop_unused(self, names: set[str]) -> None:
        """Remove the initializers of `names` nothing reads any more (s8 weights whose u8 twin
        replaced them), so the rewritten model does not carry both."""
        read = _read_names(self.graph) | {out.name for out in self.graph.output}
        keep = [init for init in self.graph.initializer
                if init.name not in names or init.name in read or init.name in self.graph_inputs]
        if len(keep) < len(self.graph.initializer):
            del self.graph.initializer[:]
            self.graph.initializer.extend(keep)

    def _on_u8_kernel(self, node, weight_types=None) -> bool:
        """u8 activations and 8-bit weights (`weight_types`: s8 or u8 before the rewrite), and
        the u8 x u8 kernel measured exact here. By the element types as the graph had them or
        as this pass made them (initializers' data types, Casts' `to`)."""
        from onnx import TensorProto

        def elem(name: str) -> int | None:
            return self.made_types.get(name, self.types.get(name))

        b_zp = _optional_input(node, 3)
        return (self.config.u8_weights and node.op_type == "MatMulInteger"
                and elem(node.input[0]) == TensorProto.UINT8
                and elem(node.input[1]) in (weight_types or (TensorProto.INT8, TensorProto.UINT8))
                and (b_zp is None or elem(b_zp) == elem(node.input[1])))

    def on_u8_kernel(self, node) -> bool:
        """Postcondition helper: `node` of the result is a u8 x u8 MatMulInteger."""
        from onnx import TensorProto

        return self._on_u8_kernel(node, (TensorProto.UINT8,))

    def _u8_weights(self, node, nodes: list) -> str:
        """MatMulInteger(A, B, a_zp, b_zp) with s8 B -> the same with B + 128 and b_zp + 128 as
        u8: (b + 128) - (zp + 128) = b - zp, so every integer sum is the target's."""
        from onnx import TensorProto, helper

        b = node.input[1]
        if self.types.get(b) == TensorProto.UINT8:
            nodes.append(node)  # already on the u8 x u8 kernel
            return "u8-integer-gemm"
        b_zp = _optional_input(node, 3)
        a_zp = _optional_input(node, 2) or ""
        if b_zp:
            zp_u8 = self._shifted(b_zp, nodes)
        else:
            zp_u8 = self._const("b_zp_u8", np.array(128, np.uint8))
            self.made_types[zp_u8] = self.new_inits[-1].data_type
        inputs = [node.input[0], self._shifted(b, nodes), a_zp, zp_u8]
        nodes.append(helper.make_node("MatMulInteger", inputs, list(node.output), name=node.name))
        return "u8-integer-gemm"

    def _shifted(self, name: str, nodes: list) -> str:
        """The u8 tensor s + 128 of the s8 tensor `name`: computed here for a constant, else by
        Cast/Add/Cast nodes (onnxruntime folds them when the weight is computed from constants,
        e.g. unpacked 4-bit codes)."""
        from onnx import TensorProto, helper

        if name in self.as_u8:
            return self.as_u8[name]
        values = None if name in self.graph_inputs else self._constant_array(name)
        if values is not None:
            shifted = self._const(name + "_u8", (values.astype(np.int16) + 128).astype(np.uint8))
            self.made_types[shifted] = self.new_inits[-1].data_type
        else:
            wide, added, shifted = self._name(name + "_i32"), self._name(name + "_i32p"), self._name(name + "_u8")
            nodes.append(helper.make_node("Cast", [name], [wide], to=TensorProto.INT32, name=self._name("cast")))
            nodes.append(helper.make_node("Add", [wide, self._const("u8_offset", np.array(128, np.int32))], [added],
                                          name=self._name("add")))
            nodes.append(helper.make_node("Cast", [added], [shifted], to=TensorProto.UINT8, name=self._name("cast")))
            self.made_types[shifted] = nodes[-1].attribute[0].i
        self.as_u8[name] = shifted
        return shifted

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
        a_zp, b_zp = _optional_input(node, 2), _optional_input(node, 3)
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
        zero_point = _optional_input(node, 2)
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

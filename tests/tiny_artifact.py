"""A loadable artifact directory built by hand in milliseconds: one FP32 ONNX graph whose weights
are in an external data file (as edge-convert writes them), a golden sample, a manifest; no
tokenizer, no conversion. For tests of how load() opens files and backends (run() works, embed()
needs a tokenizer)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge_runtime._manifest import file_sha256

WIDTH = 8
IDS = np.array([[1, 2, 3], [4, 5, 0]], np.int64)


def _file(root: Path, name: str) -> dict:
    path = root / name
    return {"path": name, "sha256": file_sha256(path), "bytes": path.stat().st_size}


def outputs(ids: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """What the graph computes: ids x weights, one WIDTH-wide row per token."""
    return ids.astype(np.float32)[..., None] * _weights(scale)


def _weights(scale: float) -> np.ndarray:
    return (np.arange(1, WIDTH + 1, dtype=np.float32) * scale).astype(np.float32)


def build(root: Path, scale: float = 1.0, runtime: dict | None = None) -> dict:
    """Write the directory at `root` (weights times `scale`: another scale, other hashes) and
    return its manifest. `runtime`: the manifest's runtime section (default: the CPU provider)."""
    root.mkdir(parents=True, exist_ok=True)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])
    shape = ["batch", "sequence", WIDTH]
    out = helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, shape)
    nodes = [  # the axis a Constant: shape inference cannot read an external initializer
        helper.make_node("Constant", [], ["axis"], value=numpy_helper.from_array(np.int64([-1]))),
        helper.make_node("Cast", ["input_ids"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["f", "axis"], ["col"]),
        helper.make_node("Mul", ["col", "w"], ["last_hidden_state"]),
    ]
    inits = [numpy_helper.from_array(_weights(scale), "w")]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [ids], [out], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, root / "onnx-fp32.onnx", save_as_external_data=True,
              all_tensors_to_one_file=True, location="onnx-fp32.onnx.data", size_threshold=0)
    (root / "golden").mkdir(exist_ok=True)
    np.savez(root / "golden" / "onnx-fp32.npz", **{"input:input_ids": IDS,
                                                  "output:last_hidden_state": outputs(IDS, scale)})
    golden = _file(root, "golden/onnx-fp32.npz")
    golden["tolerance"] = {"cosine_min": 0.999999, "rel_l2_max": 1e-4}
    manifest = {
        "schema_version": 1, "target": {"id": "x86-avx2"}, "source": {"name": "tiny-by-hand"},
        "task": "feature-extraction",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
        "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": shape}],
        "runtime": runtime or {"backends": [{"name": "onnxruntime",
                                             "execution_providers": ["CPUExecutionProvider"]}]},
        "artifacts": [{"name": "onnx-fp32", "format": "onnx", "precision": "fp32",
                       "metrics": {"cosine_mean": 1.0}, "min_runtime": {"onnxruntime": "1.17"},
                       "files": [_file(root, "onnx-fp32.onnx"), _file(root, "onnx-fp32.onnx.data")],
                       "golden": golden}],
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest

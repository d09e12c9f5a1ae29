"""The manifest's runtime settings reach onnxruntime's session options (issue 9: `threads.inter_op`
was recorded in every manifest and never read)."""

from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edge_runtime._model import _backend_options
from edge_runtime.backends.onnx import OnnxSession


def _runtime(threads) -> dict:
    return {
        "backends": [{"name": "onnxruntime", "execution_providers": ["CPUExecutionProvider"]}],
        "graph_optimization_level": "all",
        **({} if threads is None else {"threads": threads}),
    }


@pytest.mark.parametrize(
    "threads, want",
    [({"intra_op": 2, "inter_op": 1}, 1), ({"intra_op": 2, "inter_op": 3}, 3), (None, 1),
     ({"inter_op": 0}, 1), ({"inter_op": "2"}, 1), ({"inter_op": True}, 1)],
)
def test_inter_op_comes_from_the_manifest(threads, want):
    assert _backend_options({"runtime": _runtime(threads)}, "onnx")["inter_op_threads"] == want


@pytest.mark.parametrize("inter_op, mode", [(1, ort.ExecutionMode.ORT_SEQUENTIAL), (2, ort.ExecutionMode.ORT_PARALLEL)])
def test_inter_op_sets_the_session(tmp_path, inter_op, mode):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    session = OnnxSession(path, threads=1, inter_op_threads=inter_op)
    options = session._session.get_session_options()
    assert options.inter_op_num_threads == inter_op
    assert options.execution_mode == mode


def test_a_file_onnxruntime_cannot_load_is_a_model_load_error(tmp_path):
    """Installed backend, unloadable file: ModelLoadError (still a BackendUnavailableError, so
    load() falls back to the next artifact as before), naming the file."""
    from edge_runtime import BackendUnavailableError, ModelLoadError

    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not an onnx model")
    with pytest.raises(ModelLoadError, match=r"could not load broken\.onnx") as caught:
        OnnxSession(path, threads=1)
    assert isinstance(caught.value, BackendUnavailableError)


def test_device_cache_and_its_older_name(tmp_path):
    """load(device_cache=...) is the name; weight_cache= (older) still works; both differing is
    an error, not a silent choice."""
    import edge_runtime
    from edge_runtime import InputError

    with pytest.raises(InputError, match="device_cache or its older name weight_cache"):
        edge_runtime.load(tmp_path, device_cache=tmp_path / "a", weight_cache=tmp_path / "b")

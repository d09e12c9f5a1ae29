"""The FP32 TFLite export in a second process (converters/tflite/background.py): the same file as
in-process, the same refusals, and a dead or abandoned child never takes the conversion down."""

from __future__ import annotations

import hashlib

import pytest

from converters._errors import ConversionError
from converters.inputs.source import load_source
from converters.tflite.background import BackgroundExport
from converters.tflite.export import TfliteExportConfig, export_tflite

CONFIG = TfliteExportConfig(buckets=(16, 32))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_the_background_export_writes_the_in_process_file(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    source = load_source(model)
    here = export_tflite(source, tmp_path / "here.tflite", CONFIG)
    background = BackgroundExport(model, source.task, source.weights_sha256, tmp_path / "there.tflite", CONFIG)
    there, why = background.result()
    assert why == "" and there is not None
    assert _sha(tmp_path / "there.tflite") == _sha(tmp_path / "here.tflite")
    for key in ("signatures", "input_names", "output_names", "op_counts", "bytes"):
        assert there[key] == here[key]


def test_a_refusal_comes_back_as_the_in_process_error(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    source = load_source(model)
    too_long = TfliteExportConfig(buckets=(source.max_length + 1,))
    with pytest.raises(ConversionError) as here:
        export_tflite(source, tmp_path / "here.tflite", too_long)
    background = BackgroundExport(model, source.task, source.weights_sha256, tmp_path / "there.tflite", too_long)
    with pytest.raises(ConversionError) as there:
        background.result()
    assert str(there.value) == str(here.value) and "no TFLite bucket fits" in str(there.value)


def test_other_weights_than_the_conversions_are_refused(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    background = BackgroundExport(model, "feature-extraction", "0" * 64, tmp_path / "x.tflite", CONFIG)
    with pytest.raises(ConversionError, match=r"weights changed during the conversion"):
        background.result()
    assert not (tmp_path / "x.tflite").exists()


def test_a_child_that_dies_leaves_the_export_to_the_caller(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    background = BackgroundExport(model, "feature-extraction", "0" * 64, tmp_path / "x.tflite", CONFIG)
    background._process.kill()
    info, why = background.result()
    assert info is None and "without an answer" in why and "exit code -9" in why
    assert background.result() == (None, why)  # asked again: the same answer, no hang


def test_stop_ends_a_running_child(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    background = BackgroundExport(model, "feature-extraction", "0" * 64, tmp_path / "x.tflite", CONFIG)
    assert background._process.is_alive()
    background.stop()
    assert not background._process.is_alive()
    background.stop()  # twice is harmless (a conversion's cleanup after a failure)


def _shared(model, tmp_path):
    from converters._shared import SharedInputs

    return SharedInputs({"model": model}, load_source(model), texts=None, work=tmp_path)


def test_a_conversion_starts_each_export_once_and_ends_it_when_closed(tiny_model_factory, tmp_path):
    from targets import load_profile

    shared, said = _shared(tiny_model_factory("bert", "feature-extraction"), tmp_path), []
    profiles = [load_profile(t) for t in ("x86-avx2", "rpi4", "rpi5")]  # ONNX only, then twice the same buckets
    shared.start_tflite_exports(profiles, said.append)
    running = [v for v in shared.cache.values() if isinstance(v, BackgroundExport)]
    assert len(running) == 1 and len(said) == 1 and "second, low-priority process" in said[0]
    shared.start_tflite_exports(profiles[1:], said.append)  # convert() of one of them: already running
    assert len(said) == 1
    shared.close()
    assert not running[0]._process.is_alive() and not shared.cache


def test_without_room_for_a_second_process_the_export_stays_in_process(tiny_model_factory, tmp_path, monkeypatch):
    import converters._shared as shared_module
    from targets import load_profile

    monkeypatch.setattr(shared_module, "background_unavailable", lambda: "one CPU: no idle core to export on")
    shared, said = _shared(tiny_model_factory("bert", "feature-extraction"), tmp_path), []
    shared.start_tflite_exports([load_profile("rpi4")], said.append)
    shared.start_tflite_exports([load_profile("rpi4")], said.append)
    assert said == ["the TFLite export will run in this process, after the ONNX artifacts "
                    "(one CPU: no idle core to export on)"]
    assert list(shared.cache.values()) == [None]  # _tflite_fp32 finds no child and exports itself

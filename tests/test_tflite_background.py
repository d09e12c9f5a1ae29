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
    stages: list[tuple[int, int]] = []
    here = export_tflite(source, tmp_path / "here.tflite", CONFIG, lambda done, total: stages.append((done, total)))
    # litert-torch's stages, told as a count: per signature an export and a lowering, then FX
    # passes, merging, the converter's passes and the write
    assert stages == [(k, 8) for k in range(9)]
    background = BackgroundExport.start(model, source.task, source.weights_sha256, tmp_path / "there.tflite", CONFIG)
    followed: list[tuple[int, int]] = []
    there, why = background.result(lambda done, total: followed.append((done, total)))
    assert why == "" and there is not None
    # the child's stages, followed from wherever it was when the wait began, up to the last
    assert followed and followed[-1] == (8, 8) and followed == sorted(followed)
    assert _sha(tmp_path / "there.tflite") == _sha(tmp_path / "here.tflite")
    for key in ("signatures", "input_names", "output_names", "op_counts", "bytes"):
        assert there[key] == here[key]


def test_litert_torch_stages_are_counted_through_wrapped_lines():
    """litert-torch prints its progress tree through rich, wrapped at the console's width: a
    stage's line may continue on the next (a long output path, a narrow console). Only the
    top-level stages count, however the text arrives; the text is kept whole for errors."""
    from converters.tflite.export import _StageTap

    text = (
        "(00:00) [START] LiteRT-Torch Convert\n"
        "(00:03) [ DONE] LiteRT-Torch Convert > Torch Export: seq16 > ExportedProgram Run\nDecompositions (+00:02)\n"
        "(00:03) [ DONE] LiteRT-Torch Convert > Torch Export: seq16 (+00:03)\n"
        "(00:08) [ DONE] LiteRT-Torch Convert > Lower to MLIR: seq16 > Create MLIR Module\n(+00:00)\n"
        "(00:13) [ DONE] LiteRT-Torch Convert > Run LiteRT Converter\nPasses (+00:01)\n"
        "(00:13) [ DONE] LiteRT-Torch Convert (+00:13)\n"
        "(00:00) [START] Write Model to /tmp/a/b.tflite\n"
        "(00:00) [ DONE] Write Model to\n/tmp/a/b.tflite (+00:00)\n"
        "(00:00) [ DONE] LiteRT-Torch Convert > More Stages Than Expected (+00:00)\n"
    )
    told: list[tuple[int, int]] = []
    tap = _StageTap(4, lambda done, total: told.append((done, total)))
    for start in range(0, len(text), 17):  # in pieces, as a stream is written
        tap.write(text[start : start + 17])
    assert told == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]  # never past the total
    assert tap.getvalue() == text


def test_only_the_last_stage_sent_before_the_wait_is_told(monkeypatch):
    """Stages the child finished while the conversion was busy elsewhere are not replayed: the
    wait starts from the latest, then tells each one as it comes."""
    import multiprocessing

    background = BackgroundExport.__new__(BackgroundExport)
    background._answers, sender = multiprocessing.Pipe(duplex=False)
    for done in range(4):
        sender.send(("stage", done, 8))
    told: list[tuple[int, int]] = []

    def answer_later(done, total):
        told.append((done, total))
        if len(told) == 1:  # the child goes on while the parent waits
            sender.send(("stage", 4, 8))
            sender.send(("done", {"bytes": 1}))

    assert background._wait(answer_later) == ("done", {"bytes": 1})
    assert told == [(3, 8), (4, 8)]


def test_a_refusal_comes_back_as_the_in_process_error(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    source = load_source(model)
    too_long = TfliteExportConfig(buckets=(source.max_length + 1,))
    with pytest.raises(ConversionError) as here:
        export_tflite(source, tmp_path / "here.tflite", too_long)
    background = BackgroundExport.start(model, source.task, source.weights_sha256, tmp_path / "there.tflite", too_long)
    with pytest.raises(ConversionError) as there:
        background.result()
    assert str(there.value) == str(here.value) and "no TFLite bucket fits" in str(there.value)


def test_other_weights_than_the_conversions_are_refused(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    background = BackgroundExport.start(model, "feature-extraction", "0" * 64, tmp_path / "x.tflite", CONFIG)
    with pytest.raises(ConversionError, match=r"weights changed during the conversion"):
        background.result()
    assert not (tmp_path / "x.tflite").exists()


def test_a_child_that_dies_leaves_the_export_to_the_caller(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    background = BackgroundExport.start(model, "feature-extraction", "0" * 64, tmp_path / "x.tflite", CONFIG)
    background._process.kill()
    info, why = background.result()
    assert info is None and "without an answer" in why and "exit code -9" in why
    assert background.result() == (None, why)  # asked again: the same answer, no hang


def test_stop_ends_a_running_child(tiny_model_factory, tmp_path):
    model = tiny_model_factory("bert", "feature-extraction")
    background = BackgroundExport.start(model, "feature-extraction", "0" * 64, tmp_path / "x.tflite", CONFIG)
    assert background._process.is_alive()
    background.stop()
    assert not background._process.is_alive()
    background.stop()  # twice is harmless (a conversion's cleanup after a failure)


def test_a_child_started_early_waits_for_its_request_and_ends_without_one(tiny_model_factory, tmp_path):
    """Started before the conversion has loaded the model: the child loads its own copy and
    waits; no request (the export was not needed, or the conversion failed first) ends it with
    nothing written. Asking for the result before the request is a programming error, not a hang."""
    model = tiny_model_factory("bert", "feature-extraction")
    background = BackgroundExport(model, None)  # the task as edge-convert resolves it: the child does the same
    with pytest.raises(RuntimeError, match="before request"):
        background.result()
    background._requests.close()  # the parent needs no export: the child returns
    background._process.join(timeout=120)
    assert background._process.exitcode == 0
    assert not any(tmp_path.iterdir())
    background.stop()  # harmless after


@pytest.mark.slow  # a spawned child loads torch and exports
def test_the_early_child_of_a_load_is_the_one_that_exports(tiny_model_factory, tmp_path):
    """SharedInputs.load with the run's profiles starts the second process before the model
    loads; start_tflite_exports hands it the export (no second child) and the file is the
    in-process one. Profiles without TFLite start none."""
    from converters._shared import SharedInputs
    from converters.options import ConvertConfig
    from targets import load_profile

    model = tiny_model_factory("bert", "feature-extraction")
    config = ConvertConfig(model=model, target="rpi4", out=tmp_path / "out")
    said: list[str] = []
    shared = SharedInputs.load(config, tmp_path / "work", said.append, [load_profile("rpi4")])
    try:
        early = shared._early
        assert isinstance(early, BackgroundExport) and said[0].startswith("starting a second, low-priority process")
        assert said.index(said[0]) < said.index("loading the source model")
        shared.start_tflite_exports([load_profile("rpi4")], said.append)
        assert shared._early is None
        assert [v for v in shared.cache.values() if isinstance(v, BackgroundExport)] == [early]
        info, why = early.result()
        assert why == "" and info is not None
        here = export_tflite(shared.source, tmp_path / "here.tflite",
                             TfliteExportConfig(buckets=next(k for k in shared.cache if k[0] == "tflite-export-background")[1]))
        there = next((tmp_path / "work").rglob("export.tflite"))
        assert _sha(there) == _sha(tmp_path / "here.tflite") and here["bytes"] == info["bytes"]
    finally:
        shared.close()
    onnx_only = SharedInputs.load(config, tmp_path / "work2", said.append, [load_profile("x86-avx2")])
    assert onnx_only._early is None
    onnx_only.close()


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

"""Defects from the edge-convert review (rev_convert, 2026-12-05), items 1, 3 and 5.

1. A Ctrl-C / SIGTERM landing while a finished result is put in place (the renames and the removal
   of the previous output) said "nothing was written" although the new output was in place, and
   could leave the previous output beside it as `.NAME.partial-XXXX.old`.
3. A single-target --out inside an existing output was accepted, breaking that output's hashes
   and signature.
5. `edge-run DIR --info` did not say what the model outputs (labels, pooling, max_length).

The interruptions are deterministic: a real signal is raised in this process (signal.raise_signal,
delivered to the handler at once) from a patched step, right after or before the exact operation.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import tiny_artifact
from click.testing import CliRunner

import converters
from converters import ConversionError
from converters.cli import main as edge_convert
from converters.packaging import package
from edge_runtime._manifest import file_sha256
from edge_runtime._sigterm import Terminated, sigterm_as_ctrl_c
from edge_runtime.cli import main as edge_run

STOPS = [(signal.SIGINT, KeyboardInterrupt, 130), (signal.SIGTERM, Terminated, 143)]


def _earlier_output(out: Path) -> None:
    out.mkdir(parents=True)
    package.write_manifest(out, {"schema_version": 1, "artifacts": [], "run": "earlier"})


def _run(out: Path) -> str | None:
    try:
        return json.loads((out / "manifest.json").read_text()).get("run")
    except FileNotFoundError:
        return None


def _signal_at(monkeypatch, signum: int, when) -> list[str]:
    """os.rename patched: right after the rename `when` picks, `signum` is raised in this
    process. Returns the log of renames."""
    real_rename = os.rename
    done: list[str] = []

    def rename(source, target):
        moment = when(Path(source), Path(target))
        real_rename(source, target)
        done.append(f"{Path(source).name} -> {Path(target).name}")
        if moment == "after":
            signal.raise_signal(signum)

    monkeypatch.setattr(os, "rename", rename)
    return done


def _new_in_place(source: Path, target: Path) -> str | None:  # stage -> out
    return "after" if ".partial-" in source.name and not source.name.endswith(".old") else None


def _old_moved_aside(source: Path, target: Path) -> str | None:  # out -> .out.partial-X.old
    return "after" if target.name.endswith(".old") else None


# --- 1. an interruption while the result is put in place ---------------------------------


@pytest.mark.parametrize(("signum", "raised", "status"), STOPS)
@pytest.mark.parametrize("when", [_new_in_place, _old_moved_aside], ids=["after-new-in-place", "after-old-aside"])
def test_a_stop_signal_while_publishing_finishes_the_publish_and_leaves_no_old_copy(
        tmp_path, monkeypatch, default_signals, signum, raised, status, when):
    out = tmp_path / "result"
    _earlier_output(out)
    renames = _signal_at(monkeypatch, signum, when)
    with pytest.raises(raised), sigterm_as_ctrl_c(), package.staging_dir(out, force=True) as stage:
        package.write_manifest(stage, {"schema_version": 1, "artifacts": [], "run": "new"})
    assert len(renames) == 2, renames  # the previous output aside, the new one in
    assert _run(out) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"], "no .old copy, no staging directory left"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


@pytest.mark.parametrize(("signum", "raised", "status"), STOPS)
def test_a_stop_signal_held_while_a_rename_fails_leaves_the_failures_message(
        tmp_path, monkeypatch, default_signals, signum, raised, status):
    """The rename of the new output fails after the signal arrived: the error that says where the
    result was kept reaches the user; the held signal used to replace it with "interrupted"."""
    out = tmp_path / "result"
    _earlier_output(out)
    real_rename = os.rename

    def rename(source, target):
        if Path(target).name == "result" and not Path(source).name.endswith(".old"):  # stage -> out
            signal.raise_signal(signum)
            raise OSError(18, "Invalid cross-device link")
        real_rename(source, target)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(ConversionError, match=r"it is kept in .*result\.edge-convert-"), sigterm_as_ctrl_c(), \
            package.staging_dir(out, force=True) as stage:
        package.write_manifest(stage, {"schema_version": 1, "artifacts": [], "run": "new"})
    assert _run(out) == "earlier"  # the earlier output back in place
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("result.edge-convert-")]
    assert len(kept) == 1 and _run(kept[0]) == "new"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


def _signal_at_the_last_check(monkeypatch, signum: int) -> None:
    """package.check_output patched: its second call (staging_dir's re-check of an existing `out`
    just before the renames) raises `signum` in this process once it has checked."""
    real_check = package.check_output
    calls = []

    def check_then_stop(*args, **kwargs):
        real_check(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            signal.raise_signal(signum)

    monkeypatch.setattr(package, "check_output", check_then_stop)


def test_a_stop_signal_before_the_rename_leaves_the_previous_output_as_it_was(tmp_path, monkeypatch,
                                                                               default_signals):
    out = tmp_path / "result"
    _earlier_output(out)
    _signal_at_the_last_check(monkeypatch, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), sigterm_as_ctrl_c(), package.staging_dir(out, force=True) as stage:
        package.write_manifest(stage, {"schema_version": 1, "artifacts": [], "run": "new"})
    assert _run(out) == "earlier" and sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def _fake_convert(monkeypatch, signum: int | None, when, rmtree_fails: bool = False):
    """converters.convert replaced by one that only packages a tiny artifact through staging_dir,
    with `signum` raised at `when` (see _signal_at)."""
    def convert(config, progress=lambda message: None, *args, **kwargs):
        progress("writing manifest.json")
        with package.staging_dir(config.out, config.force, config.inputs()) as stage:
            tiny_artifact.build(stage, scale=2.0)
            manifest = json.loads((stage / "manifest.json").read_text())
            package.write_manifest(stage, {**manifest, "run": "new"})
        raise AssertionError("the signal should have stopped the run")

    monkeypatch.setattr(converters, "convert", convert)
    if signum is not None:
        _signal_at(monkeypatch, signum, when)
    if rmtree_fails:  # e.g. a file of the previous output someone else owns
        real_rmtree = shutil.rmtree
        monkeypatch.setattr(shutil, "rmtree", lambda path, *a, **k: None if str(path).endswith(".old")
                            else real_rmtree(path, *a, **k))


def _convert_cli(out: Path, *extra: str):
    return CliRunner().invoke(edge_convert, ["--target", "x86-avx2", "--out", str(out), "--quiet", *extra])


@pytest.mark.parametrize(("signum", "raised", "status"), STOPS)
def test_edge_convert_interrupted_after_the_rename_says_the_new_output_is_in_place(
        tmp_path, monkeypatch, default_signals, signum, raised, status):
    out = tmp_path / "result"
    tiny_artifact.build(out)
    _fake_convert(monkeypatch, signum, _new_in_place)
    result = _convert_cli(out, "--force")
    assert result.exit_code == status, result.output
    assert "nothing was written" not in result.output
    assert f"{out} holds the new, complete output" in result.output
    assert "the previous output it replaced was removed" in result.output
    assert _run(out) == "new"
    assert not list(tmp_path.glob(".result.partial-*")), "no .old copy left"


def test_edge_convert_names_a_previous_output_it_could_not_remove(tmp_path, monkeypatch, default_signals):
    out = tmp_path / "result"
    tiny_artifact.build(out)
    _fake_convert(monkeypatch, signal.SIGINT, _new_in_place, rmtree_fails=True)
    result = _convert_cli(out, "--force")
    left = list(tmp_path.glob(".result.partial-*.old"))
    assert result.exit_code == 130 and len(left) == 1, result.output
    assert f"{out} holds the new, complete output" in result.output
    assert f"the previous output could not be removed: it is left in {left[0]}" in result.output


def test_edge_convert_interrupted_before_the_rename_says_the_previous_output_is_kept(
        tmp_path, monkeypatch, default_signals):
    out = tmp_path / "result"
    tiny_artifact.build(out)
    _fake_convert(monkeypatch, None, None)
    _signal_at_the_last_check(monkeypatch, signal.SIGTERM)
    result = _convert_cli(out, "--force")
    assert result.exit_code == 143, result.output
    assert f"interrupted: nothing was written; {out} still holds the previous output, unchanged" in result.output
    assert _run(out) is None and sorted(p.name for p in tmp_path.iterdir()) == ["result"]


def test_edge_convert_interrupted_into_a_new_directory_says_it_is_complete(tmp_path, monkeypatch,
                                                                           default_signals):
    out = tmp_path / "fresh"
    _fake_convert(monkeypatch, signal.SIGINT, _new_in_place)
    result = _convert_cli(out)
    assert result.exit_code == 130, result.output
    assert f"{out} holds the new, complete output" in result.output and "previous" not in result.output


def test_an_interrupted_single_target_message_checks_what_is_there(tmp_path):
    from converters.cli import _identity, _interrupted

    out = tmp_path / "result"
    assert _interrupted(out, None, 0.0, was=None) == f"interrupted: nothing was written to {out}"
    tiny_artifact.build(out)
    was = _identity(out)
    assert "still holds the previous output, unchanged" in _interrupted(out, None, 0.0, was=was)
    replaced = tmp_path / "new"
    tiny_artifact.build(replaced, scale=2.0)
    shutil.rmtree(out)
    os.rename(replaced, out)
    assert "holds the new, complete output" in _interrupted(out, None, 0.0, was=was)


# --- 3. --out inside an existing output -------------------------------------------------------


def _killed_between_the_renames(tmp_path: Path) -> tuple[Path, Path, dict]:
    """What SIGKILL between staging_dir's two renames leaves: OUT missing, the previous output in
    `.OUT.partial-X.old`, the unfinished result in `.OUT.partial-X` (unlocked: its process died)."""
    out = tmp_path / "out"
    manifest = tiny_artifact.build(out)
    stage = tmp_path / f"{package.staging_prefix(out)}abc"
    old = stage.with_name(stage.name + ".old")
    os.rename(out, old)
    tiny_artifact.build(stage, scale=2.0)
    return out, stage, manifest


def test_a_previous_output_a_killed_run_moved_aside_is_put_back(tmp_path):
    """A replacing run killed (SIGKILL, power loss) between moving OUT aside and renaming its result
    in left OUT missing, and the next run deleted the previous output as a leftover. Now the next
    check puts it back first: OUT is as it was before the killed run, and force is needed again."""
    out, stage, manifest = _killed_between_the_renames(tmp_path)
    with pytest.raises(ConversionError, match="already exists; pass force=True"):
        package.check_output(out, force=False)
    assert json.loads((out / "manifest.json").read_text()) == manifest  # the previous output, back
    package.remove_leftovers(out.parent, package.staging_prefix(out))
    assert not stage.exists() and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_nothing_is_put_back_while_a_live_conversion_holds_a_staging_directory(tmp_path):
    out, stage, _ = _killed_between_the_renames(tmp_path)
    held = package._lock(stage, wait=False)  # a live conversion of OUT, perhaps between its renames
    try:
        assert package.restore_interrupted(out) is None and not out.exists()
    finally:
        package._unlock(held)
    assert package.restore_interrupted(out) is not None and out.exists()


@pytest.mark.parametrize("inside", ["sub", "a/b/c"])
def test_an_output_inside_an_earlier_output_is_refused(tmp_path, inside):
    earlier = tmp_path / "signed"
    tiny_artifact.build(earlier)
    for force in (False, True):
        with pytest.raises(ConversionError, match=r"is inside .*signed, the output of an earlier conversion .*"
                                                  r"would break its hashes and signature"):
            package.check_output(earlier / inside, force=force)
        with pytest.raises(ConversionError, match="would break its hashes and signature"), \
                package.staging_dir(earlier / inside, force=force):
            pass
    # A web app's manifest.json is not an edge-convert output: a directory inside it is fine.
    webapp = tmp_path / "site"
    webapp.mkdir()
    (webapp / "manifest.json").write_text('{"name": "app", "icons": []}')
    package.check_output(webapp / "model", force=False)


def test_edge_convert_refuses_an_out_inside_an_output_before_any_work(tmp_path, monkeypatch):
    earlier = tmp_path / "signed"
    tiny_artifact.build(earlier)
    before = sorted(str(p.relative_to(earlier)) for p in earlier.rglob("*"))
    monkeypatch.setattr(converters, "convert", lambda *a, **k: pytest.fail("convert() was called"))
    result = _convert_cli(earlier / "sub")
    assert result.exit_code == 1, result.output
    assert "would break its hashes and signature" in result.output
    assert sorted(str(p.relative_to(earlier)) for p in earlier.rglob("*")) == before  # not even a log


# --- 5. edge-run --info says what the model outputs -------------------------------------------


def _described(tmp_path: Path, task: str, post: dict | None, labels: int = 0) -> Path:
    """A tiny artifact whose manifest describes `task` with `post`, and a tokenizer of max_length 128."""
    root = tmp_path / task
    manifest = tiny_artifact.build(root)
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    manifest["tokenizer"] = {"files": [{"path": "tokenizer/tokenizer.json",
                                        "sha256": file_sha256(root / "tokenizer" / "tokenizer.json"), "bytes": 2}],
                             "max_length": 128, "pad_token_id": 0, "class": "BertTokenizer"}
    manifest["task"] = task
    if post is not None:
        manifest["postprocess"] = post
    if labels:
        manifest["outputs"] = [{"name": "logits", "dtype": "float32", "shape": ["batch", labels]}]
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _info(root: Path, capsys, *extra: str) -> str:
    assert edge_run([str(root), "--info", *extra]) == 0
    return capsys.readouterr().out


def test_edge_run_info_shows_an_embedding_models_pooling_normalization_and_length(tmp_path, capsys):
    root = _described(tmp_path, "feature-extraction", {"pooling": "cls", "normalize": True,
                                                       "output": "last_hidden_state", "source": "sentence-transformers"})
    text = _info(root, capsys)
    assert f"{tiny_artifact.WIDTH}-dimensional embedding per text" in text
    assert "cls pooling, normalized to length 1" in text and "up to 128 tokens" in text
    described = json.loads(_info(root, capsys, "--json"))["produces"]
    assert described == {"task": "feature-extraction", "max_length": 128, "output": "last_hidden_state",
                         "dimension": tiny_artifact.WIDTH, "pooling": "cls", "normalize": True}


def test_edge_run_info_shows_a_classifiers_labels(tmp_path, capsys):
    root = _described(tmp_path, "text-classification", {"labels": ["negative", "positive"], "output": "logits"},
                      labels=2)
    text = _info(root, capsys)
    assert "one of 2 labels per text" in text and "0 negative, 1 positive" in text and "up to 128 tokens" in text
    described = json.loads(_info(root, capsys, "--json"))["produces"]
    assert described == {"task": "text-classification", "max_length": 128, "output": "logits",
                         "labels": ["negative", "positive"]}


def test_edge_run_info_cuts_a_long_label_list_in_text_but_not_in_json(tmp_path, capsys):
    names = [f"class_{i}" for i in range(500)]
    root = _described(tmp_path, "token-classification", {"labels": names, "output": "logits"}, labels=500)
    text = _info(root, capsys)
    line = next(line for line in text.splitlines() if "labels per token" in line)
    assert "one of 500 labels per token" in line and "0 class_0" in line and "499 class_499" in line
    assert "class_250" not in line and "490 more" in line and len(line) < 400
    assert json.loads(_info(root, capsys, "--json"))["produces"]["labels"] == names


def test_edge_run_info_without_postprocess_says_the_raw_outputs(tmp_path, capsys):
    root = tmp_path / "raw"
    tiny_artifact.build(root)
    text = _info(root, capsys)
    assert "raw tensors (last_hidden_state)" in text
    produced = json.loads(_info(root, capsys, "--json"))["produces"]
    assert produced == {"task": "feature-extraction", "max_length": None, "output": None,
                        "raw_outputs": ["last_hidden_state"]}

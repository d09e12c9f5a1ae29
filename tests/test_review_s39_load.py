"""Reviewed in session 39 (a user of the Python API and the CLIs): load() never writes into the
artifact directory, also when told to keep its device cache there; edge-run's plain output
shows a label as it is written."""

from __future__ import annotations

import pytest
import tiny_artifact

import edge_runtime


@pytest.mark.parametrize("inside", [".cache", "."])
def test_a_device_cache_inside_the_artifact_directory_is_refused(tmp_path, inside):
    out = tmp_path / "art"
    tiny_artifact.build(out)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(edge_runtime.InputError, match="inside the artifact directory .* never writes"):
        edge_runtime.load(out, device_cache=out / inside)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # nothing written there


def test_the_default_cache_inside_the_artifact_directory_names_xdg_cache_home(tmp_path, monkeypatch):
    out = tmp_path / "art"
    tiny_artifact.build(out)
    monkeypatch.setenv("XDG_CACHE_HOME", str(out / "cache"))
    with pytest.raises(edge_runtime.InputError, match=r"the default device cache \(XDG_CACHE_HOME\)"):
        edge_runtime.load(out)
    edge_runtime.load(out, device_cache=False)  # no cache: nothing to refuse


def test_a_device_cache_beside_the_artifact_directory_is_used(tmp_path):
    out = tmp_path / "art"
    tiny_artifact.build(out)
    edge_runtime.load(out, device_cache=tmp_path / "art-cache")  # "art-cache" starts like "art"
    assert (tmp_path / "art-cache").is_dir()


def test_model_memory_budget_mb_set_later_is_checked_like_loads(tmp_path):
    """Documented as settable, it was not checked: "x" failed at the next call with a bare
    ValueError, NaN / 0 / -5 silently ran one row per backend call."""
    import numpy as np

    out = tmp_path / "art"
    tiny_artifact.build(out)
    model = edge_runtime.load(out, device_cache=False)
    feeds = {"input_ids": np.ones((2, 4), np.int64)}
    for bad in ("x", float("nan"), 0, -5, True):
        model.memory_budget_mb = bad
        with pytest.raises(edge_runtime.InputError, match=r"Model\.memory_budget_mb must be a finite number"):
            model.run(feeds)
    model.memory_budget_mb = np.float32(64)  # numpy's numbers are numbers
    model.run(feeds)


def test_numpy_scalars_are_taken_where_python_ones_are(tmp_path):
    import numpy as np

    out = tmp_path / "art"
    tiny_artifact.build(out)
    edge_runtime.load(out, device_cache=False, spinning=np.bool_(True), tune=np.bool_(False),
                      memory_budget_mb=np.int64(100))

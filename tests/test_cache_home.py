"""Where the device caches go when the environment is odd: a relative XDG_CACHE_HOME is ignored
(the XDG spec), a missing home directory is never created (the caches go without, as when they
are unwritable), and a directory whose path is not UTF-8 is refused by name, not by a traceback.
No artifacts needed."""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace

import onnxruntime
import pytest

from edge_runtime import _tuning_cache
from edge_runtime._errors import ModelLoadError
from edge_runtime._verified import Verifications
from edge_runtime.backends import onnx
from edge_runtime.backends._cache import default_cache_dir


def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # would follow the working directory
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "edge_runtime"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edge_runtime"


@pytest.mark.parametrize("home", ["missing", "relative"])
def test_a_missing_home_is_not_created_for_a_cache(tmp_path, monkeypatch, caplog, home):
    """A service account without a home directory: each cache goes without, with a warning
    (as for an unwritable one), and no directory appears: not the home, not ./home/.cache."""
    monkeypatch.chdir(tmp_path)  # a relative HOME would land here
    monkeypatch.setenv("HOME", str(tmp_path / "home") if home == "missing" else "home")
    monkeypatch.delenv("XDG_CACHE_HOME")
    before = sorted(tmp_path.iterdir())
    with caplog.at_level(logging.INFO, logger="edge_runtime"):
        assert not _tuning_cache.write_atomic(_tuning_cache.cache_file(tmp_path), {"a": 1})
        Verifications(default_cache_dir())._write(default_cache_dir() / "verified" / "files.json", {})
        entry = default_cache_dir() / "onnxruntime" / "entry"
        assert onnx._start_entry(entry, SimpleNamespace()) is None
    assert sorted(tmp_path.iterdir()) == before
    assert caplog.text.count("does not exist or is not absolute; not creating") == 3, caplog.text
    assert "could not write the tuning cache" in caplog.text and "not writable" in caplog.text
    # with the home directory there, the same calls make their caches in it
    (tmp_path / "present").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "present"))
    assert _tuning_cache.write_atomic(_tuning_cache.cache_file(tmp_path), {"a": 1})


def test_onnx_names_a_path_that_is_not_utf8(tmp_path):
    model = tmp_path / os.fsdecode(b"model-\xff") / "model.onnx"
    with pytest.raises(ModelLoadError, match=r"its path is not valid UTF-8 .*rename the directory"):
        onnx._create(onnxruntime, model, onnxruntime.SessionOptions(), ["CPUExecutionProvider"])

"""edge-run and edge-serve --no-device-cache: load() with device_cache=False (docs/signing.md,
'What a signature covers')."""

from __future__ import annotations

import tiny_artifact

import edge_runtime
from edge_runtime import cli, cli_serve
from edge_runtime.serve import ServeConfig, _reload


def test_edge_run_no_device_cache(tmp_path, monkeypatch, capsys):
    tiny_artifact.build(tmp_path / "art")
    asked = []
    real = edge_runtime.load
    monkeypatch.setattr(edge_runtime, "load", lambda *a, **k: asked.append(k) or real(*a, **k))
    monkeypatch.setattr(cli, "_print_results", lambda *a: None)
    assert cli.main([str(tmp_path / "art"), "x", "--no-device-cache"]) == 0
    assert cli.main([str(tmp_path / "art"), "x"]) == 0
    assert [k["device_cache"] for k in asked] == [False, True]


def test_edge_serve_no_device_cache_reaches_every_load(tmp_path, monkeypatch):
    parsed = cli_serve._parser().parse_args([str(tmp_path), "--no-device-cache"])
    assert parsed.device_cache is False
    asked = []

    class Model:
        name, batch_dependent, threads, thread_safe = "onnx-int8", True, 2, True

        def sibling(self, threads):  # opened with the load's own settings (Model.sibling)
            asked.append({"sibling of": self, "threads": threads})
            return Model()

    monkeypatch.setattr(edge_runtime, "load", lambda *a, **k: asked.append(k) or Model())
    monkeypatch.setattr(_reload, "Served", lambda model, path, generation, lane_model: model)
    served = _reload.load_served(ServeConfig(tmp_path, device_cache=False), tmp_path, 1)
    assert asked[0]["device_cache"] is False and asked[1] == {"sibling of": served, "threads": 1}  # and its lanes

"""An `--artifact NAME` the directory does not have is the same error in every command: exit
status 1 (the directory's problem, as edge-run has always said it; 2 is for a malformed flag) and
one line naming the artifacts it does have."""

from __future__ import annotations

import json

import pytest
from test_manifest_reader import _valid  # a complete manifest over real (tiny) files

from edge_runtime import cli, cli_bench, cli_tune


@pytest.mark.parametrize(
    ("prog", "main", "extra"),
    [("edge-run", cli.main, ["a text"]), ("edge-bench", cli_bench.main, ["-q"]),
     ("edge-tune", cli_tune.main, [])],
)
def test_an_unknown_artifact_exits_1_naming_those_there_are(tmp_path, capsys, prog, main, extra):
    (tmp_path / "manifest.json").write_text(json.dumps(_valid(tmp_path)))  # one artifact: "a"
    assert main([str(tmp_path), "--artifact", "nope", *extra]) == 1
    said = capsys.readouterr()
    assert said.err == f"{prog}: error: no artifact 'nope' in {tmp_path}; it has: a\n"
    assert said.out == ""

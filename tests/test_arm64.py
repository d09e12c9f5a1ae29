"""The device wheel on emulated ARM64: tools/arm64-check on the tiny model (docs/arm64.md).

qemu-user runs an aarch64 Python with the device wheel as a Raspberry Pi 4 (Cortex-A72) and a
Pi 5 (Cortex-A76) would: every rpi4/rpi5 artifact of a tiny converted model loads with its
golden check, agrees with the x86 run, the default load and `edge-run` pick the profile's
artifact, detection names the board, and the legacy tflite-runtime 2.14 environment refuses the
per-channel INT8 TFLite artifact. The first run on a machine builds the aarch64 userland under
~/.cache/edge-runtime-arm64 (apt and PyPI downloads, about a minute); later runs reuse it.
The MiniLM run is a release check (benchmarks/results/arm64-check-minilm-rpi4.txt, -rpi5.txt).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "arm64-check"


@pytest.mark.slow
def test_arm64_check_on_the_tiny_model(tmp_path):
    if not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")):
        pytest.skip("qemu-aarch64 is not installed (apt-get install qemu-user): no ARM64 check")
    rows_file = tmp_path / "rows.json"
    done = subprocess.run(
        [sys.executable, str(TOOL), "--model", "tiny", "--json", str(rows_file)],
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    print(done.stdout)  # the table, in the test log
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-4000:]
    rows = json.loads(rows_file.read_text())
    assert rows and all(r["ok"] for r in rows)
    passed = {(r["profile"], r["env"], r["artifact"], r["check"]) for r in rows}

    for profile in ("rpi4", "rpi5"):
        assert (profile, "main", "-", "detect()") in passed
        assert (profile, "main", "(default)", "load(DIR) picks") in passed
        assert (profile, "main", "(default)", "edge-run DIR TEXT") in passed
        assert (profile, "main", "-", "no runtime INFO lines") in passed
        for name in ("onnx-fp32", "onnx-int8", "tflite-fp32", "tflite-int8"):
            assert (profile, "main", name, "load + golden") in passed
            assert any(
                p[:3] == (profile, "main", name) and p[3].startswith(("=", "golden"))
                for p in passed
            ), f"{profile} {name}: no output comparison"
    assert ("rpi4", "legacy", "tflite-int8", "refused by golden check") in passed
    assert ("rpi4", "legacy", "tflite-int8-legacy", "load + golden") in passed

    # The release blocker of issue 8: on the A72, ai-edge-litert's CompiledModel dies (SIGILL);
    # the runtime notices in its child process and runs the Interpreter instead.
    a72 = [
        r
        for r in rows
        if r["profile"] == "rpi4"
        and r["env"] == "main"
        and r["artifact"].startswith("tflite")
        and r["check"] == "load + golden"
    ]
    assert a72 and all("weight_cache unsupported" in r["detail"] for r in a72), a72
    assert any("SIGILL" in r["detail"] for r in a72), a72
    a76 = [
        r
        for r in rows
        if r["profile"] == "rpi5"
        and r["env"] == "main"
        and r["artifact"].startswith("tflite")
        and r["check"] == "load + golden"
    ]
    assert a76 and all("weight_cache created" in r["detail"] for r in a76), a76


def test_arm64_check_says_when_apt_reaches_no_mirror(tmp_path, monkeypatch):
    """apt-get update exits 0 offline (it keeps its empty lists): the tool stops there and says
    so, instead of failing later with apt's "Unable to locate package"."""
    from importlib.machinery import SourceFileLoader
    from importlib.util import module_from_spec, spec_from_loader

    spec = spec_from_loader("arm64_check", SourceFileLoader("arm64_check", str(TOOL)))
    tool = module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "arm64_check", tool)  # its dataclasses look themselves up there
    spec.loader.exec_module(tool)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apt-get"
    fake.write_text("#!/bin/sh\necho 'Err:1 http://deb.debian.org/debian bookworm InRelease'\n"
                    "echo 'W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease' >&2\n"
                    "echo \"$@\" >> \"$(dirname \"$0\")/calls\"\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(tool, "_require_tools", lambda: None)
    with pytest.raises(tool.CheckError, match="could not read the Debian package lists") as caught:
        tool.build_sysroot(tmp_path / "work")
    assert "reachable" in str(caught.value)
    assert (bin_dir / "calls").read_text().split()[:2] == ["update", "-q"]  # no install was tried
    assert len((bin_dir / "calls").read_text().splitlines()) == 1

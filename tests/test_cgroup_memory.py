"""Available memory respects the process's cgroup limit (edge_runtime/_ram.py): under systemd's
MemoryMax= or `docker --memory`, /proc/meminfo still shows the host's memory, and a batch sized
to it was OOM-killed instead of split. Recorded /proc and /sys files under a root directory (a
copy of tests/data/devices/x86-epyc-7r32, 7725 MB of RAM, 7177 MB available, plus the cgroup
files of each setup in the kernel's formats), as tests/test_device.py reads devices.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_manifest_reader import _valid  # a complete manifest over real (tiny) files

from edge_runtime import _device, _inputs, _memory, _model, _select, cli

DEVICES = Path(__file__).resolve().parent / "data" / "devices"
MiB = 2**20
HOST_AVAILABLE_MB = 7177  # the recorded device's MemAvailable
SERVICE = "system.slice/edge-serve.service"

# docs/serve.md's unit (MemoryMax=600M) as cgroup v2 shows it: 250 MiB charged, 50 MiB of it
# inactive file cache (reclaimed before the limit bites), so 400 MiB of room.
SYSTEMD_V2 = {
    "proc/self/cgroup": f"0::/{SERVICE}\n",
    f"sys/fs/cgroup/{SERVICE}/memory.max": f"{600 * MiB}\n",
    f"sys/fs/cgroup/{SERVICE}/memory.current": f"{250 * MiB}\n",
    f"sys/fs/cgroup/{SERVICE}/memory.stat": (
        f"anon {150 * MiB}\nfile {100 * MiB}\nkernel 0\nactive_file {50 * MiB}\ninactive_file {50 * MiB}\n"
    ),
    "sys/fs/cgroup/system.slice/memory.max": "max\n",
    "sys/fs/cgroup/system.slice/memory.current": f"{3000 * MiB}\n",
}
LIMIT_FILE = f"/sys/fs/cgroup/{SERVICE}/memory.max"

# /proc/self/cgroup of a cgroup v1 (hybrid) host, as recorded on the 2-core EPYC these tests run
# on: the memory hierarchy names the process's cgroup, the v2 line has no memory controller.
V1_CGROUP = (
    "9:name=systemd:/\n8:pids:/\n7:blkio:/\n6:freezer:/\n5:devices:/\n"
    "4:memory:/docker/3f2a9c0d1e\n3:cpuset:/\n2:cpuacct:/\n1:cpu:/\n0::/\n"
)
V1_UNLIMITED = "9223372036854771712\n"  # PAGE_COUNTER_MAX pages of 4 KiB, as recorded there


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "device"
    shutil.copytree(DEVICES / "x86-epyc-7r32", root)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_systemd_memory_max_caps_the_available_memory(tmp_path):
    root = _tree(tmp_path, SYSTEMD_V2)
    info = _device.detect(root)
    assert (info.ram_total_mb, info.ram_available_mb) == (7725, 400)  # RAM stays the host's
    assert (info.memory_limit_mb, info.memory_limit_source) == (600, LIMIT_FILE)
    assert info.usable_total_mb() == 600
    assert _device.available_mb(root) == 400
    json.dumps(info.to_dict())


def test_the_tightest_room_over_the_cgroup_and_its_ancestors_applies(tmp_path):
    """A limit may sit on a parent slice (the unit's own memory.max is "max" then); when several
    levels have one, the level with the least room left decides, not the smallest limit."""
    slice_limit = {"sys/fs/cgroup/system.slice/memory.max": f"{1000 * MiB}\n",
                   "sys/fs/cgroup/system.slice/memory.current": f"{900 * MiB}\n"}
    only_parent = _tree(tmp_path / "a", {**SYSTEMD_V2, f"sys/fs/cgroup/{SERVICE}/memory.max": "max\n",
                                         **slice_limit})
    info = _device.detect(only_parent)
    assert (info.ram_available_mb, info.memory_limit_mb) == (100, 1000)
    assert info.memory_limit_source == "/sys/fs/cgroup/system.slice/memory.max"
    both = _tree(tmp_path / "b", {**SYSTEMD_V2, **slice_limit})  # 350 MiB left below 600, 100 below 1000
    assert (_device.detect(both).ram_available_mb, _device.available_mb(both)) == (100, 100)


def test_inside_a_container_the_mount_root_is_its_cgroup(tmp_path):
    # docker --memory 512m with a private cgroup namespace (the default on cgroup v2)
    root = _tree(tmp_path, {"proc/self/cgroup": "0::/\n", "sys/fs/cgroup/memory.max": f"{512 * MiB}\n",
                            "sys/fs/cgroup/memory.current": f"{100 * MiB}\n"})
    info = _device.detect(root)
    assert (info.ram_available_mb, info.memory_limit_mb) == (412, 512)
    assert info.memory_limit_source == "/sys/fs/cgroup/memory.max"


def test_cgroup_v1_limit_and_its_unlimited_value(tmp_path):
    """v1 (docker on a hybrid host): /proc/self/cgroup names the host's path, the mount holds only
    the container's own cgroup, so the walk goes up to it; v1's "unlimited" is no limit."""
    mount = "sys/fs/cgroup/memory"
    limited = _tree(tmp_path / "a", {"proc/self/cgroup": V1_CGROUP,
                                     f"{mount}/memory.limit_in_bytes": f"{512 * MiB}\n",
                                     f"{mount}/memory.usage_in_bytes": f"{200 * MiB}\n",
                                     f"{mount}/memory.stat": f"cache {60 * MiB}\nrss {140 * MiB}\n"
                                                             f"inactive_file 0\ntotal_inactive_file {20 * MiB}\n"})
    info = _device.detect(limited)
    assert (info.ram_available_mb, info.memory_limit_mb) == (332, 512)
    assert info.memory_limit_source == "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    unlimited = _tree(tmp_path / "b", {"proc/self/cgroup": V1_CGROUP,
                                       f"{mount}/memory.limit_in_bytes": V1_UNLIMITED,
                                       f"{mount}/docker/3f2a9c0d1e/memory.limit_in_bytes": V1_UNLIMITED,
                                       f"{mount}/memory.usage_in_bytes": f"{200 * MiB}\n"})
    info = _device.detect(unlimited)
    assert (info.ram_available_mb, info.memory_limit_mb) == (HOST_AVAILABLE_MB, None)


@pytest.mark.parametrize("files", [
    {},  # no /proc/self/cgroup (an older kernel, a recorded sample)
    {"proc/self/cgroup": "0::/system.slice/edge-serve.service\n"},  # no cgroup files (not mounted)
    {**SYSTEMD_V2, f"sys/fs/cgroup/{SERVICE}/memory.max": "max\n"},
    {**SYSTEMD_V2, f"sys/fs/cgroup/{SERVICE}/memory.max": "lots\n"},
    {**SYSTEMD_V2, f"sys/fs/cgroup/{SERVICE}/memory.max": ""},
    {**{k: v for k, v in SYSTEMD_V2.items() if not k.endswith(f"{SERVICE}/memory.max")},
     f"sys/fs/cgroup/{SERVICE}/memory.max/x": ""},  # memory.max a directory: unreadable
    {"proc/self/cgroup": "garbage\n::\n"},
    {"proc/self/cgroup": "0::/../../elsewhere\n"},  # outside this namespace: the walk stays inside
], ids=["no-proc-file", "no-cgroup-files", "max", "not-a-number", "empty", "unreadable", "garbage", "outside"])
def test_absent_or_unreadable_cgroup_files_mean_no_limit(tmp_path, files):
    root = _tree(tmp_path, files)
    info = _device.detect(root)
    assert (info.ram_available_mb, info.memory_limit_mb, info.memory_limit_source) == (HOST_AVAILABLE_MB, None, None)
    assert info.usable_total_mb() == 7725 and _device.available_mb(root) == HOST_AVAILABLE_MB


def test_a_full_cgroup_is_1_mb_available_not_unknown(tmp_path):
    """0 MB reads as "unknown" to the memory checks (no split at all): a cgroup at or over its
    limit must read as the least known amount instead. Its usage unreadable: the limit alone."""
    over = _tree(tmp_path / "a", {**SYSTEMD_V2, f"sys/fs/cgroup/{SERVICE}/memory.current": f"{700 * MiB}\n"})
    assert _device.available_mb(over) == 1 and _device.detect(over).ram_available_mb == 1
    no_usage = _tree(tmp_path / "b", {**SYSTEMD_V2, f"sys/fs/cgroup/{SERVICE}/memory.current": "?\n"})
    assert _device.available_mb(no_usage) == 600


class _Rows:
    """A backend session that records how many rows each call gets (outputs are 1 float a row)."""

    def __init__(self):
        self.calls = []

    def run(self, feeds):
        self.calls.append(len(feeds["input_ids"]))
        return {"last_hidden_state": np.zeros((len(feeds["input_ids"]), 1, 1), np.float32)}


def _on_recorded_device(monkeypatch, root: Path) -> None:
    """What the runtime reads as "this device" comes from `root`."""
    detect, available = _device.detect, _device.available_mb
    monkeypatch.setattr(_device, "detect", lambda path="/", measure_int8=True: detect(root))
    monkeypatch.setattr(_device, "available_mb", lambda path="/": available(root))


def test_a_large_batch_is_split_to_the_cgroup_room(tmp_path, monkeypatch):
    """Model.run's default budget: the room the cgroup leaves (400 MB), minus the headroom of a
    600 MB total (64 MB), not the host's 7177 MB minus 10% of its 7725 MB."""
    root = _tree(tmp_path, SYSTEMD_V2)
    _on_recorded_device(monkeypatch, root)
    manifest = {"task": "feature-extraction",
                "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
                "outputs": [{"name": "last_hidden_state", "dtype": "float32", "shape": ["batch", "sequence", 384]}]}
    session = _Rows()
    model = _model.Model(tmp_path, manifest, {"name": "a", "format": "onnx", "precision": "fp32"}, session, 1, 0.0)
    feeds = {"input_ids": np.ones((100, 128), np.int64)}  # MiniLM's width at the usual 128 tokens
    per_row = _inputs.row_bytes(manifest["outputs"], {"batch": 100, "sequence": 128})
    assert _memory.headroom_mb(600) == 64
    step = int((400 - 64) * MiB // per_row)
    assert 1 < step < 100  # 74 rows of ~4.5 MB
    assert model.run(feeds)["last_hidden_state"].shape == (100, 1, 1)
    assert session.calls == [step, 100 - step]


def test_selection_ranks_against_the_cgroup_room(tmp_path):
    """An artifact needing ~466 MB fits the host's 7177 MB but not the cgroup's 400 MB: last, and
    the reason gives the cgroup's figures."""
    device_root = _tree(tmp_path, SYSTEMD_V2)
    artifacts = tmp_path / "art"
    artifacts.mkdir()
    manifest = _valid(artifacts)
    manifest["artifacts"][0]["files"][0]["bytes"] = 300 * MiB  # int8 ONNX: x1.5 + 16 MB
    device = _device.detect(device_root)
    plan = _select.plan(artifacts, manifest, device, None, available_mb=_device.available_mb(device_root))
    [choice] = plan.choices
    assert not choice.fits
    assert choice.notes[1] == "needs ~466 MB but only 400 MB are available (64 MB kept free)"


def test_info_says_the_limit_comes_from_a_cgroup(tmp_path, monkeypatch):
    _on_recorded_device(monkeypatch, _tree(tmp_path, SYSTEMD_V2))
    artifacts = tmp_path / "art"
    artifacts.mkdir()
    (artifacts / "manifest.json").write_text(json.dumps(_valid(artifacts)))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli._print_info(cli._describe(str(artifacts)))
    assert f"RAM 7725 MB, 400 MB available (cgroup limit 600 MB, {LIMIT_FILE})\n" in out.getvalue()

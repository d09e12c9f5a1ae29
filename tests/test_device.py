"""Device detection (edge_runtime._device) against recorded /proc and /sys trees of each target.

The trees under tests/data/devices/ are described in tests/data/devices/README.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import targets
from edge_runtime import _device, _installed
from edge_runtime._device import Cluster, detect, match_profile, target_facts
from edge_runtime._sensors import sensors

DEVICES = Path(__file__).resolve().parent / "data" / "devices"

# Every field detect() reports, per recorded device (backends excepted: they are this process's).
EXPECTED = {
    "rpi4": {
        "arch": "aarch64",
        "cpu_model": "Cortex-A72",
        "notable": ["asimd"],
        "logical_cores": 4,
        "physical_cores": 4,
        "clusters": (Cluster((0, 1, 2, 3), 1800000, "Cortex-A72"),),
        "big_cores": 4,
        "ram_total_mb": 3791,  # MemTotal 3882924 kB // 1024
        "ram_available_mb": 3321,
        "board": "Raspberry Pi 4 Model B Rev 1.4",
        "board_source": "/sys/firmware/devicetree/base/model",  # no /proc/device-tree in this tree
        "l4t_release": None,
        "int8_gemm": "int32",
        "profile": "rpi4",
        "reason": "arch aarch64, board 'Raspberry Pi 4 Model B Rev 1.4' contains 'Raspberry Pi 4' "
        "(priority 30)",
    },
    "rpi5": {
        "arch": "aarch64",
        "cpu_model": "Cortex-A76",
        "notable": ["asimd", "asimddp", "fphp", "asimdhp"],
        "logical_cores": 4,
        "physical_cores": 4,
        "clusters": (Cluster((0, 1, 2, 3), 2400000, "Cortex-A76"),),
        "big_cores": 4,
        "ram_total_mb": 8052,
        "ram_available_mb": 7511,
        "board": "Raspberry Pi 5 Model B Rev 1.0",
        "board_source": "/proc/device-tree/model",
        "l4t_release": None,
        "int8_gemm": "int32",
        "profile": "rpi5",
        "reason": "arch aarch64, board 'Raspberry Pi 5 Model B Rev 1.0' contains 'Raspberry Pi 5' "
        "(priority 30)",
    },
    "jetson-agx-orin": {
        "arch": "aarch64",
        "cpu_model": "Cortex-A78AE",
        "notable": ["asimd", "asimddp", "fphp", "asimdhp"],
        "logical_cores": 12,
        "physical_cores": 12,
        "clusters": (Cluster(tuple(range(12)), 2201600, "Cortex-A78AE"),),
        "big_cores": 12,
        "ram_total_mb": 62827,
        "ram_available_mb": 60109,
        "board": "NVIDIA Jetson AGX Orin Developer Kit",
        "board_source": "/proc/device-tree/model",
        "l4t_release": "R36.4.0",
        "int8_gemm": "int32",
        "profile": "jetson-orin",
        "reason": "arch aarch64, board 'NVIDIA Jetson AGX Orin Developer Kit' contains "
        "'Jetson' (priority 40)",
    },
    "rk3588": {
        "arch": "aarch64",
        "cpu_model": "Cortex-A76 + Cortex-A55",
        "notable": ["asimd", "asimddp", "fphp", "asimdhp"],
        "logical_cores": 8,
        "physical_cores": 8,  # core_id restarts per cluster: counted by thread_siblings_list
        # the A76 pairs (2.4 and 2.352 GHz) are one cluster: within 10% of each other
        "clusters": (
            Cluster((4, 5, 6, 7), 2400000, "Cortex-A76"),
            Cluster((0, 1, 2, 3), 1800000, "Cortex-A55"),
        ),
        "big_cores": 4,
        "ram_total_mb": 15731,
        "ram_available_mb": 15045,
        "board": "Radxa ROCK 5B",
        "board_source": "/proc/device-tree/model",
        "l4t_release": None,
        "int8_gemm": "int32",
        "profile": None,
        "reason": "no target profile matches this machine (arch aarch64, model Radxa ROCK 5B); "
        "the profiles: jetson-orin, rpi4, rpi5, x86-avx2, x86-avx512-vnni",
    },
    "x86-epyc-7r32": {
        "arch": "x86_64",
        "cpu_model": "AMD EPYC 7R32",
        "notable": ["avx2", "fma"],
        "logical_cores": 4,
        "physical_cores": 2,  # SMT: cpu0/cpu2 and cpu1/cpu3 share a core
        "clusters": (Cluster((0, 1, 2, 3), None, None),),  # a VM: no cpufreq
        "big_cores": 2,
        "ram_total_mb": 7725,
        "ram_available_mb": 7177,
        "board": None,
        "board_source": None,
        "l4t_release": None,
        "int8_gemm": "s16-pairs",
        "profile": "x86-avx2",
        "reason": "arch x86_64, CPU flags avx2 fma (priority 10)",
    },
    "x86-xeon-8488c": {
        "arch": "x86_64",
        "cpu_model": "Intel(R) Xeon(R) Platinum 8488C",
        "notable": ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8"],
        "logical_cores": 4,
        "physical_cores": 2,
        "clusters": (Cluster((0, 1, 2, 3), None, None),),
        "big_cores": 2,
        "ram_total_mb": 15603,
        "ram_available_mb": 15037,
        "board": None,
        "board_source": None,
        "l4t_release": None,
        "int8_gemm": "int32",
        "profile": "x86-avx512-vnni",
        "reason": "arch x86_64, CPU flags avx2 avx512f avx512bw avx512_vnni "
        "(priority 20); also matches x86-avx2 (lower priority)",
    },
}


def test_every_recorded_device_has_expectations():
    assert sorted(p.name for p in DEVICES.iterdir() if p.is_dir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_detect_recorded_device(name):
    want = EXPECTED[name]
    info = detect(DEVICES / name)
    got = {key: getattr(info, key) for key in want if key not in ("notable", "profile", "reason")}
    assert got == {k: v for k, v in want.items() if k not in ("notable", "profile", "reason")}
    assert info.notable_features() == want["notable"]
    assert match_profile(info) == (want["profile"], want["reason"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_targets_machine_facts_agree_with_the_runtime_reader(name):
    # targets cannot import edge_runtime, so it keeps a small reader of its own: the two must agree.
    assert targets.machine_facts(DEVICES / name) == target_facts(detect(DEVICES / name))


def test_isa_features_are_what_every_core_has(tmp_path):
    root = tmp_path / "rk3588"
    shutil.copytree(DEVICES / "rk3588", root)
    cpuinfo = root / "proc/cpuinfo"
    # a core without asimddp (a little core of an older SoC) removes it from the device's set
    text = cpuinfo.read_text().replace("lrcpc dcpop asimddp", "lrcpc dcpop", 1)
    cpuinfo.write_text(text)
    assert "asimddp" not in detect(root).isa_features
    assert "asimddp" in detect(DEVICES / "rk3588").isa_features


def test_smt_from_core_id_when_sibling_lists_are_missing(tmp_path):
    root = tmp_path / "epyc"
    shutil.copytree(DEVICES / "x86-epyc-7r32", root)
    for path in root.glob("sys/devices/system/cpu/cpu*/topology/thread_siblings_list"):
        path.unlink()
    assert (detect(root).physical_cores, detect(root).big_cores) == (2, 2)
    shutil.rmtree(root / "sys")  # and from the cpuinfo's "core id" lines without any sysfs
    assert detect(root).physical_cores == 2


def test_board_from_nv_tegra_release_without_a_device_tree(tmp_path):
    root = tmp_path / "orin"
    shutil.copytree(DEVICES / "jetson-agx-orin", root)
    shutil.rmtree(root / "proc/device-tree")
    shutil.rmtree(root / "sys/firmware")
    info = detect(root)
    assert (info.board, info.board_source) == (
        "NVIDIA Jetson (L4T R36.4.0)",
        "/etc/nv_tegra_release",
    )
    assert match_profile(info)[0] == "jetson-orin"


def test_board_from_cpuinfo_model_line_without_a_device_tree(tmp_path):
    root = tmp_path / "pi4"
    shutil.copytree(DEVICES / "rpi4", root)
    shutil.rmtree(root / "sys/firmware")
    info = detect(root)
    assert (info.board, info.board_source) == ("Raspberry Pi 4 Model B Rev 1.4", "/proc/cpuinfo")


def test_proc_device_tree_is_read_before_sys_firmware(tmp_path):
    # qemu-user's QEMU_LD_PREFIX redirects /proc/device-tree/model into the sysroot (the ARM64 check)
    root = tmp_path / "pi5"
    shutil.copytree(DEVICES / "rpi5", root)
    (root / "sys/firmware/devicetree/base/model").write_bytes(b"Something else\x00")
    assert detect(root).board == "Raspberry Pi 5 Model B Rev 1.0"


def test_empty_root_falls_back_without_raising(tmp_path):
    info = detect(tmp_path)
    assert (info.logical_cores, info.physical_cores, info.big_cores) == (1, 1, 1)
    assert (info.ram_total_mb, info.board, info.cpu_model) == (0, None, "unknown")
    assert sensors(tmp_path) == {"temperature_c": {}, "cpufreq_khz": {}, "throttled": None}
    json.dumps(info.to_dict())


def test_unknown_arm_core_is_named_by_its_ids(tmp_path):
    root = tmp_path / "pi4"
    shutil.copytree(DEVICES / "rpi4", root)
    cpuinfo = root / "proc/cpuinfo"
    cpuinfo.write_text(cpuinfo.read_text().replace("0xd08", "0xfff"))
    assert detect(root).cpu_model == "ARM 0x41/0xfff"


def test_sensors_decode_pi_throttling():
    got = sensors(DEVICES / "rpi4")
    assert got["temperature_c"] == {"cpu-thermal": 51.121}
    assert got["cpufreq_khz"] == {"cpu0": 1800000, "cpu1": 600000, "cpu2": 600000, "cpu3": 600000}
    # 0x50000: under-voltage and throttling occurred since boot, neither active now
    assert got["throttled"] == {
        "raw": "0x50000",
        "under_voltage": False,
        "arm_frequency_capped": False,
        "throttled": False,
        "soft_temperature_limit": False,
        "under_voltage_occurred": True,
        "arm_frequency_capped_occurred": False,
        "throttled_occurred": True,
        "soft_temperature_limit_occurred": False,
    }
    pi5 = sensors(DEVICES / "rpi5")  # the Pi 5's firmware node has another path
    assert pi5["throttled"]["raw"] == "0x0" and not any(
        v for k, v in pi5["throttled"].items() if k != "raw"
    )


def test_sensors_keep_zones_of_the_same_type(tmp_path):
    for i, milli in enumerate((40000, 42500)):
        zone = tmp_path / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text("acpitz\n")
        (zone / "temp").write_text(f"{milli}\n")
    assert sensors(tmp_path)["temperature_c"] == {"acpitz": 40.0, "acpitz-2": 42.5}


def test_a_placeholder_zone_is_kept_in_the_json_but_not_called_the_hottest(tmp_path):
    """Jetson Nano/TX2/Xavier's PMIC-Die zone reads 100.0 deg C always: the reading stays in the
    JSON, the reports' hottest zone is a real one (a review found "max temperature 100.0 °C")."""
    from edge_runtime._bench_report import _sensor_line
    from edge_runtime._sensors import hottest

    for i, (kind, milli) in enumerate((("CPU-therm", 38500), ("PMIC-Die", 100000), ("GPU-therm", 36000))):
        zone = tmp_path / f"sys/class/thermal/thermal_zone{i}"
        zone.mkdir(parents=True)
        (zone / "type").write_text(kind + "\n")
        (zone / "temp").write_text(f"{milli}\n")
    read = sensors(tmp_path)
    assert read["temperature_c"]["PMIC-Die"] == 100.0 and hottest(read["temperature_c"]) == 38.5
    assert "max temperature 38.5 °C" in _sensor_line(read)
    assert hottest({"PMIC-Die": 100.0, "PMIC-Die-2": 100.0}) is None
    assert _sensor_line({"temperature_c": {"PMIC-Die": 100.0}}).startswith("temperature unreadable")


def test_orin_sensors():
    got = sensors(DEVICES / "jetson-agx-orin")
    assert got["temperature_c"]["cpu-thermal"] == 47.406 and len(got["temperature_c"]) == 9
    assert got["cpufreq_khz"]["cpu4"] == 2201600 and got["throttled"] is None


def test_to_dict_is_json_ready():
    data = json.loads(json.dumps(detect(DEVICES / "rk3588").to_dict()))
    assert data["clusters"] == [
        {"cpus": [4, 5, 6, 7], "max_khz": 2400000, "core": "Cortex-A76"},
        {"cpus": [0, 1, 2, 3], "max_khz": 1800000, "core": "Cortex-A55"},
    ]
    assert "asimddp" in data["isa_features"] and data["isa_features"] == sorted(
        data["isa_features"]
    )


def test_backends_are_this_process_installed_packages():
    import importlib.metadata

    info = detect(DEVICES / "rpi4")
    assert info.backends["onnxruntime"] == importlib.metadata.version("onnxruntime")


def test_this_machine_is_detected_and_cached():
    info = detect()
    assert info is detect("/")  # cached per process
    assert info.logical_cores >= info.physical_cores >= info.big_cores >= 1
    assert info.ram_total_mb > 0 and info.arch in ("x86_64", "aarch64")
    assert match_profile(info)[0] == targets.detect_target(targets.machine_facts()).id


def test_a_foreign_targets_module_is_named_not_a_traceback(monkeypatch):
    """The device wheel installs a top-level `targets` package; a user's targets.py found first
    (python -c in its directory) must not crash --info or edge-bench."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "targets", types.ModuleType("targets"))
    profile, reason = match_profile(detect())
    assert profile is None and "is not edge_runtime's target profiles" in reason


_OLD_ARM64_CPUINFO = """Processor\t: AArch64 Processor rev 1 (aarch64)
processor\t: 0
processor\t: 1
processor\t: 2
processor\t: 3
Features\t: fp asimd aes pmull sha1 sha2 crc32
CPU implementer\t: 0x41
CPU architecture: AArch64
CPU variant\t: 0x1
CPU part\t: 0xd07
CPU revision\t: 1

Hardware\t: jetson_tx1
"""


def test_a_pre_4_0_arm64_cpuinfo_lists_every_processor_in_one_block(tmp_path):
    """Kernels before 4.0 on arm64 (Jetson TX1's 3.10) write one block with a "processor" line
    per CPU and one set of features: four CPUs, not one (a review found one, hence 1 thread)."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text(_OLD_ARM64_CPUINFO)
    info = detect(tmp_path)
    assert info.arch == "aarch64" and info.logical_cores == 4 and info.big_cores == 4
    assert info.clusters == (Cluster((0, 1, 2, 3), None, "Cortex-A57"),)
    assert "asimd" in info.isa_features


def test_without_cpufreq_the_big_cluster_is_the_largest_cpu_capacity(tmp_path):
    """An RK3399-like board (4 x Cortex-A53 on cpu0-3, 2 x Cortex-A72 on cpu4-5) whose kernel has
    no cpufreq driver: the kernel's cpu_capacity names the A72s the big cluster (a review found
    the A53s, first by CPU number)."""
    block = "processor\t: {n}\nFeatures\t: fp asimd\nCPU implementer\t: 0x41\nCPU part\t: {part}\n"
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cpuinfo").write_text("\n".join(block.format(n=n, part="0xd03" if n < 4 else "0xd08")
                                                       for n in range(6)))
    for n in range(6):
        cpu = tmp_path / f"sys/devices/system/cpu/cpu{n}"
        cpu.mkdir(parents=True)
        (cpu / "cpu_capacity").write_text("485\n" if n < 4 else "1024\n")
    info = detect(tmp_path)
    assert info.clusters[0] == Cluster((4, 5), None, "Cortex-A72") and info.big_cores == 2
    assert info.cpu_model == "Cortex-A72 + Cortex-A53"


def test_cluster_grouping_by_frequency_alone():
    # x86 hybrid (no core names): P cores 4.9-5.2 GHz ("favored cores" report more), E cores 3.9
    khz = {0: 5200000, 1: 4900000, 2: 4900000, 3: 3900000, 4: 3900000}
    got = _device._clusters([0, 1, 2, 3, 4], khz, {})
    assert got == (Cluster((0, 1, 2), 5200000, None), Cluster((3, 4), 3900000, None))


def test_backend_versions_are_read_from_dist_info_names(tmp_path, monkeypatch):
    """detect() names the installed backends without parsing METADATA (a fresh-process cost);
    a GPU build that installs the same module is told apart from the CPU build."""
    import importlib

    site = tmp_path / "site"
    (site / "fake_rt_mod").mkdir(parents=True)
    (site / "fake_rt_mod" / "__init__.py").write_text("raise RuntimeError('must not be imported')\n")
    (site / "fake_rt_gpu-1.22.0.dist-info").mkdir()
    (site / "other_pkg-3.0.dist-info").mkdir()
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setattr(
        _installed,
        "_BACKEND_MODULES",
        {"fake-rt": "fake_rt_mod", "fake-rt-gpu": "fake_rt_mod", "absent-rt": "absent_rt_mod"},
    )
    assert _installed.installed_backends() == {"fake-rt-gpu": "1.22.0"}


def test_int8_gemm_probe_model_is_what_onnx_builds_and_runs():
    """The probe's hand-written model bytes equal what the onnx package writes for it (the device
    wheel has no onnx), and onnxruntime answers one of the two kinds here. Under an emulated
    Haswell it answers s16-pairs whatever /proc/cpuinfo says (tests/test_avx2_emulated.py)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edge_runtime import _int8_probe

    k, n = _int8_probe.K, _int8_probe.N
    weight = numpy_helper.from_array(np.full((k, n), 127, np.int8), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "int8_gemm_probe",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [None, k])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [None, n])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edge_runtime")
    model.ir_version = 7
    onnx.checker.check_model(model)
    assert model.SerializeToString() == _int8_probe.PROBE_MODEL
    assert _int8_probe.probe_int8_gemm() in ("int32", "s16-pairs")
    if detect().arch == "x86_64":  # measured on x86; ARM64's kernels are all int32
        assert detect().int8_gemm == _int8_probe.probe_int8_gemm()
        assert detect().int8_gemm_source == "measured by onnxruntime"

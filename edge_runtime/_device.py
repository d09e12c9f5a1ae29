"""What this device is: CPU, ISA features, core clusters, memory, board, installed backends.
Memory is read in _ram.py: MemAvailable, capped by this process's cgroup limit.

One reader of /proc and /sys for the whole project: the runtime's artifact choice, thread
defaults, `edge-run --info`, `edge-bench` and `edge-convert --target auto` all go through
`detect()`. Every path is read under `root`, so recorded samples of real devices
(tests/data/devices/<name>/) test it, and under qemu-user with QEMU_LD_PREFIX the sysroot's
files stand in for the host's. Nothing here raises on a missing or unreadable file: a field
falls back (psutil / os for the real root) and the reader goes on.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_runtime._installed import installed_backends
from edge_runtime._ram import available_mb, memory  # available_mb: public here, as it always was
from edge_runtime._sysfs import read_int as _read_int
from edge_runtime._sysfs import read_text as _read

log = logging.getLogger("edge_runtime")

__all__ = [
    "FEATURES_OF_INTEREST",
    "Cluster",
    "DeviceInfo",
    "available_mb",
    "detect",
    "match_profile",
    "target_facts",
]

# (CPU implementer, CPU part) -> core name, from the Arm/vendor MIDR tables (Linux
# arch/arm64/include/asm/cputype.h). Only cores that run Linux boards we may meet.
_ARM_CORES = {
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD04): "Cortex-A35",
    (0x41, 0xD05): "Cortex-A55",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD09): "Cortex-A73",
    (0x41, 0xD0A): "Cortex-A75",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD0D): "Cortex-A77",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD41): "Cortex-A78",
    (0x41, 0xD42): "Cortex-A78AE",
    (0x41, 0xD44): "Cortex-X1",
    (0x41, 0xD46): "Cortex-A510",
    (0x41, 0xD47): "Cortex-A710",
    (0x41, 0xD48): "Cortex-X2",
    (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4B): "Cortex-A78C",
    (0x41, 0xD4D): "Cortex-A715",
    (0x41, 0xD4E): "Cortex-X3",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x41, 0xD80): "Cortex-A520",
    (0x41, 0xD81): "Cortex-A720",
    (0x41, 0xD82): "Cortex-X4",
    (0x4E, 0x004): "NVIDIA Carmel",
    (0x51, 0x800): "Kryo 2xx Gold",
    (0x51, 0x801): "Kryo 2xx Silver",
    (0x61, 0x022): "Apple M1 Icestorm",
    (0x61, 0x023): "Apple M1 Firestorm",
}

# x86 flags behind onnxruntime's exact (32-bit accumulating) INT8 GEMM kernels in MLAS:
# AVX512-VNNI / AVX-VNNI VPDPBUSD, AMX TDPBUSD. Without them MLAS's AVX2 and AVX512BW kernels
# use VPMADDUBSW, whose adjacent u8 x s8 products add into a saturating int16.
_X86_EXACT_INT8 = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86_PAIR_INT8 = ("avx2", "avx512bw")

# Cores whose maximum frequencies are within this ratio of the cluster's fastest core count as
# one cluster: Intel's "favored cores" report a few % more than their siblings (Turbo Boost Max
# 3.0) and RK3588 bins its two A76 pairs at 2.256 / 2.352 GHz, while real big.LITTLE gaps are
# >= 25% (RK3588 A55 1.8 vs A76 2.4 GHz; Alder Lake E 3.9 vs P 4.9+ GHz).
_SAME_CLUSTER = 0.9

# The flags that decide kernels for this project's workloads (shown by `edge-run --info`).
FEATURES_OF_INTEREST = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
    "fphp",
    "asimdhp",
    "bf16",
    "sve",
    "sve2",
)

@dataclass(frozen=True)
class Cluster:
    cpus: tuple[int, ...]  # logical CPU ids in this cluster
    max_khz: int | None  # cpufreq cpuinfo_max_freq, None when unreadable
    core: str | None = None  # ARM core name of these CPUs (e.g. "Cortex-A76"), None on x86


@dataclass(frozen=True)
class DeviceInfo:
    arch: str
    cpu_model: str
    isa_features: frozenset[str]
    logical_cores: int
    physical_cores: int
    clusters: tuple[Cluster, ...]
    big_cores: int
    ram_total_mb: int
    ram_available_mb: int
    board: str | None
    int8_gemm: str
    backends: dict[str, str]
    l4t_release: str | None = None  # Jetson Linux release, e.g. "R36.4.0"
    board_source: str | None = None  # the file the board name came from (under root)
    # How int8_gemm was found: "CPU flags", or "measured by onnxruntime" (edge_runtime/_int8_probe.py)
    int8_gemm_source: str = "CPU flags"
    # This process's cgroup memory limit (systemd MemoryMax=, docker --memory) and the file it
    # was read from; ram_available_mb is then at most the room it leaves (_ram.py).
    memory_limit_mb: int | None = None
    memory_limit_source: str | None = None

    def usable_total_mb(self) -> int:
        """All the memory this process may use: the RAM, or its cgroup's limit when lower. The
        headroom kept free (_memory.headroom_mb) is a share of this, not of a host it cannot use."""
        if self.memory_limit_mb is None or 0 < self.ram_total_mb <= self.memory_limit_mb:
            return self.ram_total_mb
        return self.memory_limit_mb

    def notable_features(self) -> list[str]:
        """The ISA features of FEATURES_OF_INTEREST this CPU has, in that order."""
        return [f for f in FEATURES_OF_INTEREST if f in self.isa_features]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: sets sorted into lists, clusters into dicts."""
        data = dataclasses.asdict(self)
        data["isa_features"] = sorted(self.isa_features)
        data["clusters"] = [
            {"cpus": list(c.cpus), "max_khz": c.max_khz, "core": c.core} for c in self.clusters
        ]
        return data


# -- reading files ------------------------------------------------------------------------------


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    """/proc/cpuinfo as blocks of `key: value` lines (blank-line separated). Keys keep their
    case; ARM kernels put board lines (Hardware, Revision, Model) in a last block of their own.
    Kernels before 4.0 on arm64 (e.g. Jetson TX1's 3.10) list every CPU's "processor" line in one
    block with one set of features: that block becomes one block per CPU (a review found a 4-core
    board read as one CPU)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    processors: list[str] = []

    def close() -> None:
        if len(processors) > 1:
            blocks.extend({**current, "processor": number} for number in processors)
        elif current:
            blocks.append(current)

    for line in text.splitlines():
        if not line.strip():
            close()
            current, processors = {}, []
            continue
        key, sep, value = line.partition(":")
        if sep:
            current[key.strip()] = value.strip()
            if key.strip() == "processor":
                processors.append(value.strip())
    close()
    return blocks


def _int(value: str | None) -> int | None:
    try:
        return int(value, 0) if value is not None else None
    except ValueError:
        return None


def _device_tree_model(root: Path) -> tuple[str | None, str | None]:
    # /proc/device-tree first: qemu-user's QEMU_LD_PREFIX redirects absolute paths to the sysroot,
    # which is how the ARM64 emulation check hands a model file to this reader.
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        text = _read(root, rel)
        if text and text.strip("\x00\n "):
            return text.strip("\x00\n "), "/" + rel
    return None, None


def _l4t_release(root: Path) -> str | None:
    """'# R36 (release), REVISION: 4.0, GCID: ...' -> 'R36.4.0'."""
    text = _read(root, "etc/nv_tegra_release")
    if not text:
        return None
    first = text.splitlines()[0] if text.splitlines() else ""
    major = first.lstrip("# ").split(" ", 1)[0]
    revision = ""
    for part in first.split(","):
        key, _, value = part.partition(":")
        if key.strip() == "REVISION":
            revision = value.strip()
    if not major.startswith("R"):
        return "unknown"
    return f"{major}.{revision}" if revision else major


# -- detection ----------------------------------------------------------------------------------


def _clusters(
    cpus: list[int], max_khz: dict[int, int | None], cores: dict[int, str | None],
    capacity: dict[int, int | None] | None = None,
) -> tuple[Cluster, ...]:
    """Group CPUs: by core type where the cpuinfo names one per CPU (ARM), then by maximum
    frequency (within _SAME_CLUSTER of the group's fastest). Fastest cluster first; without
    cpufreq, the one of the largest cpu_capacity (arm64's relative performance, 1024 for the
    biggest core, read from the device tree whatever the frequency driver: a review found an
    RK3399 without cpufreq answering its Cortex-A53s as the big cluster)."""
    capacity = capacity or {}
    groups: dict[str | None, list[int]] = {}
    for cpu in cpus:
        groups.setdefault(cores.get(cpu), []).append(cpu)
    clusters = []
    for core, members in groups.items():
        known = sorted((max_khz[c] for c in members if max_khz.get(c)), reverse=True)
        if not known:
            clusters.append(Cluster(tuple(sorted(members)), None, core))
            continue
        # Split by frequency: walk from the fastest core down, open a new cluster at each gap.
        tops: list[int] = []
        for khz in known:
            if not tops or khz < tops[-1] * _SAME_CLUSTER:
                tops.append(khz)
        buckets: dict[int, list[int]] = {top: [] for top in tops}
        for cpu in members:
            khz = max_khz.get(cpu) or tops[0]
            top = next((t for t in tops if khz >= t * _SAME_CLUSTER), tops[-1])
            buckets[top].append(cpu)
        for top, bucket in buckets.items():
            clusters.append(Cluster(tuple(sorted(bucket)), top, core))
    clusters.sort(key=lambda c: (-(c.max_khz or 0), -max(capacity.get(cpu) or 0 for cpu in c.cpus), c.cpus[0]))
    return tuple(clusters)


def _core_ids(root: Path, cpus: list[int], per_cpu: list[dict[str, str]]) -> dict[int, Any]:
    """A key per logical CPU that SMT siblings share: the kernel's thread_siblings_list
    (core_cpus_list on newer kernels) where readable, else (package, core_id) from topology or the
    x86 cpuinfo. The sibling list comes first because ARM kernels with a device-tree cpu-map
    restart core_id in every cluster (RK3588: core_id 0-3, 0-1, 0-1, all in package 0)."""
    keys: dict[int, Any] = {}
    blocks = dict(zip(cpus, per_cpu))
    for cpu in cpus:
        topo = f"sys/devices/system/cpu/cpu{cpu}/topology"
        siblings = _read(root, f"{topo}/thread_siblings_list") or _read(
            root, f"{topo}/core_cpus_list"
        )
        if siblings and siblings.strip():
            keys[cpu] = ("siblings", siblings.strip())
            continue
        core = _read_int(root, f"{topo}/core_id")
        package = _read_int(root, f"{topo}/physical_package_id")
        if core is None and cpu in blocks:
            core, package = _int(blocks[cpu].get("core id")), _int(blocks[cpu].get("physical id"))
        if core is not None:
            keys[cpu] = ("core", package or 0, core)
    return keys


def _physical(cpus: tuple[int, ...], core_ids: dict[int, Any]) -> int:
    """Distinct (package, core) pairs among `cpus`; a CPU without topology counts alone."""
    return len({core_ids.get(cpu, (-1, -1 - cpu)) for cpu in cpus})


def _detect(root: Path, real: bool) -> DeviceInfo:
    blocks = _cpuinfo_blocks(_read(root, "proc/cpuinfo") or "")
    per_cpu = [b for b in blocks if _int(b.get("processor")) is not None]
    extra: dict[str, str] = {}
    for block in blocks:
        if block not in per_cpu:
            extra.update(block)
    cpus = [_int(b["processor"]) for b in per_cpu]
    if not cpus:
        found = (
            sorted(
                int(p.name[3:])
                for p in (root / "sys/devices/system/cpu").glob("cpu[0-9]*")
                if p.name[3:].isdigit()
            )
            if (root / "sys/devices/system/cpu").is_dir()
            else []
        )
        cpus = found or list(range((os.cpu_count() or 1) if real else 1))

    # Architecture: the recorded sample's own (ARM cpuinfo has "CPU implementer", x86 "flags"),
    # the interpreter's machine for the real root.
    if real:
        arch = platform.machine().lower()
    elif any("CPU implementer" in b for b in per_cpu):
        arch = "aarch64"
    elif any("flags" in b for b in per_cpu):
        arch = "x86_64"
    else:
        arch = platform.machine().lower()
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)

    # ISA features every core has (threads migrate between cores, so a kernel may use a flag only
    # when all have it). x86 lists "flags", ARM "Features".
    feature_sets = [set(b.get("flags", b.get("Features", "")).lower().split()) for b in per_cpu]
    feature_sets = [s for s in feature_sets if s]
    features = frozenset(set.intersection(*feature_sets)) if feature_sets else frozenset()

    cores: dict[int, str | None] = {}
    for cpu, block in zip(cpus, per_cpu):
        implementer, part = _int(block.get("CPU implementer")), _int(block.get("CPU part"))
        if implementer is not None and part is not None:
            cores[cpu] = _ARM_CORES.get((implementer, part), f"ARM {implementer:#x}/{part:#05x}")

    max_khz = {
        cpu: _read_int(root, f"sys/devices/system/cpu/cpu{cpu}/cpufreq/cpuinfo_max_freq")
        for cpu in cpus
    }
    capacity = {cpu: _read_int(root, f"sys/devices/system/cpu/cpu{cpu}/cpu_capacity") for cpu in cpus}
    clusters = _clusters(cpus, max_khz, cores, capacity)

    core_ids = _core_ids(root, cpus, per_cpu)
    physical = _physical(tuple(cpus), core_ids)
    if real and not core_ids:
        physical = _psutil_physical() or physical
    big = _physical(clusters[0].cpus, core_ids) if clusters else physical

    if "model name" in (per_cpu[0] if per_cpu else {}) and arch == "x86_64":
        cpu_model = per_cpu[0]["model name"]
    elif cores:
        names = []
        for cluster in clusters:
            if cluster.core and cluster.core not in names:
                names.append(cluster.core)
        cpu_model = " + ".join(names)
    elif per_cpu and per_cpu[0].get("model name"):
        cpu_model = per_cpu[0]["model name"]
    elif real and platform.processor():
        cpu_model = platform.processor()
    else:
        cpu_model = "unknown"

    total_mb, available_mb, limit = memory(root, real)

    board, board_source = _device_tree_model(root)
    if board is None and extra.get("Model"):  # Raspberry Pi kernels repeat it in cpuinfo
        board, board_source = extra["Model"], "/proc/cpuinfo"
    l4t = _l4t_release(root)
    if board is None and l4t is not None:
        board, board_source = f"NVIDIA Jetson (L4T {l4t})", "/etc/nv_tegra_release"

    if arch == "x86_64":
        if any(f in features for f in _X86_EXACT_INT8):
            int8_gemm = "int32"
        elif any(f in features for f in _X86_PAIR_INT8):
            int8_gemm = "s16-pairs"
        else:
            # MLAS's SSE4.1 kernel widens u8/s8 to int16 and multiplies with PMADDWD into int32.
            int8_gemm = "int32"
    else:
        # ARM64 MLAS kernels (UMULL/UADALP, SDOT/UDOT, SMMLA) accumulate in 32 bits.
        int8_gemm = "int32"
    return DeviceInfo(
        arch=arch,
        cpu_model=cpu_model,
        isa_features=features,
        logical_cores=len(cpus),
        physical_cores=physical,
        clusters=clusters,
        big_cores=big,
        ram_total_mb=total_mb,
        ram_available_mb=available_mb,
        board=board,
        int8_gemm=int8_gemm,
        int8_gemm_source="CPU flags",
        backends=installed_backends(),
        l4t_release=l4t,
        board_source=board_source,
        memory_limit_mb=limit.limit_mb if limit else None,
        memory_limit_source=limit.source if limit else None,
    )


def _psutil_physical() -> int | None:
    try:
        import psutil

        return psutil.cpu_count(logical=False)
    except ImportError:
        return None


@functools.cache
def _detect_real_unmeasured() -> DeviceInfo:
    return _detect(Path("/"), real=True)


@functools.cache
def _detect_real() -> DeviceInfo:
    device = _detect_real_unmeasured()
    if device.arch != "x86_64":
        return device
    # The flags can disagree with the CPUID onnxruntime reads (VMs, emulators): ask the kernel.
    from edge_runtime._int8_probe import probe_int8_gemm

    measured = probe_int8_gemm()
    if measured is None:
        return device
    if measured != device.int8_gemm:
        log.warning(
            "/proc/cpuinfo's flags suggest an %s INT8 GEMM, but onnxruntime's computes %s "
            "here (a VM or emulator hiding CPU features?): using what it computes",
            device.int8_gemm, measured,
        )
    return dataclasses.replace(device, int8_gemm=measured, int8_gemm_source="measured by onnxruntime")


def detect(root: str | os.PathLike = "/", measure_int8: bool = True) -> DeviceInfo:
    """This device (root "/", cached per process), or a recorded sample under `root`.

    measure_int8=False skips measuring onnxruntime's INT8 GEMM on this x86 device (a session
    and a run: ~5 ms of a cold load) for callers that read cores, memory or backends only;
    its `int8_gemm` is then what the CPU flags say (`int8_gemm_source` "CPU flags").

    The cache holds for the process: CPUs, RAM size and board do not change while it runs.
    `ram_available_mb` is therefore a snapshot from the first call; `available_mb()` reads the
    current value where it matters (memory fit does)."""
    path = Path(root)
    if path.resolve() == Path("/"):
        return _detect_real() if measure_int8 else _detect_real_unmeasured()
    return _detect(path, real=False)


# -- target profile ------------------------------------------------------------------------------


def target_facts(device: DeviceInfo) -> dict[str, Any]:
    """The facts `targets.detect_target` matches profiles on, from this reader."""
    return {
        "arch": device.arch,
        "cpu_flags": set(device.isa_features),
        "device_model": device.board or "",
    }


def match_profile(device: DeviceInfo) -> tuple[str | None, str]:
    """(profile id, reason) by the targets' [detect] rules (as `edge-convert --target auto`)."""
    import targets

    if not hasattr(targets, "detect_target"):  # e.g. a targets.py in the working directory
        return None, (f"the module 'targets' found first ({getattr(targets, '__file__', '?')}) is not "
                      "edge_runtime's target profiles: rename that file or run from another directory")
    facts = target_facts(device)
    try:
        profile = targets.detect_target(facts)
    except targets.UnknownTargetError as exc:
        return None, str(exc)
    detect_rule = profile.detect
    why = [f"arch {device.arch}"]
    if detect_rule.cpu_flags:
        why.append("CPU flags " + " ".join(detect_rule.cpu_flags))
    hits = [s for s in detect_rule.device_model if s in facts["device_model"]]
    if hits:
        why.append(f"board {device.board!r} contains {hits[0]!r}")
    elif detect_rule.files:
        present = [f for f in detect_rule.files if Path(f).exists()]
        why.append(f"{present[0]} present" if present else "")
    reason = f"{', '.join(w for w in why if w)} (priority {detect_rule.priority})"
    others = [
        p.id
        for p in targets.list_profiles()
        if p.id != profile.id and targets._matches(p.detect, facts)
    ]
    if others:
        reason += f"; also matches {', '.join(others)} (lower priority)"
    return profile.id, reason

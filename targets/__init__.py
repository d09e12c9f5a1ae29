"""Device target profiles: one TOML file per target in this folder, loaded into frozen dataclasses.

Both sides read these: converters decide what to emit, edge_runtime decides how to run it.
Only the standard library is used here, so the device wheel can ship this package as is.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    # vermin (tests/test_python310.py) does not see this fallback, hence the marker: 3.10 takes
    # the except branch, and the device wheel requires tomli there (build_runtime_wheel.py).
    import tomllib  # novermin
except ModuleNotFoundError:  # 3.10 (Jetson Orin's JetPack 6 is Ubuntu 22.04): the same parser, from PyPI
    import tomli as tomllib

__all__ = [
    "PROFILE_SCHEMA_VERSION",
    "AccuracyFloor",
    "BackendSpec",
    "Int8Scheme",
    "TfliteOptions",
    "ProfileError",
    "TargetProfile",
    "UnknownTargetError",
    "detect_target",
    "list_profiles",
    "load_profile",
]

PROFILE_SCHEMA_VERSION = 1
_DIR = Path(__file__).resolve().parent


class ProfileError(ValueError):
    """A profile file is malformed (our bug or a hand-edited profile)."""


class UnknownTargetError(ValueError):
    """The user named a target id that has no profile."""


@dataclass(frozen=True)
class Hardware:
    arch: str
    isa_features: tuple[str, ...]
    cores: int  # 0: varies; count at run time
    ram_mb: int  # 0: varies
    notes: str = ""


@dataclass(frozen=True)
class Detect:
    arch: str
    cpu_flags: tuple[str, ...] = ()
    device_model: tuple[str, ...] = ()  # substrings of /proc/device-tree/model
    files: tuple[str, ...] = ()  # any of these existing also identifies the device
    priority: int = 0


@dataclass(frozen=True)
class OnnxOptions:
    opset: int
    fusion: bool
    graph_optimization_level: str  # disabled | basic | extended | all
    # onnxruntime session-time fusions the quantized artifacts are built to avoid, where they are
    # slower on this CPU (converters/onnx/keep_layernorm_unfused.py): "SkipLayerNormalization".
    keep_unfused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in ("disabled", "basic", "extended", "all"):
            raise ProfileError(f"graph_optimization_level {self.graph_optimization_level!r}")
        unknown = sorted(set(self.keep_unfused) - {"SkipLayerNormalization"})
        if unknown:
            raise ProfileError(f"onnx.keep_unfused {unknown}; allowed: SkipLayerNormalization")


@dataclass(frozen=True)
class Int8Scheme:
    mode: str  # dynamic | static
    activation_type: str  # uint8 | int8
    weight_type: str  # uint8 | int8
    per_channel: bool
    reduce_range: bool
    quant_format: str  # operator | qdq
    calibration_method: str  # minmax | percentile | entropy
    embeddings: str = "fp32"  # fp32 | int8-per-row: how large embedding tables are stored
    # gptq: integer weights chosen to minimise each layer's output error on the calibration
    # texts (converters/core/gptq.py); nearest: onnxruntime's round-to-nearest.
    weight_rounding: str = "gptq"
    # > 0: full 8-bit weight codes with |q[2k]| + |q[2k+1]| <= pair_sum_limit in every output
    # column, the scale set by the column's largest pair sum. For kernels that add adjacent u8 x s8
    # products into a saturating int16 (AVX2's VPMADDUBSW): 255 * 128 < 32767 makes the sum exact
    # with a finer grid than reduce_range's 7 bits. 0: the plain range (reduce_range or 8 bits).
    pair_sum_limit: int = 0
    # How the target's INT8 GEMM accumulates, which the converter validates artifacts with:
    # int32:     exact (VNNI, AMX, ARM64, TensorRT). On a workstation whose own kernel saturates
    #            (x86 without VNNI), candidates run through converters/core/exact_integer_ops.py.
    # s16-pairs: adjacent u8 x s8 products summed into a saturating int16 (AVX2's VPMADDUBSW);
    #            needs pair_sum_limit, which makes that sum exact, so every host computes the
    #            target's numbers.
    arithmetic: str = "int32"
    notes: str = ""

    def __post_init__(self) -> None:
        checks = {
            "weight_rounding": (self.weight_rounding, ("gptq", "nearest")),
            "mode": (self.mode, ("dynamic", "static")),
            "activation_type": (self.activation_type, ("uint8", "int8")),
            "weight_type": (self.weight_type, ("uint8", "int8")),
            "quant_format": (self.quant_format, ("operator", "qdq")),
            "calibration_method": (self.calibration_method, ("minmax", "percentile", "entropy")),
            "embeddings": (self.embeddings, ("fp32", "int8-per-row")),
            "arithmetic": (self.arithmetic, ("int32", "s16-pairs")),
        }
        for key, (value, allowed) in checks.items():
            if value not in allowed:
                raise ProfileError(f"int8.{key} = {value!r}; allowed: {', '.join(allowed)}")
        if self.weight_rounding == "gptq" and self.weight_type != "int8":
            raise ProfileError("int8.weight_rounding = 'gptq' needs symmetric int8 weights (weight_type = 'int8')")
        if self.pair_sum_limit:
            if not 2 <= self.pair_sum_limit <= 128:  # 255 x limit must fit an int16 (32767)
                raise ProfileError(f"int8.pair_sum_limit = {self.pair_sum_limit}; allowed: 0 (off) or 2..128 "
                                   "(u8 activations x a pair must fit a saturating int16)")
            if self.weight_rounding != "gptq" or not self.per_channel:
                # The limit is enforced while GPTQ picks each code, on per-column scales.
                raise ProfileError("int8.pair_sum_limit needs weight_rounding = 'gptq' and per_channel = true")


@dataclass(frozen=True)
class Int4Scheme:
    block_size: int
    embedding_block_size: int = 128
    # How the 4-bit MatMul weights are computed with:
    # int8-gemm:   stored in 4 bits on the INT8 artifact's grid, unpacked to int8 when the session
    #              starts, run by the INT8 GEMM (converters/onnx/quantize_w4a8.py; needs int8.mode dynamic)
    # matmulnbits: onnxruntime's MatMulNBits weight-only kernels (converters/onnx/quantize_int4.py)
    kernel: str = "int8-gemm"
    accuracy_level: int = 4  # matmulnbits: 4 = INT8 activations (fastest, same accuracy)
    algorithm: str = "auto"  # matmulnbits: rtn | clip_search | auto (both, keep the better)
    size_budget: float | None = None  # max bytes vs FP32; sensitive MatMuls go 8-bit within it
    # How 4-bit embedding tables are gathered (int8-gemm kernel):
    # block-quantized: onnxruntime's GatherBlockQuantized
    # unpacked:        uint8 codes unpacked when the session starts, gathered and scaled by plain
    #                  ops (converters/onnx/gather_tables_unpacked.py); the file stays 4-bit
    table_gather: str = "block-quantized"
    notes: str = ""

    def __post_init__(self) -> None:
        if self.kernel not in ("int8-gemm", "matmulnbits"):
            raise ProfileError(f"int4.kernel = {self.kernel!r}; allowed: int8-gemm, matmulnbits")
        if self.table_gather not in ("block-quantized", "unpacked"):
            raise ProfileError(f"int4.table_gather = {self.table_gather!r}; "
                               "allowed: block-quantized, unpacked")


@dataclass(frozen=True)
class TfliteOptions:
    precisions: tuple[str, ...] = ()  # empty: no TFLite artifacts
    buckets: tuple[int, ...] = (32, 64, 128, 256)  # one signature per padded sequence length
    recipes: dict[str, str] = field(default_factory=dict)  # precision -> recipe (quantize_tflite.RECIPES)
    # precision -> recipe of an extra artifact for devices running tflite-runtime 2.14 (numpy<2,
    # no newer op versions, wrong per-channel dynamic INT8); empty: none
    legacy_recipes: dict[str, str] = field(default_factory=dict)
    # For the calibrated INT4 recipe (gptq_wi4b32_afp32): max bytes of the artifact / bytes of
    # the FP32 .tflite, filled with INT8 weights by measured sensitivity. None: all INT4.
    int4_size_budget: float | None = None
    notes: str = ""

    def __post_init__(self) -> None:
        if self.int4_size_budget is not None and not 0.0 < self.int4_size_budget <= 1.0:
            raise ProfileError(f"[tflite] int4_size_budget {self.int4_size_budget} must be in (0, 1]")


@dataclass(frozen=True)
class PruningOptions:
    """Structured pruning (converters/pruning/): pruned twins of some planned artifacts, judged
    against their own floor (removing heads and neurons costs more accuracy than rounding)."""

    default: str = "off"  # "off" | "auto": what edge-convert does without --prune
    artifacts: tuple[str, ...] = ()  # planned artifact names that get a "-pruned" twin
    cosine_mean: float = 0.97  # the pruned artifacts' floor, against the unpruned PyTorch FP32
    cosine_min: float = 0.85
    top1_agreement: float = 0.97
    max_heads: float = 0.5  # --prune auto removes at most these shares
    max_ffn: float = 0.75
    # --prune auto keeps the pruned FP32 model this far above the floor, for quantization
    margin: float = 0.003
    # Whether a pruned twin's ONNX INT8/INT4 graph gives token 0 its own activation scale
    # (converters/onnx/split_first_token.py): "all" its MatMuls, as the unpruned artifacts, or "none".
    first_token_split: str = "all"
    notes: str = ""

    def __post_init__(self) -> None:
        if self.default not in ("off", "auto"):
            raise ProfileError(f"[pruning] default {self.default!r}: expected 'off' or 'auto'")
        if self.first_token_split not in ("all", "none"):
            raise ProfileError(f"[pruning] first_token_split {self.first_token_split!r}: expected 'all' or 'none'")
        for name in ("max_heads", "max_ffn"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ProfileError(f"[pruning] {name} {getattr(self, name)} must be in [0, 1)")
        fp32 = [a for a in self.artifacts if a.endswith("-fp32")]
        if fp32:
            raise ProfileError(f"[pruning] artifacts {fp32}: pruned twins are quantized artifacts only")

    @property
    def floor(self) -> "AccuracyFloor":
        return AccuracyFloor(self.cosine_mean, self.cosine_min, self.top1_agreement)


@dataclass(frozen=True)
class BackendSpec:
    name: str  # onnxruntime | litert
    execution_providers: tuple[str, ...] = ()
    provider_options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Threads:
    intra_op: int  # 0: one per physical core
    inter_op: int
    notes: str = ""


@dataclass(frozen=True)
class AccuracyFloor:
    cosine_mean: float
    cosine_min: float
    top1_agreement: float
    # Per-precision floors that differ from the default, e.g. {"int4": {"cosine_mean": 0.98, ...}}.
    by_precision: dict[str, dict[str, float]] = field(default_factory=dict)

    def for_precision(self, precision: str) -> "AccuracyFloor":
        override = self.by_precision.get(precision, {})
        return AccuracyFloor(
            cosine_mean=override.get("cosine_mean", self.cosine_mean),
            cosine_min=override.get("cosine_min", self.cosine_min),
            top1_agreement=override.get("top1_agreement", self.top1_agreement),
        )


@dataclass(frozen=True)
class RuntimeHints:
    artifact_preference: tuple[str, ...]  # precisions, best first
    notes: str = ""


@dataclass(frozen=True)
class TargetProfile:
    id: str
    name: str
    hardware: Hardware
    detect: Detect
    formats: tuple[str, ...]
    precisions: tuple[str, ...]
    onnx: OnnxOptions
    int8: Int8Scheme
    int4: Int4Scheme
    tflite: TfliteOptions
    backends: tuple[BackendSpec, ...]
    threads: Threads
    accuracy: AccuracyFloor
    runtime: RuntimeHints
    source: str  # the file it came from
    pruning: PruningOptions = PruningOptions()

    def __post_init__(self) -> None:
        if self.int8.pair_sum_limit and self.onnx.fusion:
            # Fused Attention weights are quantized by onnxruntime alone, outside the pair limit.
            raise ProfileError(f"{self.source}: int8.pair_sum_limit needs onnx.fusion = false")
        if self.int8.arithmetic == "s16-pairs" and not self.int8.pair_sum_limit and "int8" in self.precisions:
            # Unconstrained 8-bit weights overflow the int16 pair sums on the target itself.
            raise ProfileError(f"{self.source}: int8.arithmetic = 's16-pairs' needs int8.pair_sum_limit (e.g. 128)")
        if ("int4" in self.precisions and self.int4.kernel == "int8-gemm" and self.int8.arithmetic == "s16-pairs"
                and not self.int8.reduce_range):
            # W4A8's 8-bit expansions are not pair-limited: 7-bit codes keep the int16 sums exact.
            raise ProfileError(f"{self.source}: int4 on the int8-gemm kernel with int8.arithmetic 's16-pairs' "
                               "needs int8.reduce_range = true")
        if "int4" in self.precisions and self.int4.kernel == "int8-gemm" and self.int8.mode != "dynamic":
            raise ProfileError(
                f"{self.source}: int4.kernel 'int8-gemm' runs on the dynamic INT8 graph, but "
                f"int8.mode is {self.int8.mode!r}; use kernel 'matmulnbits' or drop int4"
            )

        planned = ([f"onnx-{p}" for p in self.precisions] if "onnx" in self.formats else []) + (
            [f"tflite-{p}" for p in self.tflite.precisions] if "tflite" in self.formats else [])
        unplanned = [a for a in self.pruning.artifacts if a not in planned]
        if unplanned:
            raise ProfileError(f"{self.source}: [pruning] artifacts {unplanned} are not planned by [emit] / "
                               f"[tflite] (planned: {', '.join(planned)})")

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the manifest."""
        return dataclasses.asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build a dataclass from a TOML table, naming unknown or missing keys in the error."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ProfileError(f"{where}: unknown keys {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ProfileError(f"{where}: {exc}") from None


def _parse(path: Path) -> TargetProfile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{path}: not valid TOML: {exc}") from None
    if raw.get("schema_version") != PROFILE_SCHEMA_VERSION:
        raise ProfileError(
            f"{path}: schema_version {raw.get('schema_version')!r}, "
            f"this code reads {PROFILE_SCHEMA_VERSION}"
        )
    if raw.get("id") != path.stem:
        raise ProfileError(f"{path}: id {raw.get('id')!r} must match the file name {path.stem!r}")
    where = path.name
    try:
        emit = raw["emit"]
        return TargetProfile(
            id=raw["id"],
            name=raw["name"],
            hardware=_build(Hardware, raw["hardware"], f"{where} [hardware]"),
            detect=_build(Detect, raw["detect"], f"{where} [detect]"),
            formats=tuple(emit["formats"]),
            precisions=tuple(emit["precisions"]),
            onnx=_build(OnnxOptions, raw["onnx"], f"{where} [onnx]"),
            int8=_build(Int8Scheme, raw["int8"], f"{where} [int8]"),
            int4=_build(Int4Scheme, raw["int4"], f"{where} [int4]"),
            tflite=_build(TfliteOptions, raw.get("tflite", {}), f"{where} [tflite]"),
            backends=tuple(
                _build(BackendSpec, b, f"{where} [[backends]]") for b in raw["backends"]
            ),
            threads=_build(Threads, raw["threads"], f"{where} [threads]"),
            accuracy=_build(AccuracyFloor, raw["accuracy"], f"{where} [accuracy]"),
            runtime=_build(RuntimeHints, raw["runtime"], f"{where} [runtime]"),
            source=path.name,
            pruning=_build(PruningOptions, raw.get("pruning", {}), f"{where} [pruning]"),
        )
    except KeyError as exc:
        raise ProfileError(f"{where}: missing required key {exc}") from None


@cache
def _all_profiles() -> dict[str, TargetProfile]:
    profiles: dict[str, TargetProfile] = {}
    for path in sorted(_DIR.glob("*.toml")):
        profile = _parse(path)
        if profile.id in profiles:  # registries raise on duplicates
            raise ProfileError(f"duplicate target id {profile.id!r} in {path}")
        profiles[profile.id] = profile
    return profiles


def list_profiles() -> list[TargetProfile]:
    """All known profiles, sorted by id."""
    return list(_all_profiles().values())


def load_profile(target_id: str) -> TargetProfile:
    """The profile for `target_id`; `"auto"` detects this machine's."""
    if target_id == "auto":
        return detect_target()
    profiles = _all_profiles()
    if target_id not in profiles:
        raise UnknownTargetError(
            f"unknown target {target_id!r}; known targets: {', '.join(sorted(profiles))} "
            "(or 'auto' to detect this machine)"
        )
    return profiles[target_id]


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def machine_facts(root: str | Path = "/") -> dict[str, Any]:
    """What detection looks at: CPU architecture, CPU feature flags, board model.

    The same facts as edge_runtime._device.target_facts(detect(root)), which is the reader the
    runtime and `edge-convert --target auto` use (tests/test_device.py checks both agree on every
    recorded device); this package cannot import edge_runtime, so it keeps this small copy."""
    base = Path(root)
    blocks = [b for b in _read(str(base / "proc/cpuinfo")).split("\n\n") if b.strip()]
    per_cpu, extra = [], {}
    for block in blocks:
        lines = (line.partition(":") for line in block.splitlines())
        pairs = {k.strip(): v.strip() for k, _, v in lines}
        if pairs.get("processor", "").isdigit():
            per_cpu.append(pairs)
        else:  # ARM kernels put board lines (Hardware, Revision, Model) in a block of their own
            extra.update(pairs)
    if base.resolve() == Path("/") or not per_cpu:
        arch = platform.machine().lower()
    else:
        first_cpu = per_cpu[0]
        arch = "aarch64" if "CPU implementer" in first_cpu else "x86_64" if "flags" in first_cpu else ""
    arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(arch, arch)
    # x86 lists "flags", ARM "Features"; only flags every core has count (threads migrate).
    sets = [set(b.get("flags", b.get("Features", "")).lower().split()) for b in per_cpu]
    sets = [f for f in sets if f]
    flags = set.intersection(*sets) if sets else set()
    model = ""
    # /proc/device-tree first (qemu-user's QEMU_LD_PREFIX redirects it to a sysroot's file).
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        model = model or _read(str(base / rel)).strip("\x00\n ")
    model = model or extra.get("Model", "")
    if not model and _read(str(base / "etc/nv_tegra_release")):
        first = _read(str(base / "etc/nv_tegra_release")).splitlines()[0]
        major = first.lstrip("# ").split(" ", 1)[0]
        revision = next((v.strip() for k, _, v in (p.partition(":") for p in first.split(","))
                         if k.strip() == "REVISION"), "")
        release = f"{major}.{revision}" if revision else major
        release = release if major.startswith("R") else "unknown"
        model = f"NVIDIA Jetson (L4T {release})"
    return {"arch": arch, "cpu_flags": flags, "device_model": model}


def _matches(detect: Detect, facts: dict[str, Any]) -> bool:
    if detect.arch != facts["arch"]:
        return False
    if not set(detect.cpu_flags) <= facts["cpu_flags"]:
        return False
    if detect.device_model or detect.files:
        by_model = any(s in facts["device_model"] for s in detect.device_model)
        by_file = any(Path(f).exists() for f in detect.files)
        return by_model or by_file
    return True


def detect_target(facts: dict[str, Any] | None = None) -> TargetProfile:
    """The most specific profile matching this machine (highest `detect.priority`)."""
    facts = machine_facts() if facts is None else facts
    candidates = [p for p in list_profiles() if _matches(p.detect, facts)]
    if not candidates:
        raise UnknownTargetError(
            f"no target profile matches this machine (arch {facts['arch']}, "
            f"model {facts['device_model'] or 'unknown'}); the profiles: "
            f"{', '.join(p.id for p in list_profiles())}"
        )
    return max(candidates, key=lambda p: p.detect.priority)

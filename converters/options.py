"""What a conversion is asked to do (ConvertConfig: the library's form of edge-convert's flags)
and the checks of it that need no model, text or export: a bad option fails before any work
(convert() runs them first; convert_targets runs them for every target before the stages the
targets share), with the profile as the options override it."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from converters._artifacts import BUILDERS, MIN_RUNTIME
from converters._errors import ConversionError
from converters.core.arithmetic import MODES as ARITHMETIC_MODES
from converters.core.arithmetic import choose_validation
from converters.inputs.calibration import MAX_FIT_TEXTS, MAX_VALIDATION_TEXTS, check_cap
from converters.inputs.plan import plan
from converters.packaging import package, signing
from converters.pruning.prune_model import PruneRequest
from edge_runtime._bench_config import DEFAULT_SHAPE
from targets import AccuracyFloor, ProfileError, TargetProfile, UnknownTargetError, load_profile

__all__ = ["ConvertConfig", "prepare", "prune_request"]


@dataclass(frozen=True)
class ConvertConfig:
    model: Path | None  # None: the built-in all-MiniLM-L6-v2
    target: str
    out: Path
    task: str | None = None
    calibration: Path | None = None  # None: the built-in English texts
    # Texts the artifacts are validated on. None: a deterministic quarter of the calibration texts
    # (converters/inputs/calibration.py); either way no fitting step sees them.
    validation_texts: Path | None = None
    accuracy_floor: float | None = None  # the cosine_mean / top1 floor; the profile's other floors move by as much
    calibration_method: str | None = None  # overrides the profile's static-INT8 calibration method
    force: bool = False
    # Timed runs per artifact, spread over latency_rounds interleaved rounds: 8 rounds of 5 gave the
    # steadiest ratios of the shapes tried on a noisy shared VM (benchmarks/RESULTS.md run AB).
    latency_runs: int = 40
    latency_rounds: int = 8
    latency_seq: int = DEFAULT_SHAPE.seq
    # Whose INT8 arithmetic candidates are scored with (converters/core/arithmetic.py): "auto" the
    # target's whatever this machine's is; "exact" always the exact int32 reference; "host" this
    # machine's kernels (diagnostics only).
    arithmetic: str = "auto"
    # EC private key (PEM): sign the finished directory as model.sig (converters/packaging/signing.py)
    sign_key: Path | None = None
    # Structured pruning: "heads=R,ffn=R", "auto" or "off"; None: the profile's [pruning] default.
    # Pruned twins of the profile's [pruning] artifacts are built next to the unpruned ones.
    prune: str | None = None
    prune_floor: float | None = None  # overrides the profile's pruning cosine_mean / top1 floor
    # Knowledge distillation of the pruned model from the unpruned one (converters/pruning/distill.py)
    distill_steps: int = 0
    # At most this many fit / validation texts: a deterministic sample of a larger file (None:
    # every text; converters/inputs/calibration.py's MAX_FIT_TEXTS says why a cap by default).
    max_fit_texts: int | None = MAX_FIT_TEXTS
    max_validation_texts: int | None = MAX_VALIDATION_TEXTS

    def __post_init__(self) -> None:
        """Paths may come as str (as `model` always could); every other wrong type is a
        ConversionError naming the parameter, not an AttributeError deep in a conversion (out="dir"
        wrote the whole output and then failed)."""
        for name in ("model", "out", "calibration", "validation_texts", "sign_key"):
            value = getattr(self, name)
            if value is None and name != "out":
                continue
            if not isinstance(value, (str, os.PathLike)) or value == "":
                raise ConversionError(f"{name} must be a path (str or os.PathLike), got {value!r}")
            object.__setattr__(self, name, Path(value))
        kinds = {"target": (str,), "task": (str, type(None)), "prune": (str, type(None)),
                 "calibration_method": (str, type(None)), "arithmetic": (str,), "force": (bool,)}
        numbers = {"accuracy_floor": True, "prune_floor": True, "distill_steps": False,
                   "latency_runs": False, "latency_rounds": False, "latency_seq": False}
        for name, types in kinds.items():
            if not isinstance(getattr(self, name), types):
                wanted = " or ".join("None" if t is type(None) else t.__name__ for t in types)
                raise ConversionError(f"{name} must be {wanted}, got {getattr(self, name)!r}")
        for name, optional_float in numbers.items():
            value = getattr(self, name)
            allowed = (int, float) if optional_float else (int,)
            if (value is None and optional_float) or (isinstance(value, allowed) and not isinstance(value, bool)):
                continue
            raise ConversionError(f"{name} must be {'a number or None' if optional_float else 'an integer'}, "
                                  f"got {value!r}")
        check_cap("max_fit_texts", self.max_fit_texts)
        check_cap("max_validation_texts", self.max_validation_texts)

    def inputs(self) -> dict[str, Path | None]:
        """What this conversion reads, by what it is (None: not given): force never deletes them."""
        return {"the source model": self.model, "the calibration texts": self.calibration,
                "the validation texts": self.validation_texts, "the signing key": self.sign_key}


def _floor(floor: AccuracyFloor, override: float | None, name: str = "accuracy_floor") -> AccuracyFloor:
    if override is None:
        return floor
    if not 0.0 < override < 1.0:  # 1.0 is unreachable: float arithmetic rounds, even in FP32
        raise ConversionError(f"{name} must be above 0 and below 1, got {override}")
    # The override sets the mean-cosine / top-1 floor; every other floor of the profile (the
    # per-sample minimum, the per-precision floors such as INT4's lower ones) moves by as much,
    # so lowering the floor never makes any precision's floor stricter, and raising it raises all.
    shift = override - floor.cosine_mean
    shift_top1 = override - floor.top1_agreement

    def moved(value: float, by: float) -> float:  # within [0, 1): a floor of 1 is unreachable
        return min(max(0.0, value + by), 0.999999)

    by_precision = {
        precision: {key: moved(value, shift_top1 if key == "top1_agreement" else shift)
                    for key, value in floors.items()}
        for precision, floors in floor.by_precision.items()}
    return AccuracyFloor(cosine_mean=override, cosine_min=moved(floor.cosine_min, shift), top1_agreement=override,
                         by_precision=by_precision)


def prune_request(config: ConvertConfig, profile: TargetProfile) -> PruneRequest | None:
    request = PruneRequest.parse(config.prune if config.prune is not None else profile.pruning.default)
    if config.distill_steps < 0:
        raise ConversionError(f"distill_steps must be a number of steps >= 0, got {config.distill_steps}")
    if config.distill_steps and request is None:
        raise ConversionError(f"distill_steps={config.distill_steps} distils a pruned model: pass prune=... too")
    if config.prune_floor is not None and request is None:  # else it would be ignored without a word
        raise ConversionError(f"prune_floor={config.prune_floor} is the pruned artifacts' floor, and nothing is "
                              f"pruned for {profile.id}: pass prune=... too")
    if request is not None and not profile.pruning.artifacts:
        raise ConversionError(f"profile {profile.id} names no artifacts to prune ([pruning] artifacts)")
    if request is not None and request.auto and profile.pruning.max_heads == profile.pruning.max_ffn == 0.0:
        raise ConversionError(f"prune=auto may remove nothing for {profile.id}: its [pruning] max_heads and max_ffn "
                              "are both 0; raise them in the profile, or give fixed shares (prune=heads=R,ffn=R)")
    if request is not None and request.auto:
        # auto keeps steps whose pruned FP32 model holds the floor plus a margin for quantization:
        # at 1 or more that is exact equality, which no pruned model reaches.
        floor, margin = profile.pruning.floor, profile.pruning.margin
        highest = max(floor.cosine_mean, floor.top1_agreement)
        if highest + margin >= 1.0:
            raise ConversionError(
                f"prune=auto keeps a step only above the pruning floor plus a margin of {margin:g} for "
                f"quantization; a floor of {highest:g} leaves no room below 1: give prune_floor at most "
                f"{1.0 - margin - 0.001:.3f}, or fixed shares (prune=heads=R,ffn=R)")
    return request


def prepare(config: ConvertConfig):
    """Every check of `config` that needs no model, text or export, so that a bad option fails
    before any work (convert_targets runs it for every target before the shared stages):
    (profile as overridden, signing key, accuracy floor, prune request, arithmetic choice)."""
    try:
        profile = load_profile(config.target)
    except (UnknownTargetError, ProfileError) as exc:  # the library's callers catch ConversionError
        raise ConversionError(f"target={config.target!r}: {exc}") from None
    # Read the key first: a missing or wrong key must not cost a whole conversion.
    sign_key = signing.load_signing_key(config.sign_key) if config.sign_key is not None else None
    if config.calibration_method is not None:
        if profile.int8.mode != "static":
            raise ConversionError(
                f"calibration_method applies to static INT8; profile {profile.id} quantizes "
                f"activations dynamically (int8.mode = {profile.int8.mode!r})"
            )
        profile = dataclasses.replace(
            profile, int8=dataclasses.replace(profile.int8, calibration_method=config.calibration_method)
        )
    floor = _floor(profile.accuracy, config.accuracy_floor)
    if config.prune_floor is not None:
        floor_p = _floor(profile.pruning.floor, config.prune_floor, "prune_floor")
        profile = dataclasses.replace(profile, pruning=dataclasses.replace(
            profile.pruning, cosine_mean=floor_p.cosine_mean, cosine_min=floor_p.cosine_min,
            top1_agreement=floor_p.top1_agreement))
    request = prune_request(config, profile)  # a bad request fails before any work
    package.check_output(config.out, config.force, config.inputs())  # ... and an output it may not write
    if config.arithmetic not in ARITHMETIC_MODES:
        raise ConversionError(f"arithmetic={config.arithmetic!r}; expected one of {', '.join(ARITHMETIC_MODES)}")
    if config.latency_runs < 1 or config.latency_rounds < 1:
        raise ConversionError(f"latency_runs={config.latency_runs}, latency_rounds={config.latency_rounds}: "
                              "each must be at least 1 (every artifact is timed)")
    validation = choose_validation(profile, config.arithmetic)
    unsupported = [p.name for p in plan(profile) if (p.format, p.precision) not in BUILDERS
                   or (p.format, p.precision, p.variant) not in MIN_RUNTIME]
    if unsupported:
        raise ConversionError(
            f"profile {profile.id} asks for {unsupported}; this version builds "
            f"{', '.join(f'{f}-{p}' for f, p in BUILDERS)}"
        )
    return profile, sign_key, floor, request, validation



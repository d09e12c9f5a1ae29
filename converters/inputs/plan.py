"""What a target profile asks the converter for: the planned artifacts, in order.

Read by the preflight check (disk space for each planned artifact) and by the pipeline, which
builds them (converters/_artifacts.py has one builder per format and precision).
"""

from __future__ import annotations

from dataclasses import dataclass

from targets import TargetProfile

__all__ = ["Planned", "plan", "pruned_plan"]


@dataclass(frozen=True)
class Planned:
    """One artifact the profile asks for."""

    format: str
    precision: str
    variant: str = ""  # "legacy": for devices with tflite-runtime 2.14 (see the profile's notes)
    pruned: bool = False  # built from the pruned model (converters/pruning/), named "...-pruned"

    @property
    def name(self) -> str:
        return (f"{self.format}-{self.precision}" + (f"-{self.variant}" if self.variant else "")
                + ("-pruned" if self.pruned else ""))


def plan(profile: TargetProfile) -> list[Planned]:
    """ONNX artifacts in the profile's precisions, then TFLite ones (and legacy variants)."""
    planned = [Planned("onnx", p) for p in profile.precisions] if "onnx" in profile.formats else []
    if "tflite" in profile.formats:
        planned += [Planned("tflite", p) for p in profile.tflite.precisions]
        planned += [Planned("tflite", p, "legacy") for p in profile.tflite.legacy_recipes]
    return planned


def pruned_plan(profile: TargetProfile) -> list[Planned]:
    """The pruned twins the profile's [pruning] section names, in plan order."""
    return [Planned(p.format, p.precision, p.variant, pruned=True) for p in plan(profile)
            if p.name in profile.pruning.artifacts]

"""The pruned twins' stage of edge-convert's pipeline (converters/pipeline.py): the Step they are
built with, and what is recorded when they cannot be.

Twins are optional: by the time they are built, the unpruned artifacts are built and verified
(minutes on a real model). So whatever stops the twins short of a bug in our code (auto finding
no step that keeps the floor, a pruned model already below it, any ConversionError of the
pruning, its export or the export's check) refuses every twin with the reason, in the manifest's
`refused` and on the console, and the unpruned artifacts are still delivered. An exception that
is not a ConversionError is a bug and still ends the conversion.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from converters._errors import AccuracyError, ConversionError
from converters._step import Step, open_session
from converters.core.validate import compute_metrics, floor_failures
from converters.inputs.plan import pruned_plan
from converters.pruning.prune_model import PruneRequest
from targets import TargetProfile

__all__ = ["PRUNED_EXPORT_TOLERANCE", "TWIN_ADVICE", "not_built", "pruned_step", "twin_reason"]

Progress = Callable[[str], None]

# The pruned ONNX export must score what the pruned PyTorch model scored (an export check, like
# the unpruned FP32 export's against its floor): a larger difference is an export bug.
PRUNED_EXPORT_TOLERANCE = 1e-3

# What changes a pruned twin's verdict: it is held to the pruning floor, so accuracy_floor does
# not apply to it, and it has no FP32 form to fall back to.
TWIN_ADVICE = ("a pruned twin is held to the pruning floor: lower prune_floor, remove smaller shares (prune=...) "
               "or distil the pruned model (distill_steps=N)")


def twin_reason(reason: str) -> str:
    """A twin's refusal from a builder's: with the advice that applies to twins when the builder's
    is about the floor (the ONNX INT8 search's names prune_floor already for "-pruned" names;
    size-budget and non-finite refusals are not about the floor and keep their own)."""
    if "floor" not in reason or "prune_floor" in reason:
        return reason
    return f"{reason} ({TWIN_ADVICE})"


def _refuse_twins(step: Step, profile: TargetProfile, refused: list[dict[str, Any]], reason: str,
                  pruning: dict[str, Any] | None = None) -> None:
    step.progress(f"[pruned] REFUSED: {reason}")
    # With the pruning record when there is one (plan, FLOPs, generalization, distillation): what
    # the user chooses smaller shares or distillation from, minutes of work not lost with the terminal.
    refused.extend({"name": p.name, "format": p.format, "precision": p.precision, "reason": reason,
                    **({"pruning": pruning} if pruning is not None else {})} for p in pruned_plan(profile))


def pruned_step(shared: Any, step: Step, profile: TargetProfile, request: PruneRequest,
                refused: list[dict[str, Any]], distill_steps: int) -> tuple[Step, Any, dict[str, int]] | None:
    """(the Step the pruned twins are built with: the pruned source, its export, the pruning floor,
    the unpruned references; the SharedInputs around the pruned source; its fused ops), or None
    when the twins cannot be built: then every twin is recorded in `refused` with the reason (see
    the module docstring). `shared`: converters/_shared.SharedInputs."""
    try:
        pruned = shared.pruned(request, profile.pruning, step.progress, distill_steps)
    except AccuracyError as exc:
        _refuse_twins(step, profile, refused, str(exc))
        return None
    except ConversionError as exc:  # e.g. nothing to remove: the twins, not the conversion, fail
        _refuse_twins(step, profile, refused, f"pruning failed: {exc}")
        return None
    below = floor_failures(pruned.pruning["pytorch_metrics"], profile.pruning.floor)
    if below:  # no quantization search can make up what the pruned FP32 model already lost
        _refuse_twins(step, profile, refused,
                      f"the pruned PyTorch FP32 model is already below the pruning floor ({'; '.join(below)}): "
                      "remove smaller shares (prune=...), distil (distill_steps=N) or lower prune_floor",
                      pruned.pruning)
        return None
    try:
        fp32_path, fused_ops = pruned.onnx_export(profile, step.progress)
        work = step.work / "pruned"
        work.mkdir(parents=True, exist_ok=True)
        onnx = compute_metrics(pruned.source, step.reference, open_session("onnx", fp32_path).run, "pruned ONNX FP32")
        differ = [f"{k}: PyTorch {v:.6f}, ONNX {onnx.get(k, float('nan')):.6f}"
                  for k, v in pruned.pruning["pytorch_metrics"].items()
                  if not abs(v - onnx.get(k, float("nan"))) <= PRUNED_EXPORT_TOLERANCE]
        if differ:
            raise ConversionError("the ONNX export of the pruned model disagrees with the pruned PyTorch model ("
                                  + "; ".join(differ) + "): an export bug, please report it with the model config")
    except ConversionError as exc:
        _refuse_twins(step, profile, refused, f"the pruned model's ONNX export or its check failed: {exc}",
                      pruned.pruning)
        return None
    return (dataclasses.replace(step, source=pruned.source, floor=profile.pruning.floor, work=work,
                                fp32_path=fp32_path, cache=pruned.cache, exports=pruned.work, pruned=True),
            pruned, fused_ops)


def not_built(profile: TargetProfile, stage: Path, entries: list[dict], refused: list[dict],
              progress: Progress) -> None:
    """Record the pruned twins an interruption left unbuilt (in the manifest's `refused`, with why)
    and remove what the one being packaged had written (NAME.* and golden/NAME.npz)."""
    done = {entry["name"] for entry in entries} | {entry["name"] for entry in refused}
    for planned in pruned_plan(profile):
        if planned.name not in done:
            for path in [*stage.glob(f"{planned.name}.*"), stage / "golden" / f"{planned.name}.npz"]:
                path.unlink(missing_ok=True)
            refused.append({"name": planned.name, "format": planned.format, "precision": planned.precision,
                            "reason": "not built: the conversion was interrupted (Ctrl-C or SIGTERM) while pruning"})
    progress(f"interrupted while pruning: packaging the {len(entries)} artifact(s) already built "
             "(Ctrl-C again drops them)")

"""What the targets of one edge-convert run share, computed once (`--target a,b,c` / `all`).

The source model, the fit / validation texts and their PyTorch FP32 outputs, the golden samples,
the FP32 exports (ONNX per opset and fusion, TFLite per bucket set: converters/_artifacts.py keys
those in `cache`) and every built artifact. An artifact is keyed by everything its build reads
besides these shared inputs: the profile sections its builder reads (their notes left out), its
accuracy floor and the arithmetic its candidates are scored with. Two targets with equal keys
ask for the same bytes (x86-avx512-vnni, rpi4 and rpi5 share one ONNX recipe), so the second
one packages the first one's build instead of repeating it; each target still packages, scores
through edge_runtime and golden-checks its own copy, and its manifest says where the build came
from (`built_for`).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converters._errors import AccuracyError, ConversionError
from converters._step import PLAIN_ONNX_EXPORT, Built, Step
from converters.core.validate import Reference, reference_outputs
from converters.export.export_onnx import ExportConfig, export_onnx
from converters.export.fuse_onnx import fuse_onnx, fusion_config
from converters.inputs.calibration import (MAX_FIT_TEXTS, MAX_VALIDATION_TEXTS, MIN_TEXTS, TextSplit, load_texts,
                                           split_texts)
from converters.inputs.plan import Planned, plan
from converters.inputs.source import SourceModel, encoder_dir, load_source
from converters.packaging import golden as golden_samples
from converters.pruning.prune_model import PruneRequest, prune_source
from converters.tflite.background import (
    BackgroundExport,
    background_key,
    background_unavailable,
    tflite_export_key,
    tflite_export_path,
)
from converters.tflite.export import TfliteExportConfig
from targets import PruningOptions, TargetProfile

__all__ = ["SharedInputs", "artifact_key"]

Progress = Callable[[str], None]
# The ConvertConfig fields that decide the shared inputs: the targets of one run must agree.
SHARED_FIELDS = ("model", "task", "calibration", "validation_texts", "max_fit_texts", "max_validation_texts")
# What a builder of each format reads from the profile (see converters/_artifacts.py).
_SECTIONS = {"onnx": ("onnx", "int8", "int4"), "tflite": ("tflite",)}
_PROSE = ("notes", "why", "note")  # explanations: never change a build

# Validation texts under which a classifier's top-1 agreement cannot resolve a 0.99 floor (one
# text is more than 0.01 of it): said in a note, not refused.
RESOLVING_TEXTS = 100


def _without_prose(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_prose(v) for k, v in value.items() if k not in _PROSE}
    return value


def artifact_key(profile: TargetProfile, planned: Planned, floor: dict[str, Any], arithmetic: dict[str, Any]) -> str:
    """A hash of everything the build of `planned` for `profile` reads beyond the shared inputs."""
    profile_dict = profile.to_dict()
    sections = {s: _without_prose(profile_dict.get(s)) for s in _SECTIONS[planned.format]}
    if planned.format == "tflite":
        tflite = dict(sections["tflite"] or {})
        tflite.pop("precisions", None)  # which artifacts are planned, not how one is built
        if planned.variant != "legacy":
            tflite.pop("legacy_recipes", None)
        sections["tflite"] = tflite
    scoring = {k: arithmetic.get(k) for k in ("target_int8_gemm", "host_int8_gemm", "method")}
    blob = json.dumps({"artifact": planned.name, "sections": sections, "floor": floor, "arithmetic": scoring},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _millions(count: int) -> str:
    """"22.7M", or the count itself for a model under 100k parameters (a tiny test model is not "0.0M")."""
    return f"{count / 1e6:.1f}M" if count >= 100_000 else f"{count:,}"


def _freeze_loaded_heap() -> bool:
    """Keep the cyclic garbage collector off the objects alive once the model is loaded (gc.freeze):
    torch, transformers and the model are ~400,000 objects that live for the whole run, and each
    full collection walked them all (a masked MiniLM rpi4 conversion: 28 of them, 5.6 s, a quarter
    of each ai-edge-quantizer build of a search candidate; 1.6 s frozen: benchmarks/RESULTS.md run
    BD). Frozen objects are only never *collected*; close() unfreezes them. Returns whether it
    froze: not when the process froze objects itself (gc.get_freeze_count()), whose freeze is its
    own to undo."""
    if gc.get_freeze_count():
        return False
    gc.collect()  # cyclic garbage made while loading is freed, not frozen
    gc.freeze()
    return True


# [pruning] settings that say which twins are built and how they are quantized, not how the model
# is pruned: two profiles differing only in these share one pruned model (a review found `--target
# all --prune auto` walking and distilling again for x86-avx2, whose first_token_split differs).
_NOT_HOW_TO_PRUNE = ("artifacts", "default", "first_token_split")


@dataclass
class SharedInputs:
    """Loaded once per run; references and exports on first use."""

    config_fields: dict[str, Any]
    source: SourceModel
    texts: TextSplit
    work: Path  # the run's work directory; each target builds in work/<target id>
    cache: dict[Any, Any] = field(default_factory=dict)  # exports, keyed by what made them
    # artifact_key -> (the target it was built for, the build or the AccuracyError refusing it)
    built: dict[str, tuple[str, Built | AccuracyError]] = field(default_factory=dict)
    _references: tuple[Reference, Reference] | None = None
    _samples: list | None = None
    # The manifest's "pruning" when this holds a pruned source (SharedInputs.pruned)
    pruning: dict[str, Any] | None = None
    _pruned: dict[str, SharedInputs | ConversionError] = field(default_factory=dict)
    # The export's second process when started before the model was loaded (load), until
    # start_tflite_exports gives it its export
    _early: BackgroundExport | None = None
    # Whether load() froze the objects alive after the model loaded (_freeze_loaded_heap)
    _frozen: bool = False

    @classmethod
    def load(cls, config, work: Path, progress: Progress, profiles: Sequence[TargetProfile] = ()) -> SharedInputs:
        """The inputs of `config`'s conversion; with `profiles` (the run's targets) that ship
        TFLite, the export's second process starts first and loads the model beside this one
        (start_tflite_exports then tells it what to export)."""
        # The texts first: a bad calibration file is said in a moment, not after the model loads.
        texts = split_texts(
            load_texts(config.calibration),
            None if config.validation_texts is None else load_texts(config.validation_texts, role="validation"),
            config.max_fit_texts, config.max_validation_texts,
        )
        early = None
        encoder_dir(config.model)  # an unsupported architecture is said before a second process starts
        if any(p.format == "tflite" for profile in profiles for p in plan(profile)) and background_unavailable() is None:
            progress("starting a second, low-priority process for the TFLite export (it loads the model too)")
            early = BackgroundExport(config.model, config.task)
        try:
            shared = cls._load(config, texts, work, progress)
        except BaseException:
            if early is not None:
                early.stop()
            raise
        shared._early = early
        shared._frozen = _freeze_loaded_heap()
        return shared

    @classmethod
    def _load(cls, config, texts: TextSplit, work: Path, progress: Progress) -> SharedInputs:
        progress("loading the source model")
        source = load_source(config.model, config.task)
        progress(f"source {source.name}: {source.model_type}, task {source.task}, "
                 f"{_millions(source.num_parameters)} parameters; {texts.fit.counted()} fit texts, "
                 f"{texts.validation.counted()} validation texts (" + (
                     "split by text hash" if texts.method == "hash" else f"from {texts.validation.source}") + ")")
        if texts.available:  # a larger file: said, never silent
            progress("note: a deterministic sample of " + " and ".join(
                f"{len(getattr(texts, side).texts)} of the {count} {side} texts" for side, count in texts.available.items())
                + " is used (max_fit_texts / max_validation_texts, default "
                f"{MAX_FIT_TEXTS} / {MAX_VALIDATION_TEXTS}: every fitting stage takes time in proportion to the fit texts, "
                "every search step to the validation texts)")
        for text_set in (texts.calibration, *((texts.validation,) if texts.method == "file" else ())):
            if text_set.comments:  # documented, but a file of tweets or markdown loses texts that way
                progress(f"note: {text_set.comments} line(s) of {text_set.source} start with '#' and were skipped as "
                         "comments; a .jsonl file ({\"text\": ...} per line) keeps such texts")
        for note in source.notes:  # e.g. a head dropped for feature-extraction (inputs/source.py)
            progress(f"note: {note}")
        n = texts.validation.distinct
        if source.task != "feature-extraction" and MIN_TEXTS <= n < RESOLVING_TEXTS:
            # One text is 1/n of top-1 agreement: 13 texts all agreeing is also what a model agreeing
            # on 80 % of texts shows a quarter of the time (a reviewer's pruned twin: "1.0000" on 13,
            # 0.92 on 363), and a 0.99 floor cannot fail short of a whole text.
            progress(f"note: {n} validation texts: top-1 agreement on them moves in steps of {1 / n:.3f}, coarser "
                     f"than the floors it is held to (e.g. 0.99); give {RESOLVING_TEXTS}+ (validation_texts=FILE, "
                     "or more texts in calibration=FILE) for figures and floors that mean what they say")
        if texts.validation.distinct < MIN_TEXTS:  # a small calibration file's held-out part
            progress(f"note: only {texts.validation.distinct} different validation texts: the accuracy figures and floors "
                     f"rest on very few texts; give {4 * MIN_TEXTS}+ calibration texts or validation_texts=FILE "
                     f"of {MIN_TEXTS}+")
        fields = {name: getattr(config, name) for name in SHARED_FIELDS}
        return cls(fields, source, texts, work)

    def check(self, config) -> None:
        """`config` converts the same model on the same texts (else its results would differ)."""
        differ = [n for n in SHARED_FIELDS if getattr(config, n) != self.config_fields[n]]
        if differ:
            raise ConversionError(f"targets of one run must share {', '.join(differ)}; convert them separately")

    def references(self, progress: Progress) -> tuple[Reference, Reference]:
        """(validation, fit) texts with their PyTorch FP32 outputs."""
        if self._references is None:
            label = "computing PyTorch FP32 reference outputs: {} texts, batch"
            self._references = (
                reference_outputs(self.source, self.texts.validation.texts, progress, label.format("validation")),
                reference_outputs(self.source, self.texts.fit.texts, progress, label.format("fit")))
        return self._references

    def pruned(self, request: PruneRequest, options: PruningOptions, progress: Progress,
               distill_steps: int = 0) -> SharedInputs:
        """The same inputs around the pruned source model (converters/pruning/prune_model.py),
        once per request and pruning settings. Its references stay the unpruned model's outputs:
        pruned artifacts are measured against the original. A refusal (`auto` finding no step) or a
        failure of the pruning (ConversionError) is kept too: every target of a run is told it at
        once, none prunes again for minutes to reach it."""
        settings = _without_prose(dataclasses.asdict(options))
        for name in _NOT_HOW_TO_PRUNE:
            settings.pop(name, None)
        key = hashlib.sha256(json.dumps([request.describe(), settings if request.auto else None, distill_steps],
                                        sort_keys=True).encode()).hexdigest()[:16]
        if key not in self._pruned:
            reference, fit = self.references(progress)
            samples = self.samples(progress)
            try:
                result = prune_source(self.source, request, options, fit, reference, progress, distill_steps)
            except ConversionError as exc:  # a refusal or a failure: the next target gets it, not minutes again
                self._pruned[key] = exc
                raise
            work = self.work / f"pruned-{key}"
            work.mkdir(parents=True, exist_ok=True)
            self._pruned[key] = SharedInputs(self.config_fields, result.source, self.texts, work,
                                             _references=(reference, fit), _samples=samples,
                                             pruning=result.report)
        found = self._pruned[key]
        if isinstance(found, ConversionError):
            raise found.with_traceback(None)  # the same type and message, without the first raise's frames
        return found

    def samples(self, progress: Progress) -> list:
        if self._samples is None:
            reference, fit = self.references(progress)
            self._samples = golden_samples.choose_samples(self.source, [fit, reference])
            progress("golden samples: " + ", ".join(
                f"{s.kind} ({int(s.feeds['attention_mask'].sum())} tokens)" for s in self._samples))
        return self._samples

    def onnx_export(self, profile: TargetProfile, progress: Progress) -> tuple[Path, dict[str, int]]:
        """The FP32 ONNX graph for `profile` (exported, and fused where it asks), once per kind."""
        # A pruned model's layers have different head counts; onnxruntime's Attention fusion takes
        # one num_heads for all (and reads -1 from the export's reshapes): not fused.
        fusion = profile.onnx.fusion and self.pruning is None
        key = ("onnx-export", profile.onnx.opset, fusion)
        if key not in self.cache:
            folder = self.work / f"export-opset{profile.onnx.opset}{'-fused' if fusion else ''}"
            folder.mkdir(parents=True, exist_ok=True)
            progress(f"exporting ONNX (opset {profile.onnx.opset}, dynamic batch and sequence)")
            path = export_onnx(self.source, folder / "export.onnx", ExportConfig(profile.onnx.opset))
            # The unfused export: the TFLite GPTQ statistics can be read from it (tflite/hessians.py).
            self.cache[PLAIN_ONNX_EXPORT] = path
            fused: dict[str, int] = {}
            if fusion:
                progress("fusing transformer subgraphs for onnxruntime")
                fused = fuse_onnx(path, folder / "fused.onnx", fusion_config(self.source))
                path = folder / "fused.onnx"
                progress("fused: " + (", ".join(f"{k} x{v}" for k, v in fused.items()) or "nothing"))
            self.cache[key] = (path, fused)
        return self.cache[key]

    def start_tflite_exports(self, profiles: list[TargetProfile], progress: Progress) -> None:
        """Start the FP32 TFLite exports `profiles` will need in a second process each, at the
        lowest priority, so that they run in the cores the ONNX stages leave idle
        (converters/tflite/background.py; converters/_artifacts.py waits for them). Nothing for an
        export done or running already, for a pruned model (it exists in memory only: exported
        in-process), or where this machine has no room for a second process."""
        early, self._early = self._early, None
        if self.pruning is not None:
            if early is not None:
                early.stop()
            return
        keys = []
        for profile in profiles:
            key = tflite_export_key(profile, self.source)
            if (any(p.format == "tflite" for p in plan(profile)) and key not in keys and key not in self.cache
                    and background_key(key) not in self.cache):
                keys.append(key)
        why_not = None if early is not None or not keys else background_unavailable()
        if why_not is not None:
            progress(f"the TFLite export will run in this process, after the ONNX artifacts ({why_not})")
            self.cache.update({background_key(key): None for key in keys})  # said once per run
            return
        for key in keys:
            progress(f"exporting TFLite with litert-torch in a second, low-priority process (signatures for "
                     f"{key[1]} tokens), beside the ONNX stages")
            background = early or BackgroundExport(self.config_fields["model"], self.source.task)
            early = None
            background.request(self.source.task, self.source.weights_sha256, tflite_export_path(self.work, key),
                               TfliteExportConfig(buckets=key[1]))
            self.cache[background_key(key)] = background
        if early is not None:  # started for an export that turned out not to be needed
            early.stop()

    def close(self) -> None:
        """End background exports still running (a failed or interrupted conversion); give the
        objects load() froze back to the cyclic collector."""
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
        if self._early is not None:
            self._early.stop()
            self._early = None
        for key in [k for k, v in self.cache.items() if isinstance(v, BackgroundExport)]:
            self.cache.pop(key).stop()

    def build(self, step: Step, planned: Planned, key: str, builder: Callable[[Step, Planned], Built]) -> Built:
        """`builder(step, planned)`, or the build another target of this run made for the same key."""
        if key in self.built:
            target, built = self.built[key]
            step.progress(f"[{planned.name}] same build as for {target} (same recipe, floor and arithmetic): reused")
            if isinstance(built, AccuracyError):
                # Its advice may point at the profile it was measured for: this target's file is the one
                # to read (a review found x86-avx512-vnni's refusal naming targets/rpi4.toml).
                said = str(built).replace(f"targets/{target}.toml", f"targets/{step.profile.id}.toml")
                raise AccuracyError(f"{said} (measured for {target})")
            return dataclasses.replace(built, extra={**built.extra, "built_for": target})
        try:
            built = builder(step, planned)
        except AccuracyError as exc:  # a refusal is a result too: the same build would repeat it
            self.built[key] = (step.profile.id, exc)
            raise
        self.built[key] = (step.profile.id, built)
        return built

"""Optional recovery after pruning: knowledge distillation on unlabeled text (`--distill-steps N`).

The pruned model (student) is trained to reproduce the unpruned one (teacher) on the fit texts,
randomly cropped and with words dropped at every step (augment_batch: more distinct inputs from
a few hundred texts; the teacher's outputs on them are the targets):

    loss = (1 - cos(student output, teacher output))                 per text (pooled embedding) or
           + KL(teacher probabilities || student probabilities)     per text or per real token (logits)
           + mean over layers of (1 - cos(student hidden, teacher hidden))   per real token

Cosines rather than squared errors on the hidden states: BERT-style residual streams carry a few
dimensions with values 10-100x the rest, which a squared error would spend the whole budget on.
The student stays in eval mode (no dropout): it is fitted to a deterministic teacher on a few
hundred texts, where dropout's noise costs more than it regularizes. No labels: the teacher's
outputs are the targets (the Sentence-Transformers distillation recipe
matches embeddings the same way). AdamW, linear warm-up then constant; every `check_every`
steps the student is scored on the validation texts against the teacher's outputs (the metric
the floors read), and the best state is kept: training stops early after `patience` checks
without improvement, and a student that never beats its starting point is returned unchanged.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from converters._console import count, stopped
from converters.core.validate import Reference, compute_metrics
from converters.pruning.structure import find_layers

__all__ = ["DistillConfig", "distill"]

Progress = Callable[[str], None]


@dataclass(frozen=True)
class DistillConfig:
    steps: int
    learning_rate: float = 1e-4
    warmup: int = 20
    check_every: int = 25
    patience: int = 4
    seed: int = 0
    # Token-level augmentation of the fit batches (augment_batch): random crops and word dropout of
    # each text, so a few hundred texts give the student more distinct inputs to match the teacher
    # on. Chosen on the validation texts: MiniLM at heads 0.33 / FFN 0.5, 300 steps, validation
    # cosine 0.826 with it, 0.812 without, still improving where the plain run had stopped
    # (held-out, which chose nothing: 0.838 vs 0.827; benchmarks/RESULTS.md run S).
    augment: bool = True


def _score(metrics: dict[str, float]) -> tuple[float, float]:
    """Higher is better: mean cosine (embeddings); for classifiers top-1 agreement (what their floor
    reads), ties broken by the logits' mean cosine (top-1 on a few dozen texts ties often, and a
    step that moved the logits closer to the teacher's without flipping a label is still better)."""
    if "cosine_mean" in metrics:
        return metrics["cosine_mean"], 0.0
    return metrics.get("top1_agreement", 0.0), metrics.get("logits_cosine_mean", 0.0)


def augment_batch(feeds: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A new batch from `feeds`: each text's content tokens (between its first and last, the
    [CLS]/[SEP]-style specials) randomly cropped to 50-100 % of their length, then 15 % of the
    rest dropped; specials kept, rows re-padded with the batch's pad id. The teacher's outputs on
    these are the targets, so no label is needed."""
    ids, mask = feeds["input_ids"], feeds["attention_mask"]
    pad = int(ids[mask == 0][0]) if (mask == 0).any() else 0
    rows = []
    for row, keep in zip(ids, mask.astype(bool)):
        tokens = row[keep]
        content = tokens[1:-1]
        if len(content) > 2:
            length = int(rng.integers(max(1, len(content) // 2), len(content) + 1))
            start = int(rng.integers(0, len(content) - length + 1))
            content = content[start:start + length]
            dropped = content[rng.random(len(content)) >= 0.15]
            content = dropped if len(dropped) else content[:1]
        rows.append(np.concatenate([tokens[:1], content, tokens[-1:]]))
    longest = max(len(r) for r in rows)
    out = {name: np.zeros((len(rows), longest), value.dtype) for name, value in feeds.items()}
    out["input_ids"][:] = pad
    for i, r in enumerate(rows):
        out["input_ids"][i, :len(r)] = r
        out["attention_mask"][i, :len(r)] = 1
    return out


def _output_loss(source: Any, output: Any, target: Any, mask: Any) -> Any:
    """The student's distance to the teacher on the model's output, as its metric reads it
    (core/validate.compute_metrics): KL of the label distributions per text (text-classification)
    or per real token (token-classification: padded positions carry no label), 1 - cosine of the
    sentence embeddings pooled the way the artifact pools them (feature-extraction), 1 - cosine of
    a [batch, dim] output (a pooler)."""
    import torch
    from torch.nn.functional import cosine_similarity, kl_div, log_softmax

    def kl(got, want):
        return kl_div(log_softmax(got, -1), log_softmax(want, -1), log_target=True, reduction="batchmean")

    if source.task == "text-classification":
        return kl(output, target)
    if source.task == "token-classification":
        return kl(output[mask], target[mask])
    if output.dim() == 3:
        mode = (source.postprocess or {}).get("pooling", "mean")
        if mode == "cls":
            output, target = output[:, 0], target[:, 0]
        elif mode == "max":
            hide = (~mask).unsqueeze(-1)
            output = output.masked_fill(hide, torch.finfo(output.dtype).min).amax(1)
            target = target.masked_fill(hide, torch.finfo(target.dtype).min).amax(1)
        else:  # mean and mean_sqrt_len point the same way as the masked sum; a cosine ignores scale
            weights = mask.unsqueeze(-1).to(output.dtype)
            output, target = (output * weights).sum(1), (target * weights).sum(1)
    return (1 - cosine_similarity(output, target, dim=-1)).mean()


def _hidden_taps(model: Any) -> tuple[list, list]:
    """Hooks recording every layer's input hidden state (the previous layer's output)."""
    store: list = []
    hooks = [layer.query.register_forward_pre_hook(lambda m, a: store.append(a[0])) for layer in find_layers(model)]
    return store, hooks


def distill(student: Any, teacher: Any, source: Any, fit: Reference, validation: Reference,
            config: DistillConfig, progress: Progress = lambda m: None) -> dict[str, Any]:
    """Train `student` (in place) towards `teacher` on `fit`'s batches; see the module docstring.
    `source` gives the input names and task. Returns what happened, for the manifest."""
    import torch

    def run(feeds):
        with torch.no_grad():
            out = student(*[torch.from_numpy(feeds[n]) for n in source.input_names])
        return {source.output_names[0]: out.numpy()}

    def evaluate() -> dict[str, float]:
        return compute_metrics(source, validation, run, "distilled student")

    torch.manual_seed(config.seed)
    student.eval()
    rng = np.random.default_rng(config.seed)
    before = evaluate()
    best_score, best_state, best_step = _score(before), copy.deepcopy(student.state_dict()), 0
    history = [{"step": 0, **before}]
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate, weight_decay=0.0)
    student_hidden, student_hooks = _hidden_taps(student)
    teacher_hidden, teacher_hooks = _hidden_taps(teacher)
    checks_without_gain = 0
    # Every step is a count (the progress printer's bar and ETA: 825 MiniLM steps take ~25 min);
    # the validation figures of each check go on their own line.
    label = "distillation step"
    progress(count(label, 0, config.steps))
    try:
        for step in range(1, config.steps + 1):
            feeds = fit.batches[int(rng.integers(len(fit.batches)))]
            if config.augment:
                feeds = augment_batch(feeds, rng)
            inputs = [torch.from_numpy(feeds[n]) for n in source.input_names]
            mask = torch.from_numpy(feeds["attention_mask"]).bool()
            student_hidden.clear()
            teacher_hidden.clear()
            with torch.no_grad():
                target = teacher(*inputs)
            output = student(*inputs)
            loss = _output_loss(source, output, target, mask)
            if output.dim() == 3 and source.task == "feature-extraction":  # the last hidden state
                student_hidden.append(output)
                teacher_hidden.append(target)
            pairs = list(zip(student_hidden[1:], teacher_hidden[1:]))
            for s, t in pairs:
                loss = loss + (1 - torch.nn.functional.cosine_similarity(s[mask], t[mask], dim=-1)).mean() / len(pairs)
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate * min(1.0, step / max(config.warmup, 1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            progress(count(label, step, config.steps))
            if step % config.check_every == 0 or step == config.steps:
                metrics = evaluate()
                history.append({"step": step, "loss": float(loss.detach()), **metrics})
                progress(f"distillation check at step {step} of {config.steps}: loss {float(loss.detach()):.4f}, "
                         "validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                if _score(metrics) > best_score:
                    best_score, best_state, best_step = _score(metrics), copy.deepcopy(student.state_dict()), step
                    checks_without_gain = 0
                else:
                    checks_without_gain += 1
                    if checks_without_gain >= config.patience and step < config.steps:
                        progress(stopped(label, step, config.steps))
                        progress(f"distillation: no gain in {config.patience} checks, stopped early at step {step}")
                        break
    finally:
        for hook in student_hooks + teacher_hooks:
            hook.remove()
    student.load_state_dict(best_state)
    if best_step == 0:
        progress("distillation: no checked step scored better than the pruned start on the validation texts; "
                 "the start is kept")
    return {"steps": config.steps, "steps_run": history[-1]["step"], "best_step": best_step,
            "learning_rate": config.learning_rate, "before": before, "after": evaluate(),
            "loss": "1 - cosine (pooled output) + mean 1 - cosine (hidden states per token); KL of the "
                    "logits per text or per real token for classifiers",
            # Early stopping reads the validation texts: the twin's validation metrics are those of the
            # best of several checks, so they lean optimistic (benchmarks score on held-out texts).
            "chosen_on": (f"the validation texts (best of {len(history)} checks, early stopping): this "
                          "twin's validation metrics are not independent of that choice"),
            "history": history}

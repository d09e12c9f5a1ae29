"""Why the TFLite recipes smooth their FC inputs: XNNPACK's dynamic-range arithmetic simulated in
PyTorch on the default model, with and without SmoothQuant-style scaling (no runtime involved).

Every FULLY_CONNECTED of the encoder is replaced by what XNNPACK computes for ai-edge-quantizer's
dynamic-range layouts: the input quantized per token (asymmetric int8, one scale per row), the
weight symmetric int8 per output channel (or int4 in 32-blocks along the input), round-to-nearest
(no GPTQ). As in litert-torch's export, an FC after a LayerNorm reads the bare normalized x, its
weight carries gamma and its bias beta. Smoothing divides the FC input by
s_j = stat_j^alpha / max_i |W_ij|^(1 - alpha) (normalized to a geometric mean of 1, clipped to
[1e-2, 1e2]) and multiplies the weight's columns by s, with
stat the channel's maximum |x| or its RMS over the fit texts (converters/tflite/smooth.py uses
the RMS). Scored on the validation split of the built-in texts (fitting never sees them):
sentence-embedding cosine (mean pooling) against the unquantized model.

    .venv/bin/python benchmarks/sim_tflite_smoothing.py --bits 8 4
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from converters.inputs.calibration import load_texts, split_texts
from converters.inputs.source import default_model_dir


def per_token_int8(x: torch.Tensor) -> torch.Tensor:
    low = torch.clamp(x.min(-1, keepdim=True).values, max=0)
    high = torch.clamp(x.max(-1, keepdim=True).values, min=0)
    scale = (high - low) / 255
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    zero = torch.round(-128 - low / scale)
    return (torch.clamp(torch.round(x / scale) + zero, -128, 127) - zero) * scale


def weights(w: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 4:  # symmetric, blocks of 32 along the input
        rows, cols = w.shape
        blocks = w.reshape(rows, cols // 32, 32)
        scale = blocks.abs().max(-1, keepdim=True).values / 7
        return (torch.round(blocks / scale).clamp(-8, 7) * scale).reshape(rows, cols)
    scale = w.abs().max(1, keepdim=True).values / 127
    return torch.round(w / scale) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4], choices=[4, 8])
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    args = parser.parse_args()

    from transformers import AutoModel, AutoTokenizer

    directory = default_model_dir()
    tokenizer, model = AutoTokenizer.from_pretrained(directory), AutoModel.from_pretrained(directory).eval()
    split = split_texts(load_texts())
    fit, validation = list(split.fit.texts), list(split.validation.texts)

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for text in texts:
            with torch.no_grad():
                out.append(model(**tokenizer(text, return_tensors="pt")).last_hidden_state[0].mean(0).numpy())
        return np.stack(out)

    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "encoder" in n}

    def norm_before(name: str):
        layer = int(name.split(".")[2])
        if "attention.self" in name:
            return model.embeddings.LayerNorm if layer == 0 else model.encoder.layer[layer - 1].output.LayerNorm
        return model.encoder.layer[layer].attention.output.LayerNorm if "intermediate" in name else None

    peaks, squares, counts = {}, {}, {}

    def tap(name, norm):
        def hook(module, inputs):
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
            if norm is not None:
                x = (x - norm.bias) / norm.weight
            peaks[name] = torch.maximum(peaks.get(name, x.abs().max(0).values), x.abs().max(0).values)
            squares[name] = squares.get(name, 0) + (x**2).mean(0)  # every text alike (GPTQ's "row")
            counts[name] = counts.get(name, 0) + 1
        return hook

    hooks = [m.register_forward_pre_hook(tap(n, norm_before(n))) for n, m in linears.items()]
    embed(fit)
    for hook in hooks:
        hook.remove()
    statistics = {"max": peaks, "rms": {n: (squares[n] / counts[n]).sqrt() for n in squares}}
    reference = embed(validation)
    lengths = np.array([len(tokenizer(t)["input_ids"]) for t in validation])

    def quantized(bits: int, alpha: float | None, statistic: str) -> np.ndarray:
        for name, module in linears.items():
            norm = norm_before(name)
            w, b = module.weight.detach(), module.bias.detach()
            if norm is not None:  # litert-torch: gamma into the weight, beta into the bias
                w, b = w * norm.weight[None, :], b + module.weight.detach() @ norm.bias
            s = torch.ones(w.shape[1])
            if alpha is not None:
                stat = statistics[statistic][name].clamp(min=1e-5)
                s = stat**alpha / w.abs().max(0).values.clamp(min=1e-5) ** (1 - alpha)
                s = (s / s.log().mean().exp()).clamp(1e-2, 1e2)  # geometric mean 1, as smooth.py
            wq = weights(w * s[None, :], bits)

            def forward(x, norm=norm, wq=wq, b=b, s=s):
                if norm is not None:
                    x = (x - norm.bias) / norm.weight
                return per_token_int8(x / s) @ wq.T + b

            module.forward = forward
        try:
            return embed(validation)
        finally:
            for module in linears.values():
                del module.forward  # back to the class's

    print(f"{len(fit)} fit texts, {len(validation)} validation texts ({int((lengths <= 6).sum())} of <= 6 tokens)")
    print("| weights | smoothing | cosine mean | cosine min | texts <= 6 tokens: mean / min |")
    print("|---|---|---:|---:|---|")
    for bits in args.bits:
        variants = [(None, "max")] + [(a, stat) for stat in ("max", "rms") for a in args.alphas]
        for alpha, statistic in variants:
            got = quantized(bits, alpha, statistic)
            cos = (got * reference).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
            short = cos[lengths <= 6]
            label = "none" if alpha is None else f"alpha {alpha}, {statistic}"
            print(f"| int{bits} | {label} | {cos.mean():.4f} | {cos.min():.4f} | {short.mean():.4f} / {short.min():.4f} |",
                  flush=True)


if __name__ == "__main__":
    main()

"""Where the prunable parts of an encoder are: per transformer layer, the Q/K/V projections, the
attention output projection and the FFN pair, for every supported architecture.

Structured pruning removes whole attention heads (a head_size block of Q/K/V rows and the same
columns of the output projection) and whole FFN neurons (a row of the FFN input projection and
the same column of the FFN output projection): the matrices get smaller, which dense CPU kernels
turn into speed (unstructured sparsity does not). transformers 5 has no prune_heads or head
masks, so converters/pruning/surgery.py slices these Linear layers itself.

Supported: BERT / MiniLM, RoBERTa and XLM-R layers (attention.self.{query,key,value},
attention.output.dense, intermediate.dense, output.dense) and DistilBERT blocks
(attention.{q_lin,k_lin,v_lin,out_lin}, ffn.{lin1,lin2}). Their attention reshapes with -1 heads
(`view(*shape, -1, head_size)`), so a layer keeps working with fewer heads once the projections
are sliced; the modules' head-count attributes are updated to stay truthful.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from converters._errors import UnsupportedModelError

__all__ = ["Layer", "find_layers"]


@dataclass
class Layer:
    """One transformer layer's prunable Linear modules (torch.nn.Linear, y = x W^T + b)."""

    index: int
    attention: Any  # the module holding the head-count attributes
    query: Any
    key: Any
    value: Any
    attention_out: Any  # input columns = heads x head_size
    ffn_in: Any  # output rows = neurons
    ffn_out: Any  # input columns = neurons
    head_size: int
    block: Any = None  # the whole layer (what the model calls with the residual stream)

    @property
    def heads(self) -> int:
        return self.query.out_features // self.head_size

    @property
    def neurons(self) -> int:
        return self.ffn_in.out_features


def _bert_like(module: Any) -> tuple | None:
    attention = getattr(module, "attention", None)
    own = getattr(attention, "self", None)
    if own is None or not all(hasattr(own, n) for n in ("query", "key", "value")):
        return None
    return (own, own.query, own.key, own.value, attention.output.dense, module.intermediate.dense,
            module.output.dense, own.attention_head_size)


def _distilbert(module: Any) -> tuple | None:
    attention, ffn = getattr(module, "attention", None), getattr(module, "ffn", None)
    if attention is None or ffn is None or not hasattr(attention, "q_lin"):
        return None
    return (attention, attention.q_lin, attention.k_lin, attention.v_lin, attention.out_lin, ffn.lin1,
            ffn.lin2, attention.attention_head_size)


def find_layers(model: Any) -> list[Layer]:
    """The transformer layers of `model` (any HF encoder model or task model around one), in
    order. UnsupportedModelError when none is recognised."""
    layers = []
    for module in model.modules():
        parts = _bert_like(module) or _distilbert(module)
        if parts is not None:
            layers.append(Layer(len(layers), *parts, block=module))
    if not layers:
        raise UnsupportedModelError(
            f"{type(model).__name__}: no BERT, RoBERTa, XLM-R or DistilBERT transformer layers found to prune"
        )
    return layers

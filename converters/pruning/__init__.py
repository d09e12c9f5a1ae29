"""Structured pruning (issue 11, first part): remove whole attention heads and FFN neurons so
that the matrices really get smaller, ranked without labels.

    structure.py    where an encoder's prunable Linear layers are (BERT, RoBERTa, XLM-R, DistilBERT)
    importance.py   label-free head / neuron scores from activations; a global plan
    surgery.py      slicing the layers in place (transformers 5 has no prune_heads)
    reconstruct.py  least-squares re-fit of the output projections to the unpruned layer outputs

Not wired into edge-convert yet: no --prune flag, no pruned artifacts, no distillation.
"""

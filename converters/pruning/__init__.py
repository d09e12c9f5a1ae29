"""Structured pruning (issue 11): remove whole attention heads and FFN neurons so that the
matrices really get smaller, ranked without labels. edge-convert --prune runs prune_model.py and
builds pruned twins ("<artifact>-pruned") of the profile's [pruning] artifacts.

    structure.py    where an encoder's prunable Linear layers are (BERT, RoBERTa, XLM-R, DistilBERT)
    importance.py   label-free head / neuron scores from activations; a global plan
    surgery.py      slicing the layers in place (transformers 5 has no prune_heads)
    reconstruct.py  sequential least-squares re-fit of the output projections (weights and bias)
    prune_model.py  the pass: fixed ratios or --prune auto under the profile's pruning floor

Not yet: distillation (--distill-steps).
"""

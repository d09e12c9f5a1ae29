"""Structured pruning (issue 11): remove whole attention heads and FFN neurons so that the
matrices really get smaller, ranked without labels. edge-convert --prune runs prune_model.py and
builds pruned twins ("<artifact>-pruned") of the profile's [pruning] artifacts (twins.py).

    structure.py    where an encoder's prunable Linear layers are (BERT, RoBERTa, XLM-R, DistilBERT)
    obs.py          the criterion edge-convert uses: least-squares removal cost (structured Optimal
                    Brain Surgeon), one global greedy, layers weighted by measured output sensitivity
    importance.py   Scores and plan() (the kept heads / neurons of a share); activation and
                    magnitude scores, kept for comparison (benchmarks/)
    fisher.py       a mask-Fisher criterion, for comparison only (benchmarks/)
    surgery.py      slicing the layers in place (transformers 5 has no prune_heads)
    reconstruct.py  sequential least-squares re-fit of every kept projection (weights and bias):
                    Q/K/V and FFN input to the unpruned stream's, outputs to the unpruned layer's
    distill.py      optional recovery: distillation from the unpruned model (--distill-steps N)
    prune_model.py  the pass: fixed shares or --prune auto under the profile's pruning floor,
                    then distillation; the manifest's `pruning` record
    twins.py        the pipeline's twin stage: the pruned Step, refusals of the twins, interruption
"""

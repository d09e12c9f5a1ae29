"""The shared quantization core: what every format's quantizers use to decide and to check.

    validate.py         the one evaluator: reference outputs, metrics against PyTorch FP32
                        (NaN/Inf-safe), floors, Reference.spread (the ranking subset)
    search.py           the one greedy search under an accuracy floor or a size budget
    descent.py          its descent over cumulative steps under a floor (pruning's prune=auto)
    gptq.py             GPTQ rounding (the ONNX driver; TFLite's writers call gptq_int4/int8)
    arithmetic.py       whose INT8 arithmetic candidates are scored with (the target's)
    exact_integer_ops.py  the exact int32 reference graph rewrite behind it
    _activations.py     per-channel activation statistics of an ONNX graph
"""

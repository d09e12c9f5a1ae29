"""Stage 3 (ONNX): graph passes and quantizers, each a function from a model file and a
frozen config to a model file; converters/_artifacts.py chains them per artifact.

    pack_projections.py, smooth_activations.py, split_first_token.py, keep_layernorm_unfused.py
                        exact FP32 rewrites that prepare the graph for INT8
    quantize_int8.py    dynamic/static INT8 (GPTQ codes, pair-limited weights per profile)
    mixed_precision.py  INT8 with the FP32 fallback search (core/search.py, floor)
    quantize_w4a8.py    4-bit weight storage for the INT8 GEMM, 8-bit upgrades (budget)
    quantize_int4.py    MatMulNBits / GatherBlockQuantized INT4 (budget)
    quantize_embeddings.py, gather_tables_unpacked.py
                        embedding tables in INT8 rows / 4-bit blocks
"""

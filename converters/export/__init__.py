"""Stage 2, export: the FP32 ONNX graph every ONNX artifact starts from (the TFLite export is
converters/tflite/export.py).

    export_onnx.py   torch.onnx export with dynamic batch and sequence axes
    fuse_onnx.py     onnxruntime's transformer fusions, where the profile asks for them
"""

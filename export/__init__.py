"""spinert export: ONNX -> TensorRT engines (tensorrt or TensorRT for RTX) with manifests and stale detection.

Modules: flavour (which TensorRT), onnxprep (opset/dynamic-batch checks, onnxslim), profiles (cascade batch
sizes), build (Polygraphy-driven engine build), manifest (the JSON beside each engine), engines (fresh/stale
checks, ensure_engine for the runtime), gpu (the GPU present), cli (`spinert export`).
"""

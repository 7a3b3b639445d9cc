"""spinert: INT8 calibration (`spinert calibrate`).

data      calibration inputs from real CTs, built with the runtime's own model-input builders
cache     cached inputs (npz) and ranges (ONNX Runtime's JSON), keyed by model, method and data
quantize  Q/DQ quantisation with onnxruntime.quantization, as TensorRT's explicit-quantisation path wants it
registry  <name>_int8.onnx files and their manifest entries; the guard's staging folder
guard     the whole cascade at fp32/fp16/int8 on held-out CTs, scored by evaluation/, and the verdict
report    the guard's JSON, markdown and plot
cli       the subcommand
"""

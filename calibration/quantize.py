"""Explicit INT8 quantisation: FP32 ONNX + calibration tensors -> a Q/DQ ONNX, with onnxruntime.quantization.

The graph is what TensorRT's explicit-quantisation path wants (and ONNX Runtime runs on the CPU):
- QuantFormat.QDQ: QuantizeLinear/DequantizeLinear pairs around the quantised ops, the float ops untouched;
- int8 activations and weights, both symmetric (zero point 0: TensorRT supports no other), weights per
  output channel;
- biases left in float (QuantizeBias=False): TensorRT refuses the int32 DequantizeLinear that ONNX Runtime
  would put on them ("input has type Int32 but must have type ... Int8");
- a dedicated Q/DQ pair per consumer (DedicatedQDQPair): TensorRT cannot share one pair between nodes;
- the nodes that write the graph's outputs stay float (``output_nodes``);
- by default only the ops TensorRT runs in INT8 (weighted layers and pooling, ``TRT_OP_TYPES``); ``op_types``
  widens it ("all": every op ONNX Runtime can quantise).
The FP32 graph is simplified first with onnxslim (the same step `spinert export` takes), so Identity-free,
constant-folded graphs are quantised. Ranges come from quantize_static's own calibrators (MinMax, Entropy,
Percentile) and are cached by it (calibration_cache_path); samples are fed one at a time
(CalibStridedMinMax = 1) so memory stays that of one sample whatever the method.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from engine.errors import ModelError

METHODS = ("minmax", "entropy", "percentile")
TRT_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "AveragePool", "GlobalAveragePool", "MaxPool")


@dataclass(frozen=True)
class QuantSettings:
    method: str = "minmax"
    op_types: tuple[str, ...] | None = TRT_OP_TYPES  # None: every op type ONNX Runtime can quantise
    per_channel: bool = True

    def extra_options(self) -> dict[str, Any]:
        return {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False,
                "DedicatedQDQPair": True, "CalibTensorRangeSymmetric": True, "CalibStridedMinMax": 1}

    def record(self) -> dict[str, Any]:
        """What goes into cache keys and the manifest's calibration record."""
        return {"method": self.method, "format": "QDQ", "activations": "int8 symmetric per-tensor",
                "weights": f"int8 symmetric {'per-channel' if self.per_channel else 'per-tensor'}",
                "bias": "float (not quantised)", "op_types": list(self.op_types) if self.op_types else "all",
                "extra_options": self.extra_options()}


@dataclass
class QuantResult:
    path: Path
    ranges: Path
    ranges_reused: bool
    simplified: str
    qdq: dict[str, Any] = field(default_factory=dict)


def parse_op_types(text: str | None) -> tuple[str, ...] | None:
    """--op-types value: "trt" (default), "all", or a comma list of ONNX op types."""
    if text is None or text == "trt":
        return TRT_OP_TYPES
    if text == "all":
        return None
    ops = tuple(t.strip() for t in text.split(",") if t.strip())
    if not ops:
        raise ModelError("--op-types needs 'trt', 'all' or a comma list of ONNX op types")
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    known = set(QDQRegistry) | set(QLinearOpsRegistry)
    bad = [o for o in ops if o not in known]
    if bad:
        raise ModelError(f"--op-types: onnxruntime cannot quantise {', '.join(bad)} "
                         f"(it can: {', '.join(sorted(known))})")
    return ops


def _method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def _reader(input_name: str, x: np.ndarray):
    """A CalibrationDataReader over ``x`` [n, ...], one sample per feed, with the range selection that
    quantize_static's strided collection (CalibStridedMinMax) drives."""
    from onnxruntime.quantization import CalibrationDataReader

    class ArrayReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.start, self.end = 0, int(x.shape[0])

        def __len__(self) -> int:
            return int(x.shape[0])

        def set_range(self, start_index: int, end_index: int) -> None:
            self.start, self.end = int(start_index), min(int(end_index), int(x.shape[0]))

        def get_next(self):
            if self.start >= self.end:
                return None
            self.start += 1
            return {input_name: x[self.start - 1:self.start]}

    return ArrayReader()


@contextmanager
def _quiet_ort() -> Iterator[None]:
    """quantize_static logs advice (pre-processing, opset) on the root logger and its histogram calibrators
    print() their progress: keep both off the terminal (errors still raise)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def simplify(source: Path, dest: Path) -> str:
    """onnxslim the FP32 graph into ``dest`` as `spinert export` does; without onnxslim, a plain copy."""
    import onnx

    try:
        from export.onnxprep import load_simplified

        model, _opset, note = load_simplified(source)
    except ImportError:
        model, note = onnx.load(str(source)), "not simplified (onnxslim not installed)"
    onnx.save(model, str(dest))
    return note


def output_nodes(path: str | Path) -> list[str]:
    """Names of the nodes that write the graph's outputs: they stay float. One INT8 scale per tensor cannot
    hold a detector's concatenated boxes (pixels, ~0-640) and scores (0-1): the scores round to zero.

    Nodes without a name (nodes_to_exclude matches names) are named ``<op>_<index>`` in the file first.
    """
    import onnx

    m = onnx.load(str(path))
    unnamed = [(i, n) for i, n in enumerate(m.graph.node) if not n.name]
    for i, n in unnamed:
        n.name = f"{n.op_type}_{i}"
    if unnamed:
        onnx.save(m, str(path))
    outs = {o.name for o in m.graph.output}
    return [n.name for n in m.graph.node if outs.intersection(n.output)]


def quantize(source: str | Path, dest: str | Path, input_name: str, x: np.ndarray, settings: QuantSettings,
             ranges: str | Path) -> QuantResult:
    """Q/DQ-quantise ``source`` into ``dest``, calibrating on ``x`` unless ``ranges`` (the cache) exists."""
    import inspect

    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise ModelError(f"onnxruntime {onnxruntime.__version__} cannot cache calibration ranges "
                         f"(quantize_static has no calibration_cache_path): upgrade onnxruntime")
    source, dest, ranges = Path(source), Path(dest), Path(ranges)
    ranges.parent.mkdir(parents=True, exist_ok=True)
    reused = ranges.is_file()
    with tempfile.TemporaryDirectory(prefix="spinert-quant-") as tmp:
        slim = Path(tmp) / "model.slim.onnx"
        note = simplify(source, slim)
        kw = dict(quant_format=QuantFormat.QDQ, per_channel=settings.per_channel,
                  activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                  calibrate_method=_method(settings.method),
                  op_types_to_quantize=list(settings.op_types) if settings.op_types else None,
                  nodes_to_exclude=output_nodes(slim), extra_options=settings.extra_options())
        with _quiet_ort():
            try:
                quantize_static(str(slim), str(dest), _reader(input_name, x), calibration_cache_path=str(ranges),
                                **kw)
            except Exception as exc:  # noqa: BLE001 - a damaged cache is recomputed once, never trusted
                if not reused:
                    raise ModelError(f"onnxruntime could not quantise {source.name}: "
                                     f"{str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__}"
                                     ) from None
                ranges.unlink(missing_ok=True)
                reused = False
                quantize_static(str(slim), str(dest), _reader(input_name, x), calibration_cache_path=str(ranges),
                                **kw)
    return QuantResult(dest, ranges, reused, note, qdq_stats(dest))


def qdq_stats(path: str | Path) -> dict[str, Any]:
    """Q/DQ node counts, their integer types and how many zero points are not 0 (TensorRT needs 0)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {t.name: t for t in m.graph.initializer}
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    dtypes, nonzero = set(), 0
    for n in q + dq:
        if len(n.input) > 2 and n.input[2] in inits:
            zp = numpy_helper.to_array(inits[n.input[2]])
            dtypes.add(str(zp.dtype))
            nonzero += int(np.count_nonzero(zp))
    return {"quantize_linear": len(q), "dequantize_linear": len(dq), "dtypes": sorted(dtypes),
            "nonzero_zero_points": nonzero}


def parity(reference: str | Path, quantized: str | Path, input_name: str, x: np.ndarray) -> dict[str, Any]:
    """INT8 vs FP32 outputs on ``x`` (ONNX Runtime, CPU): max/mean |difference| and the FP32 output's range."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    ref = ort.InferenceSession(str(reference), so, providers=["CPUExecutionProvider"])
    q8 = ort.InferenceSession(str(quantized), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in ref.get_outputs()]
    out: dict[str, Any] = {"samples": int(x.shape[0]), "reference": "fp32 ONNX on onnxruntime CPU"}
    for i in range(x.shape[0]):
        a = ref.run(names, {input_name: x[i:i + 1]})
        b = q8.run(names, {input_name: x[i:i + 1]})
        for name, ra, rb in zip(names, a, b):
            d = np.abs(np.asarray(rb, np.float64) - np.asarray(ra, np.float64))
            o = out.setdefault(name, {"max_abs": 0.0, "sum_abs": 0.0, "count": 0, "fp32_abs_max": 0.0})
            o["max_abs"] = max(o["max_abs"], float(d.max()))
            o["sum_abs"] += float(d.sum())
            o["count"] += int(d.size)
            o["fp32_abs_max"] = max(o["fp32_abs_max"], float(np.abs(ra).max()))
    for name in names:
        o = out[name]
        o["mean_abs"] = o.pop("sum_abs") / max(1, o.pop("count"))
    return out

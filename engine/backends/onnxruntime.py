"""ONNX Runtime backend: the CPU provider everywhere, the CUDA provider where onnxruntime-gpu is installed."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.backends.base import Session, as_host, cuda_device_count
from engine.errors import BackendError, ModelError

if TYPE_CHECKING:
    from engine.models import ModelSpec

PRECISIONS = ("fp32", "fp16", "int8")  # the manifest's ONNX files; int8 = the Q/DQ graph of `spinert calibrate`
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def probe(backend: str = "onnxruntime") -> str | None:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnxruntime is not installed (pip install onnxruntime)"
    return None


def cuda_provider_usable() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and cuda_device_count() > 0


class OrtSession(Session):
    backend = "onnxruntime"

    def __init__(self, sess, precision: str, device: str, max_batch: int | None) -> None:
        super().__init__([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()], max_batch)
        self._sess = sess
        self.precision = precision
        self.device = device
        self.providers = list(sess.get_providers())
        self._in_dtype = {i.name: _DTYPES.get(i.type, np.float32) for i in sess.get_inputs()}

    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if self._sess is None:
            raise BackendError(f"{self.model} session is closed")
        host = {k: as_host(v, self._in_dtype.get(k, np.float32)) for k, v in feeds.items() if k in self._in_dtype}
        outs = self._sess.run(self.output_names, host)
        return dict(zip(self.output_names, outs))

    def close(self) -> None:
        self._sess = None

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}


def load(spec: "ModelSpec", precision: str = "fp32", backend: str = "onnxruntime", *, max_batch: int | None = None,
         threads: int | None = None, device: str = "auto", device_id: int = 0, verify: bool = True,
         **_ignored) -> OrtSession:
    """An ONNX Runtime session for ``spec``'s file at ``precision``.

    device: "cpu", "cuda" or "auto" (CUDA provider when onnxruntime-gpu and a GPU are present).
    threads: intra-op threads for the CPU provider (default: ORT's choice, all cores; env SPINERT_THREADS).
    """
    import onnxruntime as ort

    if precision not in PRECISIONS:
        raise BackendError(f"onnxruntime runs {'/'.join(PRECISIONS)} models, not {precision!r}")
    if precision == "int8" and "int8" not in spec.files:
        raise ModelError(f"model {spec.name!r} has no INT8 (Q/DQ) ONNX in {spec.root / 'manifest.json'}: "
                         f"build it with `spinert calibrate --data DIR`")
    path = spec.path(precision)
    if not path.is_file():
        raise ModelError(f"model file missing: {path}")
    if verify:
        spec.verify(precision)
    use_cuda = device == "cuda" or (device == "auto" and cuda_provider_usable())
    if device == "cuda" and not cuda_provider_usable():
        raise BackendError("onnxruntime has no usable CUDA provider here (needs onnxruntime-gpu and a CUDA GPU)")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3  # keep ORT's warnings (e.g. fp16 Cast nodes) off the user's terminal
    threads = threads if threads is not None else int(os.environ.get("SPINERT_THREADS", "0") or 0)
    if threads:
        so.intra_op_num_threads = int(threads)
    providers: list[Any] = ["CPUExecutionProvider"]
    if use_cuda:
        providers = [("CUDAExecutionProvider", {"device_id": int(device_id)}), "CPUExecutionProvider"]
    try:
        sess = ort.InferenceSession(str(path), so, providers=providers)
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types for corrupt files
        raise ModelError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:200]}") from None
    want = [i["name"] for i in spec.inputs]
    got = [i.name for i in sess.get_inputs()]
    if want and sorted(want) != sorted(got):
        raise ModelError(f"{path}: inputs {got} do not match the manifest's {want}")
    dev = "cuda" if "CUDAExecutionProvider" in sess.get_providers() else "cpu"
    out = OrtSession(sess, precision, dev, max_batch)
    out.model = spec.name
    return out

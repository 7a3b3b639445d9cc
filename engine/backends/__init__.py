"""Runtime backends behind one Session interface; ``load_session`` picks and loads one.

Backends are registered by name and imported only when used, so the lean CPU install never imports
TensorRT or torch. "auto" tries the fastest kinds first and falls back to ONNX Runtime on the CPU,
which always works where the package is installed.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from engine.backends.base import Session, cuda_device_count
from engine.errors import BackendError, SpinertError

if TYPE_CHECKING:
    from engine.models import ModelSpec

# name -> module implementing probe()/load() (see engine/backends/base.py)
BACKENDS: dict[str, str] = {
    "tensorrt": "engine.backends.tensorrt",
    "tensorrt_rtx": "engine.backends.tensorrt",
    "torch-cuda": "engine.backends.torch_cuda",
    "onnxruntime": "engine.backends.onnxruntime",
}
# "auto" order: engines built for the GPU first, then PyTorch CUDA (e.g. H100 where TensorRT-RTX refuses
# the device), then ONNX Runtime (CUDA provider if present, else the CPU).
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "tensorrt_rtx", "torch-cuda", "onnxruntime")
ALIASES = {"ort": "onnxruntime", "onnx": "onnxruntime", "trt": "tensorrt", "trt-rtx": "tensorrt_rtx",
           "tensorrt-rtx": "tensorrt_rtx", "torch": "torch-cuda", "torch_cuda": "torch-cuda"}
GPU_BACKENDS = ("tensorrt", "tensorrt_rtx", "torch-cuda")

__all__ = ["Session", "BACKENDS", "AUTO_ORDER", "load_session", "probe", "available_backends", "resolve_backend"]


def _canonical(name: str) -> str:
    n = ALIASES.get(name, name)
    if n != "auto" and n not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} (choose from auto, {', '.join(BACKENDS)})")
    return n


def _module(name: str):
    mod_name = BACKENDS[name]
    try:
        return importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name == mod_name:
            raise BackendError(f"backend {name!r} is not part of this build ({mod_name} missing)") from None
        raise BackendError(f"backend {name!r} needs {exc.name!r}, which is not installed") from None
    except ImportError as exc:
        raise BackendError(f"backend {name!r} cannot be imported: {exc}") from None


def probe(name: str) -> str | None:
    """None if backend ``name`` can run here, else why not (cheap: no model is loaded)."""
    name = _canonical(name)
    if name in GPU_BACKENDS and cuda_device_count() == 0:
        return "no CUDA GPU"
    try:
        mod = _module(name)
    except BackendError as exc:
        return str(exc)
    fn = getattr(mod, "probe", None)
    if fn is None:
        return None
    try:
        return fn(name)
    except Exception as exc:  # noqa: BLE001 - a probe must never crash the caller
        return f"{type(exc).__name__}: {exc}"


def available_backends() -> dict[str, str | None]:
    """Every registered backend -> None if usable here, else the reason."""
    return {name: probe(name) for name in BACKENDS}


def resolve_backend(backend: str = "auto") -> str:
    """The concrete backend "auto" would try first (the first in AUTO_ORDER whose probe passes)."""
    name = _canonical(backend)
    if name != "auto":
        return name
    for cand in AUTO_ORDER:
        if probe(cand) is None:
            return cand
    return "onnxruntime"


def load_session(spec: "ModelSpec", backend: str = "auto", precision: str = "fp32", **options) -> Session:
    """Load model ``spec`` on ``backend`` at ``precision``.

    options (backend-specific, unknown ones ignored by backends that do not use them): max_batch,
    threads (CPU), device_id, verify (check the file's sha256 against the manifest, default True).
    "auto": tries AUTO_ORDER and keeps the first that loads; every failure reason is kept so that the
    final error (if even ONNX Runtime fails) says what was tried.
    """
    name = _canonical(backend)
    if name != "auto":
        why = probe(name)
        if why is not None:
            raise BackendError(f"backend {name!r} cannot run here: {why}")
        sess = _module(name).load(spec, precision=precision, backend=name, **options)
        sess.model = spec.name
        return sess
    reasons = []
    for cand in AUTO_ORDER:
        why = probe(cand)
        if why is not None:
            reasons.append(f"{cand}: {why}")
            continue
        try:
            sess = _module(cand).load(spec, precision=precision, backend=cand, **options)
        except BackendError as exc:
            reasons.append(f"{cand}: {exc}")
            continue
        except SpinertError as exc:  # e.g. no engine built for a GPU backend: try the next one
            if cand == AUTO_ORDER[-1]:
                raise  # the last resort's own error (e.g. a corrupt model file) is the one to report
            reasons.append(f"{cand}: {exc}")
            continue
        sess.model = spec.name
        sess.fallback_reasons = reasons  # type: ignore[attr-defined]
        return sess
    raise BackendError(f"no backend can run model {spec.name!r} ({'; '.join(reasons)})")

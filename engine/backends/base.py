"""The one session interface every runtime backend implements (Polygraphy-style: one runner, a loader per backend).

A backend module (engine/backends/<name>.py) provides

    def probe(backend: str) -> str | None
        Cheap check, no model loaded: None if ``backend`` can run here, else the reason it cannot
        (e.g. "no CUDA GPU", "tensorrt is not installed"). Must not import heavy libraries when the
        answer is obviously no (check ``cuda_device_count()`` first).
    def load(spec: ModelSpec, precision: str, backend: str, **options) -> Session
        Build a session; raise engine.errors.BackendError (cannot run here) or ModelError (bad file).

and its Session subclass implements ``_run`` on one chunk. ``Session.run`` splits the batch axis into
chunks of at most ``max_batch`` so that callers can pass any number of samples (backends with fixed
engine profiles, GPU memory limits...).
"""
from __future__ import annotations

import ctypes
import functools
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from engine.xp import get_xp


class Session(ABC):
    """A loaded model that maps named input arrays to named output arrays (batch axis first)."""

    backend: str = ""
    precision: str = "fp32"
    device: str = "cpu"  # "cpu" or "cuda"
    model: str = ""  # manifest name (detector / segmenter / labeller)

    def __init__(self, input_names: list[str], output_names: list[str], max_batch: int | None = None) -> None:
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.max_batch = max_batch

    @abstractmethod
    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run one chunk (batch <= max_batch). Outputs: numpy for host backends, CuPy for device ones."""

    def run(self, feeds: dict[str, Any], max_batch: int | None = None) -> dict[str, Any]:
        """Run on any batch size; chunks of ``max_batch`` (argument, else the session's) are concatenated."""
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.model or 'model'}: missing input(s) {missing}; expects {self.input_names}")
        mb = max_batch if max_batch is not None else self.max_batch
        n = int(next(iter(feeds.values())).shape[0])
        if not mb or n <= mb:
            return self._run(feeds)
        parts: dict[str, list] = {k: [] for k in self.output_names}
        for s in range(0, n, int(mb)):
            out = self._run({k: v[s:s + int(mb)] for k, v in feeds.items()})
            for k in self.output_names:
                parts[k].append(out[k])
        xp = get_xp(*(p[0] for p in parts.values()))
        return {k: xp.concatenate(v, axis=0) for k, v in parts.items()}

    def close(self) -> None:
        """Release the runtime's resources; the session is unusable afterwards."""

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "precision": self.precision, "device": self.device,
                "inputs": self.input_names, "outputs": self.output_names, "max_batch": self.max_batch}

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(model={self.model!r}, backend={self.backend!r}, "
                f"precision={self.precision!r}, device={self.device!r})")


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """Number of CUDA devices via the driver library alone (no torch/CuPy import); 0 without a driver/GPU."""
    for lib in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            cuda = ctypes.CDLL(lib)
        except OSError:
            continue
        try:
            if cuda.cuInit(0) != 0:
                return 0
            n = ctypes.c_int(0)
            if cuda.cuDeviceGetCount(ctypes.byref(n)) != 0:
                return 0
            return int(n.value)
        except AttributeError:
            return 0
    return 0


def as_host(a: Any, dtype=np.float32) -> np.ndarray:
    """A C-contiguous host array of ``dtype`` (copies CuPy arrays back to the host)."""
    from engine.xp import to_numpy

    return np.ascontiguousarray(to_numpy(a), dtype=dtype)

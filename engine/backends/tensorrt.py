"""TensorRT runtime backend, one implementation for `tensorrt` (10+) and TensorRT for RTX (`tensorrt_rtx`).

One deserialised engine, one execution context, one non-blocking CUDA stream per session. Each call sets
the input shapes (dynamic batch), binds tensors with set_tensor_address and enqueues execute_async_v3.
Device buffers are allocated on first use and reused (grown when a larger batch comes); host inputs go
through pinned staging buffers, also reused. CuPy inputs are used in place (no host round trip) and
outputs then come back as CuPy arrays: data stays on the device between cascade stages.

CUDA graphs (``cuda_graph=True``): with TensorRT for RTX the library captures the whole engine itself
(IRuntimeConfig.cuda_graph_strategy = WHOLE_GRAPH_CAPTURE); with full TensorRT we capture
execute_async_v3 once per input shape into a graph and replay it (buffer addresses are fixed, so the
graph stays valid until a buffer grows). TensorRT for RTX also keeps a runtime cache of its JIT-compiled
kernels beside the engine (``<engine>.rtcache``), loaded at start and saved at close.

CUDA access is cuda-python (``cuda.bindings.runtime``), imported when a session is created; nothing here
imports TensorRT, cuda-python or CuPy at module import.
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.backends.base import Session, cuda_device_count
from engine.errors import BackendError

if TYPE_CHECKING:
    from engine.models import ModelSpec
    from export.manifest import EngineManifest

FLAVOUR_OF_BACKEND = {"tensorrt": "tensorrt", "tensorrt_rtx": "tensorrt_rtx"}


def _flavour_name(backend: str) -> str:
    from export import flavour as fl

    return fl.canonical(FLAVOUR_OF_BACKEND.get(backend, backend))


def probe(backend: str = "tensorrt") -> str | None:
    """None if ``backend`` can run engines here, else why not (no engine is touched)."""
    if cuda_device_count() == 0:
        return "no CUDA GPU"
    from export import flavour as fl
    from export.build import supported_cc
    from export.gpu import gpu_info

    name = _flavour_name(backend)
    try:
        f = fl.load(name)
    except BackendError as exc:
        return str(exc)
    try:
        import cuda.bindings.runtime  # noqa: F401
    except ImportError:
        return "cuda-python is not installed (pip install cuda-python)"
    gpu = gpu_info()
    if f.is_rtx and gpu is not None and gpu.cc not in supported_cc(f):
        return (f"TensorRT for RTX {f.version} does not run on {gpu.name} (compute capability {gpu.cc}; "
                f"it supports {', '.join(supported_cc(f))})")
    return None


def why_not_runnable(m: "EngineManifest") -> str | None:
    """Why engine ``m`` cannot run on this machine (no GPU, wrong compute capability, library missing), or None."""
    from export.gpu import gpu_info

    gpu = gpu_info()
    if gpu is None:
        return "no compatible GPU (no CUDA GPU here)"
    if gpu.cc not in m.target_cc:
        return (f"no compatible GPU ({gpu.name} has compute capability {gpu.cc}; the engine targets "
                f"{', '.join(m.target_cc)})")
    return probe(m.flavour)


# --------------------------------------------------------------------------------------------- CUDA helpers
class _Cuda:
    """The few cudart calls we need, with errors turned into BackendError."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            raise BackendError("the TensorRT backend needs cuda-python (pip install cuda-python)") from None
        self.rt = cudart

    def __call__(self, res):
        err, *vals = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            name = self.rt.cudaGetErrorName(err)[1]
            raise BackendError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
        return vals[0] if len(vals) == 1 else (vals or None)


class _DeviceBuffer:
    """A device allocation that only grows (its address is stable between growths)."""

    def __init__(self, cuda: _Cuda) -> None:
        self.cuda, self.ptr, self.nbytes = cuda, 0, 0

    def ensure(self, nbytes: int) -> bool:
        """True when it had to (re)allocate, i.e. its address changed."""
        if nbytes <= self.nbytes:
            return False
        self.free()
        self.ptr = int(self.cuda(self.cuda.rt.cudaMalloc(max(nbytes, 256))))
        self.nbytes = nbytes
        return True

    def free(self) -> None:
        if self.ptr:
            self.cuda(self.cuda.rt.cudaFree(self.ptr))
        self.ptr, self.nbytes = 0, 0


class _PinnedBuffer:
    """Page-locked host memory viewed as numpy (DMA-able: async copies overlap with host work)."""

    def __init__(self, cuda: _Cuda) -> None:
        self.cuda, self.ptr, self.nbytes = cuda, 0, 0

    def view(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if nbytes > self.nbytes:
            self.free()
            self.ptr = int(self.cuda(self.cuda.rt.cudaMallocHost(max(nbytes, 256))))
            self.nbytes = nbytes
        raw = (ctypes.c_uint8 * nbytes).from_address(self.ptr)
        return np.frombuffer(raw, dtype=dtype, count=int(np.prod(shape))).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.cuda(self.cuda.rt.cudaFreeHost(self.ptr))
        self.ptr, self.nbytes = 0, 0


# ---------------------------------------------------------------------------------------------- the session
class TrtSession(Session):
    device = "cuda"

    def __init__(self, engine_path: Path, m: "EngineManifest", precision: str, device_id: int = 0,
                 cuda_graph: bool = False, max_batch: int | None = None) -> None:
        from export import flavour as fl

        f = fl.load(m.flavour)
        self.flavour, self.backend, self.precision = f, m.flavour, precision
        self.engine_path, self.manifest = Path(engine_path), m
        self.cuda = cuda = _Cuda()
        cuda(cuda.rt.cudaSetDevice(int(device_id)))
        trt = f.module
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if self._engine is None:
            raise BackendError(f"{f.name} could not deserialize {engine_path} (see the TensorRT log above); "
                               f"rebuild it with `spinert export --force --target {f.short}`")
        self._runtime_cache = None
        config = None
        if f.is_rtx and hasattr(self._engine, "create_runtime_config"):
            config = self._engine.create_runtime_config()
            self._runtime_cache = config.create_runtime_cache()
            cache_file = self.cache_path
            if cache_file.is_file():
                self._runtime_cache.deserialize(cache_file.read_bytes())
            config.set_runtime_cache(self._runtime_cache)
            if cuda_graph:
                config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        self._context = (self._engine.create_execution_context(config) if config is not None
                         else self._engine.create_execution_context())
        if self._context is None:
            raise BackendError(f"{f.name} could not create an execution context for {engine_path}")
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        is_in = {n: self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        super().__init__([n for n in names if is_in[n]], [n for n in names if not is_in[n]],
                         max_batch=max_batch or m.max_batch or None)
        self._dtype = {n: np.dtype(trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
        self._stream = int(cuda(cuda.rt.cudaStreamCreateWithFlags(cuda.rt.cudaStreamNonBlocking)))
        self._dev = {n: _DeviceBuffer(cuda) for n in names}
        self._pinned = {n: _PinnedBuffer(cuda) for n in names}
        # Our own graph capture only for full TensorRT; TensorRT for RTX does it inside the library.
        self._graphs: dict[tuple, Any] = {} if (cuda_graph and not f.is_rtx) else None  # type: ignore[assignment]
        self.model = m.model

    @classmethod
    def from_engine(cls, engine_path: Path, m: "EngineManifest", precision: str, **kw) -> "TrtSession":
        return cls(engine_path, m, precision, **kw)

    @property
    def cache_path(self) -> Path:
        return self.engine_path.with_suffix(".rtcache")

    # -- one chunk
    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if self._context is None:
            raise BackendError(f"{self.model} session is closed")
        cuda, rt, ctx = self.cuda, self.cuda.rt, self._context
        cp = sys.modules.get("cupy")
        on_device = cp is not None and any(isinstance(v, cp.ndarray) for v in feeds.values())
        if on_device:
            cp.cuda.get_current_stream().synchronize()  # producer kernels done before our stream reads
        moved = False
        keep = []  # device inputs bound in place must outlive the enqueue
        for name in self.input_names:
            a, dt = feeds[name], self._dtype[name]
            ctx.set_input_shape(name, tuple(int(d) for d in a.shape))
            nbytes = int(np.prod(a.shape)) * dt.itemsize
            if cp is not None and isinstance(a, cp.ndarray):
                a = cp.ascontiguousarray(a, dtype=dt)
                keep.append(a)
                if self._graphs is None:
                    ctx.set_tensor_address(name, int(a.data.ptr))
                    continue
                moved |= self._dev[name].ensure(nbytes)
                cuda(rt.cudaMemcpyAsync(self._dev[name].ptr, int(a.data.ptr), nbytes,
                                        rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self._stream))
            else:
                host = self._pinned[name].view(tuple(a.shape), dt)
                np.copyto(host, np.asarray(a), casting="same_kind")
                moved |= self._dev[name].ensure(nbytes)
                cuda(rt.cudaMemcpyAsync(self._dev[name].ptr, host.ctypes.data, nbytes,
                                        rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
            ctx.set_tensor_address(name, self._dev[name].ptr)
        shapes = {}
        for name in self.output_names:
            shape = tuple(int(d) for d in ctx.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendError(f"{self.model}: output {name!r} shape {shape} is not determined by the inputs")
            shapes[name] = shape
            moved |= self._dev[name].ensure(int(np.prod(shape)) * self._dtype[name].itemsize)
            ctx.set_tensor_address(name, self._dev[name].ptr)
        self._enqueue(tuple(tuple(int(d) for d in feeds[n].shape) for n in self.input_names), moved)
        out: dict[str, Any] = {}
        for name, shape in shapes.items():
            dt, nbytes = self._dtype[name], int(np.prod(shape)) * self._dtype[name].itemsize
            if on_device:
                dst = cp.empty(shape, dtype=dt)
                cuda(rt.cudaMemcpyAsync(int(dst.data.ptr), self._dev[name].ptr, nbytes,
                                        rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice, self._stream))
                out[name] = dst
            else:
                host = self._pinned[name].view(shape, dt)
                cuda(rt.cudaMemcpyAsync(host.ctypes.data, self._dev[name].ptr, nbytes,
                                        rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
                out[name] = host
        cuda(rt.cudaStreamSynchronize(self._stream))
        del keep
        # Pinned staging is reused by the next call: hand out copies.
        return {k: (v if on_device else v.copy()) for k, v in out.items()}

    def _enqueue(self, key: tuple, moved: bool) -> None:
        cuda, rt = self.cuda, self.cuda.rt
        if self._graphs is None:
            if not self._context.execute_async_v3(self._stream):
                raise BackendError(f"{self.model}: execute_async_v3 failed (see the TensorRT log)")
            return
        if moved:  # a buffer moved: every captured graph points at freed memory
            self._drop_graphs()
        g = self._graphs.get(key)
        if g is None:
            # The first run of a shape lets TensorRT do its lazy allocations outside the capture.
            if not self._context.execute_async_v3(self._stream):
                raise BackendError(f"{self.model}: execute_async_v3 failed (see the TensorRT log)")
            cuda(rt.cudaStreamBeginCapture(self._stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))
            ok = self._context.execute_async_v3(self._stream)
            graph = cuda(rt.cudaStreamEndCapture(self._stream))
            if not ok:
                raise BackendError(f"{self.model}: execute_async_v3 failed during CUDA graph capture")
            exe = cuda(rt.cudaGraphInstantiate(graph, 0))
            self._graphs[key] = g = (graph, exe)
        cuda(rt.cudaGraphLaunch(g[1], self._stream))

    def _drop_graphs(self) -> None:
        rt = self.cuda.rt
        for graph, exe in (self._graphs or {}).values():
            rt.cudaGraphExecDestroy(exe)
            rt.cudaGraphDestroy(graph)
        if self._graphs is not None:
            self._graphs.clear()

    def close(self) -> None:
        if self._context is None:
            return
        rt = self.cuda.rt
        rt.cudaStreamSynchronize(self._stream)
        if self._runtime_cache is not None:
            try:
                self.cache_path.write_bytes(memoryview(self._runtime_cache.serialize()).cast("B"))
            except OSError:
                pass  # a read-only engine folder only costs JIT time at the next start
        self._drop_graphs()
        self._context = None
        self._engine = None
        for b in (*self._dev.values(), *self._pinned.values()):
            b.free()
        rt.cudaStreamDestroy(self._stream)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "engine": str(self.engine_path), "flavour": self.flavour.name,
                "trt_version": self.flavour.version, "cuda_graph": self._graphs is not None}


def load(spec: "ModelSpec", precision: str = "fp16", backend: str = "tensorrt", *, rebuild: bool = False,
         engine_dir: str | Path | None = None, max_batch: int | None = None, device_id: int = 0,
         cuda_graph: bool = False, **_ignored) -> TrtSession:
    """A session on ``spec``'s engine at ``precision``: refuses a stale engine (or rebuilds it with ``rebuild``)."""
    from export import manifest as mf
    from export.engines import ensure_engine

    name = _flavour_name(backend)
    path = ensure_engine(spec, precision, rebuild=rebuild, flavour=name, out_dir=engine_dir)
    m = mf.read(path)
    why = why_not_runnable(m)
    if why:
        raise BackendError(f"{spec.name} {precision} engine cannot run here: {why}")
    return TrtSession(path, m, precision, device_id=device_id, cuda_graph=cuda_graph, max_batch=max_batch)

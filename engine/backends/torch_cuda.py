"""PyTorch-CUDA backend: the shipped ONNX run as a torch module on the GPU, FP16 autocast, CUDA graphs.

For GPUs with no TensorRT build (an H100: TensorRT for RTX refuses compute capability 9.0). The module is
made from the very ONNX file the other backends run (sha256-checked against the manifest): the graph is
simplified with onnxslim and converted with onnx2torch, so there is no second copy of the weights to keep in
step with retraining. FP16 runs the fp32 graph under torch.autocast (matmuls/convs in fp16, reductions and
softmax/layer-norm kept in fp32 by autocast's policy) rather than .half() on the whole graph.

CUDA graphs (``cuda_graph=True``): one graph per input shape, captured after a warm-up on a side stream,
replayed with the inputs copied into static buffers. torch (and onnx2torch) are imported only here, when
this backend is chosen.
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.backends.base import Session, cuda_device_count
from engine.errors import BackendError, ModelError

if TYPE_CHECKING:
    from engine.models import ModelSpec

PRECISIONS = ("fp32", "fp16")


def probe(backend: str = "torch-cuda") -> str | None:
    if cuda_device_count() == 0:
        return "no CUDA GPU"
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install torch)"
    try:
        import onnx2torch  # noqa: F401
    except ImportError:
        return "onnx2torch is not installed (pip install onnx2torch)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no usable CUDA (CPU-only build or driver mismatch)"
    return None


def to_torch_module(spec: "ModelSpec", verify: bool = True):
    """The fp32 ONNX of ``spec`` as a torch.nn.Module (CPU, eval mode); ModelError if it cannot be converted."""
    from export.onnxprep import load_simplified

    try:
        from onnx2torch import convert
    except ImportError:
        raise BackendError("the torch-cuda backend needs onnx2torch (pip install onnx2torch)") from None
    path = spec.path("fp32")
    if not path.is_file():
        raise ModelError(f"model file missing: {path}")
    if verify:
        spec.verify("fp32")
    model, _opset, _note = load_simplified(path)
    try:
        module = convert(model)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises NotImplementedError/KeyError for unknown ops
        raise ModelError(f"onnx2torch cannot convert {path}: {type(exc).__name__}: {exc}") from None
    return module.eval()


class TorchCudaSession(Session):
    backend = "torch-cuda"
    device = "cuda"

    def __init__(self, module, input_names: list[str], output_names: list[str], precision: str,
                 device_id: int = 0, cuda_graph: bool = False, max_batch: int | None = None) -> None:
        import torch

        super().__init__(input_names, output_names, max_batch)
        self.torch = torch
        self.precision = precision
        self.dev = torch.device("cuda", int(device_id))
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module.to(self.dev)
        self.stream = torch.cuda.Stream(self.dev)
        self._graphs: dict[tuple, Any] | None = {} if cuda_graph else None
        self._pinned: dict[str, Any] = {}  # reused page-locked staging, grown on demand

    def _pin(self, key: str, shape: tuple, dtype) -> Any:
        torch = self.torch
        n = int(np.prod(shape))
        buf = self._pinned.get(key)
        if buf is None or buf.numel() < n or buf.dtype != dtype:
            buf = self._pinned[key] = torch.empty(n, dtype=dtype, pin_memory=True)
        return buf[:n].view(shape)

    def _forward(self, *xs):
        torch = self.torch
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.precision == "fp16",
                                                  cache_enabled=False):  # no autocast cache under graph capture
            out = self.module(*xs)
        out = out if isinstance(out, (tuple, list)) else (out,)
        return [o.float() for o in out]

    def _graph_for(self, xs: list):
        torch = self.torch
        key = tuple(tuple(x.shape) for x in xs)
        g = self._graphs.get(key)  # type: ignore[union-attr]
        if g is None:
            static_in = [x.clone() for x in xs]
            with torch.cuda.stream(self.stream):
                for _ in range(2):  # warm-up: cuDNN autotuning and allocator settle outside the capture
                    self._forward(*static_in)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                static_out = self._forward(*static_in)
            g = self._graphs[key] = (graph, static_in, static_out)  # type: ignore[index]
        return g

    def _run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        if self.module is None:
            raise BackendError(f"{self.model} session is closed")
        torch = self.torch
        cp = sys.modules.get("cupy")
        on_device = cp is not None and any(isinstance(v, cp.ndarray) for v in feeds.values())
        with torch.cuda.stream(self.stream):
            xs = []
            for n in self.input_names:
                a = feeds[n]
                if cp is not None and isinstance(a, cp.ndarray):
                    cp.cuda.get_current_stream().synchronize()
                    t = torch.from_dlpack(cp.ascontiguousarray(a, dtype=cp.float32))
                else:
                    host = self._pin("in:" + n, tuple(a.shape), torch.float32)
                    host.numpy()[...] = a
                    t = host.to(self.dev, non_blocking=True)
                xs.append(t)
            if self._graphs is not None:
                graph, static_in, static_out = self._graph_for(xs)
                for s, x in zip(static_in, xs):
                    s.copy_(x, non_blocking=True)
                graph.replay()
                outs = [o.clone() for o in static_out]
            else:
                outs = self._forward(*xs)
            if on_device:
                self.stream.synchronize()
                return {n: cp.from_dlpack(o) for n, o in zip(self.output_names, outs)}
            host_outs = [self._pin("out:" + n, tuple(o.shape), o.dtype) for n, o in zip(self.output_names, outs)]
            for h, o in zip(host_outs, outs):
                h.copy_(o, non_blocking=True)
        self.stream.synchronize()
        # The staging buffers are reused by the next call: hand out copies.
        return {n: h.numpy().copy() for n, h in zip(self.output_names, host_outs)}

    def close(self) -> None:
        self._graphs = None
        self._pinned = {}
        self.module = None
        if hasattr(self, "torch"):
            self.torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "torch": self.torch.__version__, "cuda_graph": self._graphs is not None}


def load(spec: "ModelSpec", precision: str = "fp16", backend: str = "torch-cuda", *, max_batch: int | None = None,
         device_id: int = 0, cuda_graph: bool = False, verify: bool = True, **_ignored) -> TorchCudaSession:
    if precision not in PRECISIONS:
        raise BackendError(f"torch-cuda runs {'/'.join(PRECISIONS)}, not {precision!r} (INT8 needs a TensorRT engine)")
    why = probe(backend)
    if why:
        raise BackendError(f"backend torch-cuda cannot run here: {why}")
    module = to_torch_module(spec, verify=verify)
    sess = TorchCudaSession(module, [i["name"] for i in spec.inputs], [o["name"] for o in spec.outputs],
                            precision, device_id=device_id, cuda_graph=cuda_graph, max_batch=max_batch)
    sess.model = spec.name
    return sess

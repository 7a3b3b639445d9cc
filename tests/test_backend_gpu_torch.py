"""The PyTorch-CUDA backend: the shipped ONNX converted to torch (onnx2torch on the onnxslim'd graph).

The conversion is checked here on the CPU against ONNX Runtime (same weights, same numbers); running it
on CUDA (FP16 autocast, CUDA graphs, CuPy in/out) needs a GPU and skips with the reason otherwise.
"""
from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort
import pytest

from engine.backends import load_session, probe
from engine.backends.base import cuda_device_count
from engine.errors import BackendError
from engine.models import load_manifest

pytest.importorskip("torch", reason="torch is not installed")
pytest.importorskip("onnx2torch", reason="onnx2torch is not installed")
WHY_NOT = probe("torch-cuda")


def _ort(spec, x):
    s = ort.InferenceSession(str(spec.path("fp32")), providers=["CPUExecutionProvider"])
    return s.run(None, {spec.inputs[0]["name"]: x})[0]


@pytest.mark.parametrize("name", ["labeller", "detector"])
def test_onnx_to_torch_matches_onnxruntime_on_cpu(name):
    import torch

    from engine.backends.torch_cuda import to_torch_module

    spec = load_manifest()[name]
    module = to_torch_module(spec)
    x = np.random.default_rng(0).random((2, *spec.inputs[0]["shape"][1:]), dtype=np.float32)
    with torch.inference_mode():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _ort(spec, x), atol=2e-4, rtol=1e-4)


def test_torch_is_not_imported_by_the_runtime():
    # importing the backend registry and the TensorRT backend must not drag torch in (lean install)
    import subprocess

    code = ("import sys, engine.backends, engine.backends.tensorrt, engine.backends.torch_cuda; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_refusal_without_cuda():
    if WHY_NOT is None:
        pytest.skip("CUDA is available")
    spec = load_manifest()["labeller"]
    with pytest.raises(BackendError, match="cannot run here"):
        load_session(spec, "torch-cuda", "fp16")
    if cuda_device_count() == 0:
        assert WHY_NOT == "no CUDA GPU"


@pytest.mark.gpu
@pytest.mark.skipif(WHY_NOT is not None, reason=f"torch-cuda cannot run here: {WHY_NOT}")
@pytest.mark.parametrize("graph", [False, True])
def test_torch_cuda_fp16_matches_onnxruntime(graph):
    spec = load_manifest()["labeller"]
    rng = np.random.default_rng(0)
    with load_session(spec, "torch-cuda", "fp16", cuda_graph=graph) as s:
        assert s.device == "cuda" and s.backend == "torch-cuda"
        for n in (2, 3, 2):
            x = rng.random((n, *spec.inputs[0]["shape"][1:]), dtype=np.float32)
            np.testing.assert_allclose(s.run({"x": x})["logits"], _ort(spec, x), atol=5e-2, rtol=0)
        cp = sys.modules.get("cupy")
        if cp is not None:
            out = s.run({"x": cp.asarray(x)})["logits"]
            assert isinstance(out, cp.ndarray)

"""The TensorRT runtime backend (both flavours through one class).

Here (no GPU) the engine-running tests skip with the precise reason; what can run without a GPU does:
the probe's reason, load_session's refusal, the stale-engine refusal naming the rebuild command, and
parity recorded as "not measured". On a GPU that TensorRT for RTX supports (cc 7.5-8.9, 12.x; not an H100)
the same file builds engines for the present GPU and checks them against ONNX Runtime: host arrays and
CuPy arrays, buffers reused across calls of different batch sizes, CUDA graphs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from engine.backends import load_session, probe
from engine.backends.base import cuda_device_count
from engine.errors import BackendError, StaleEngineError
from engine.models import load_manifest
from export import flavour as fl
from spinert.cli import main

SHIPPED = Path(__file__).resolve().parents[1] / "spinert" / "models"
HAVE_RTX = fl.installed("tensorrt_rtx")
WHY_NOT = probe("tensorrt_rtx")  # None where an RTX engine can run here
needs_rtx = pytest.mark.skipif(not HAVE_RTX, reason="TensorRT for RTX is not installed")
needs_gpu = pytest.mark.skipif(WHY_NOT is not None, reason=f"tensorrt_rtx engines cannot run here: {WHY_NOT}")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    dst = tmp_path_factory.mktemp("models")
    for f in SHIPPED.iterdir():
        if f.suffix in (".onnx", ".json"):
            shutil.copy2(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def engines(models, tmp_path_factory):
    if not HAVE_RTX:
        pytest.skip("TensorRT for RTX is not installed")
    out = tmp_path_factory.mktemp("engines")
    # small profiles: the runtime chunks bigger batches by the profile's max, which the tests exercise
    rc = main(["export", "--target", "rtx", "--models", str(models), "--out", str(out), "--profile", "detector=1/2/4",
               "--profile", "segmenter=1/1/2", "--profile", "labeller=1/2/4"])
    assert rc == 0
    return out


def test_probe_reason_is_precise():
    if cuda_device_count() == 0:
        assert probe("tensorrt_rtx") == "no CUDA GPU" and probe("tensorrt") == "no CUDA GPU"
    elif WHY_NOT is not None:
        assert "tensorrt" in WHY_NOT.lower() or "cuda" in WHY_NOT.lower()


@needs_rtx
def test_load_session_refuses_where_it_cannot_run(models, engines):
    if WHY_NOT is None:
        pytest.skip("an RTX-capable GPU is present")
    spec = load_manifest(models)["labeller"]
    with pytest.raises(BackendError, match="cannot run here"):
        load_session(spec, "tensorrt_rtx", "fp16", engine_dir=engines)
    # the backend module itself (bypassing the probe) also refuses with the reason, after the freshness check
    from engine.backends import tensorrt as trt_backend

    with pytest.raises(BackendError, match="no compatible GPU|no CUDA GPU"):
        trt_backend.load(spec, "fp16", "tensorrt_rtx", engine_dir=engines)
    m = json.loads((engines / "labeller.fp16.rtx.json").read_text())
    assert m["parity"].startswith("not measured: no compatible GPU")


@needs_rtx
def test_backend_refuses_stale_engine_naming_the_command(models, engines, tmp_path):
    from engine.backends import tensorrt as trt_backend

    out = tmp_path / "e"
    shutil.copytree(engines, out)
    m = json.loads((out / "detector.fp16.rtx.json").read_text())
    m["source_sha256"] = "0" * 64
    (out / "detector.fp16.rtx.json").write_text(json.dumps(m))
    spec = load_manifest(models)["detector"]
    with pytest.raises(StaleEngineError, match=r"stale \(model changed.*`spinert export --precision fp16 --target rtx"):
        trt_backend.load(spec, "fp16", "tensorrt_rtx", engine_dir=out)
    with pytest.raises(BackendError, match="no .*engine .*build it with `spinert export --precision fp32"):
        trt_backend.load(spec, "fp32", "tensorrt_rtx", engine_dir=out)


def _ort(spec, x):
    s = ort.InferenceSession(str(spec.path("fp32")), providers=["CPUExecutionProvider"])
    return s.run(None, {spec.inputs[0]["name"]: x})[0]


TOL = {"detector": 0.5, "segmenter": 2e-2, "labeller": 5e-2}  # fp16 engine vs fp32 ONNX (detector: pixels)


@needs_gpu
@pytest.mark.gpu
@pytest.mark.parametrize("name", ["labeller", "detector", "segmenter"])
def test_engine_matches_onnx_runtime(models, engines, name):
    spec = load_manifest(models)[name]
    m = json.loads((engines / f"{name}.fp16.rtx.json").read_text())
    assert isinstance(m["parity"], dict)  # measured at export on this GPU
    shape = [-1 if d == "N" else d for d in spec.inputs[0]["shape"]]
    rng = np.random.default_rng(0)
    with load_session(spec, "tensorrt_rtx", "fp16", engine_dir=engines) as s:
        assert s.device == "cuda" and s.input_names == [spec.inputs[0]["name"]] and s.max_batch == m["profiles"][s.input_names[0]]["max"][0]
        for n in (1, 3, 2):  # grows, chunks past the profile max, shrinks: buffers reused
            x = rng.random([n, *shape[1:]], dtype=np.float32)
            got = s.run({s.input_names[0]: x})[s.output_names[0]]
            np.testing.assert_allclose(got, _ort(spec, x), atol=TOL[name], rtol=0)


@needs_gpu
@pytest.mark.gpu
def test_cupy_in_cupy_out_and_cuda_graph(models, engines):
    cp = pytest.importorskip("cupy", reason="CuPy is not installed")
    spec = load_manifest(models)["labeller"]
    x = np.random.default_rng(1).random((2, *spec.inputs[0]["shape"][1:]), dtype=np.float32)
    ref = _ort(spec, x)
    for graph in (False, True):
        with load_session(spec, "tensorrt_rtx", "fp16", engine_dir=engines, cuda_graph=graph) as s:
            for _ in range(2):
                out = s.run({"x": cp.asarray(x)})["logits"]
                assert isinstance(out, cp.ndarray)
                np.testing.assert_allclose(cp.asnumpy(out), ref, atol=TOL["labeller"], rtol=0)

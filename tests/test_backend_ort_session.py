"""The Session interface, the ONNX Runtime backend and load_session's backend choice (real ORT sessions)."""
from __future__ import annotations

import numpy as np
import pytest

import pipeline_synth as ps
from engine import backends
from engine.backends import AUTO_ORDER, BACKENDS, load_session, probe
from engine.backends.base import cuda_device_count
from engine.errors import BackendError, ModelError
from engine.models import load_manifest

NO_GPU = cuda_device_count() == 0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return ps.make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def specs(models):
    return load_manifest(models)


def test_ort_session_interface(specs):
    s = load_session(specs["labeller"], "onnxruntime", "fp32")
    assert s.backend == "onnxruntime" and s.precision == "fp32" and s.device in ("cpu", "cuda")
    assert s.input_names == ["x"] and s.output_names == ["logits"] and s.model == "labeller"
    x = np.random.default_rng(0).random((3, 2, 48, 96, 96), dtype=np.float32)
    out = s.run({"x": x})
    assert set(out) == {"logits"} and out["logits"].shape == (3, len(ps.CLASSES))
    # The analytic labeller is pool -> linear: check the numbers, not only the shape.
    import onnx
    from onnx import numpy_helper

    init = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(specs["labeller"].path())).graph.initializer}
    want = x.mean(axis=(2, 3, 4), dtype=np.float64) @ init["w"] + init["b"]
    np.testing.assert_allclose(out["logits"], want, rtol=1e-4, atol=1e-4)
    s.close()
    with pytest.raises(BackendError):
        s.run({"x": x})


def test_chunked_run_equals_whole_batch(specs):
    whole = load_session(specs["detector"], "onnxruntime")
    x = np.random.default_rng(1).random((5, 3, ps.IMGSZ, ps.IMGSZ), dtype=np.float32)
    ref = whole.run({"images": x})["output0"]
    chunked = load_session(specs["detector"], "onnxruntime", max_batch=2)
    got = chunked.run({"images": x})["output0"]
    assert got.shape == ref.shape == (5, 5, (ps.IMGSZ // ps.CELL) ** 2)
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(whole.run({"images": x}, max_batch=1)["output0"], ref)


def test_missing_input_name_is_clear(specs):
    s = load_session(specs["labeller"], "onnxruntime")
    with pytest.raises(ValueError, match="missing input"):
        s.run({"images": np.zeros((1, 2, 48, 96, 96), np.float32)})


def test_fp16_file_is_loaded(specs):
    s = load_session(specs["segmenter"], "onnxruntime", "fp16")
    assert s.precision == "fp16"
    out = s.run({"roi": np.zeros((1, 2, 128, 128, 128), np.float32)})["prob"]
    assert out.shape == (1, 1, 128, 128, 128)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU: auto may pick a GPU backend")
def test_auto_falls_back_to_onnxruntime_cpu(specs):
    s = load_session(specs["labeller"], "auto")
    assert s.backend == "onnxruntime" and s.device == "cpu"
    reasons = " ".join(s.fallback_reasons)
    for gpu in ("tensorrt", "tensorrt_rtx", "torch-cuda"):
        assert gpu in reasons
    assert backends.resolve_backend("auto") == "onnxruntime"


@pytest.mark.skipif(not NO_GPU, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("name", ["tensorrt", "tensorrt_rtx", "torch-cuda"])
def test_gpu_backend_without_gpu_is_a_clear_backend_error(specs, name):
    assert probe(name) == "no CUDA GPU"
    with pytest.raises(BackendError, match=f"{name}.*no CUDA GPU"):
        load_session(specs["labeller"], name)


def test_registry_and_unknown_backend(specs):
    assert set(AUTO_ORDER) <= set(BACKENDS) and AUTO_ORDER[-1] == "onnxruntime"
    assert probe("onnxruntime") is None and probe("ort") is None
    with pytest.raises(BackendError, match="unknown backend"):
        load_session(specs["labeller"], "openvino")


def test_int8_needs_a_calibrated_model(specs):
    # ONNX Runtime runs the Q/DQ ONNX of `spinert calibrate` (tests/test_calibration.py); without one the
    # error names the command that builds it.
    with pytest.raises(ModelError, match="spinert calibrate"):
        load_session(specs["labeller"], "onnxruntime", "int8")
    with pytest.raises(BackendError, match="not 'int4'"):
        load_session(specs["labeller"], "onnxruntime", "int4")


def test_model_file_integrity(models, tmp_path):
    import shutil

    root = tmp_path / "m"
    shutil.copytree(models, root)
    f = root / "labeller.onnx"
    f.write_bytes(f.read_bytes()[:-50] + b"\0" * 50)
    spec = load_manifest(root)["labeller"]
    with pytest.raises(ModelError, match="does not match the manifest"):
        load_session(spec, "onnxruntime")
    f.write_bytes(b"not an onnx file")
    with pytest.raises(ModelError, match="cannot load"):
        load_session(spec, "onnxruntime", verify=False)
    f.unlink()
    with pytest.raises(ModelError, match="missing"):
        load_session(spec, "onnxruntime")

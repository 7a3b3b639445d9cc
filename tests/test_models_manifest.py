"""The shipped models: manifest matches the files (sha256), each ONNX loads in onnxruntime with the declared I/O."""
import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest

from engine.errors import ModelError
from engine.cli import sample_paths
from engine.models import MODEL_NAMES, load_manifest, run_precision, sha256_file
from engine.pipeline import Cascade

from _int8_refusal import refuse_int8

SHIPPED = load_manifest()
SAMPLE = sample_paths()["ct"]


def test_manifest_has_three_models_with_files():
    assert set(SHIPPED) == set(MODEL_NAMES)
    for spec in SHIPPED.values():
        for prec in ("fp32", "fp16"):
            assert spec.path(prec).is_file()
            assert sha256_file(spec.path(prec)) == spec.sha256[prec]
        spec.verify()
        # "A few MB": the shipped fp16 files stay small.
        assert spec.path("fp16").stat().st_size < 8 * 2 ** 20


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("prec", ["fp32", "fp16"])
def test_onnx_loads_and_matches_declared_io(name, prec):
    spec = SHIPPED[name]
    sess = ort.InferenceSession(str(spec.path(prec)), providers=["CPUExecutionProvider"])
    ins, outs = sess.get_inputs(), sess.get_outputs()
    assert [i.name for i in ins] == [i["name"] for i in spec.inputs]
    assert [o.name for o in outs] == [o["name"] for o in spec.outputs]
    assert ins[0].shape[0] == "N" and ins[0].type == "tensor(float)" and outs[0].type == "tensor(float)"
    if name == "segmenter":  # the cheap one to run: a real forward pass, batch of 2
        x = np.random.default_rng(0).random((2, *spec.inputs[0]["shape"][1:]), dtype=np.float32)
        y = sess.run(None, {"roi": x})[0]
        assert y.shape == (2, 1, 128, 128, 128) and 0.0 <= y.min() and y.max() <= 1.0
    if name == "labeller":
        assert len(spec.classes) == spec.outputs[0]["shape"][1]
        x = np.zeros((1, *spec.inputs[0]["shape"][1:]), np.float32)
        assert sess.run(None, {"x": x})[0].shape == (1, len(spec.classes))
    if name == "detector":
        s = int(spec.preprocess["imgsz"])
        assert spec.inputs[0]["shape"] == ["N", 3, s, s] and spec.outputs[0]["shape"][:2] == ["N", 5]


def test_verify_detects_tampering_and_missing(tmp_path):
    src = SHIPPED["segmenter"].root
    for f in ["manifest.json", "segmenter.onnx", "segmenter_fp16.onnx"]:
        shutil.copyfile(src / f, tmp_path / f)
    specs = load_manifest(tmp_path)
    specs["segmenter"].verify("fp32")
    with open(tmp_path / "segmenter.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelError, match="does not match"):
        specs["segmenter"].verify("fp32")
    (tmp_path / "segmenter_fp16.onnx").unlink()
    with pytest.raises(ModelError, match="missing"):
        specs["segmenter"].verify("fp16")
    with pytest.raises(ModelError):
        specs["detector"].verify()  # listed in the manifest, absent here


def test_int8_of_a_replaced_fp32_model_is_refused(tmp_path):
    src = SHIPPED["detector"].root
    for f in ["manifest.json", "detector.onnx", "detector_fp16.onnx", "detector_int8.onnx"]:
        shutil.copyfile(src / f, tmp_path / f)
    load_manifest(tmp_path)["detector"].verify("int8")  # calibrated from the shipped fp32 file
    # A retrained fp32 file registered without recalibrating: its old INT8 file must not run.
    m = json.loads((tmp_path / "manifest.json").read_text())
    with open(tmp_path / "detector.onnx", "ab") as f:
        f.write(b"\0")
    m["models"]["detector"]["sha256"]["fp32"] = sha256_file(tmp_path / "detector.onnx")
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="calibrated from another fp32 model"):
        load_manifest(tmp_path)["detector"].verify("int8")


def test_int8_falls_back_to_fp16_only_for_a_model_whose_int8_the_guard_refused(tmp_path):
    # The guard refuses an INT8 file that costs accuracy (session 13's segmenter, session 26's pair; the entry
    # says so): asked for INT8, the cascade runs those models at FP16 and the others at INT8, and says so.
    src = SHIPPED["segmenter"].root
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, tmp_path / f.name)
    refuse_int8(tmp_path, "segmenter")  # a no-op since session 26, whose segmenter the guard refused itself
    specs = load_manifest(tmp_path)
    lacking = [n for n in MODEL_NAMES if "int8" not in specs[n].files]
    assert "segmenter" in lacking and "detector" not in lacking
    assert all(run_precision(specs[n], "int8") == "fp16" for n in lacking)
    assert run_precision(specs["segmenter"], "fp32") == "fp32"
    with Cascade(backend="onnxruntime", precision="int8", models_dir=str(tmp_path), threads=1) as c:
        got = {n: c.sessions[n].precision for n in MODEL_NAMES}
        info = c.models_info()["models"]
        res = c.run(SAMPLE)
    assert got == {n: "fp16" if n in lacking else "int8" for n in MODEL_NAMES}
    assert all(info[n]["precision"] == got[n] and info[n]["sha256"] == specs[n].sha256[got[n]] for n in MODEL_NAMES)
    assert any(w.startswith(f"{', '.join(lacking)} ran at fp16") for w in res.warnings), res.warnings
    # A refusal recorded for another fp32 file (retrained since), or none at all: INT8 is an error that
    # names spinert calibrate, not a silent FP16.
    seg = json.loads((tmp_path / "manifest.json").read_text())
    seg["models"]["segmenter"]["int8_refused"]["source_sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(seg))
    assert run_precision(load_manifest(tmp_path)["segmenter"], "int8") == "int8"
    with pytest.raises(ModelError, match="spinert calibrate"):
        Cascade(backend="onnxruntime", precision="int8", models_dir=str(tmp_path), threads=1)


def test_load_manifest_errors(tmp_path):
    with pytest.raises(ModelError, match="no model manifest"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "other", "models": {}}))
    with pytest.raises(ModelError, match="not a spinert.models/1"):
        load_manifest(tmp_path)

"""`spinert export` with TensorRT for RTX on this CPU-only machine: real FP16 engines of the shipped models,
their manifests and I/O bindings, stale detection after a model change, and one-line errors.

An RTX engine cannot be deserialised without a GPU (the library needs the CUDA driver for that), so the
bindings are checked from what the builder saw (the parsed, strongly typed network recorded in the manifest)
against the ONNX graph and the models manifest, and the engine bytes are checked against the manifest.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from engine.models import load_manifest, sha256_file, write_manifest
from export import flavour as fl
from spinert.cli import main

from _int8_refusal import refuse_int8

pytestmark = pytest.mark.skipif(not fl.installed("tensorrt_rtx"),
                                reason="TensorRT for RTX (tensorrt-rtx-cu13-bindings) is not installed")
SHIPPED = Path(__file__).resolve().parents[1] / "spinert" / "models"
NAMES = ("detector", "segmenter", "labeller")


def _copy_models(dst: Path) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for f in SHIPPED.iterdir():
        if f.suffix in (".onnx", ".json", ".md"):
            shutil.copy2(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    models, out = _copy_models(root / "models"), root / "engines"
    rc = main(["export", "--target", "rtx", "--precision", "fp16", "--models", str(models), "--out", str(out)])
    assert rc == 0
    return models, out


def _manifest(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.fp16.rtx.json").read_text())


def test_engines_and_manifests(built):
    models, out = built
    specs = load_manifest(models)
    f = fl.load("rtx")
    for name in NAMES:
        m = _manifest(out, name)
        engine = out / m["engine_file"]
        assert engine.is_file() and engine.stat().st_size == m["engine_bytes"] > 0
        assert sha256_file(engine) == m["engine_sha256"]
        assert m["schema"] == "spinert.engine/1" and m["model"] == name and m["precision"] == "fp16"
        assert m["flavour"] == "tensorrt_rtx" and m["trt_version"] == f.version
        assert m["source_sha256"] == specs[name].sha256["fp16"] == sha256_file(specs[name].path("fp16"))
        assert m["opset"] >= 17 and m["strongly_typed"] is True and m["builder"].startswith("polygraphy")
        # CPU-only build: every compute capability the library can target, no GPU recorded, no parity invented
        assert m["gpu"] is None and set(m["target_cc"]) >= {"8.6", "8.9"}
        assert m["parity"].startswith("not measured: no compatible GPU")
        assert m["build_seconds"] > 0 and m["built_at"]
        assert (out / m["slim_onnx_file"]).is_file()


def test_io_bindings_match_onnx_and_models_manifest(built):
    models, out = built
    specs = load_manifest(models)
    batch = {"detector": [1, 32, 64], "segmenter": [1, 8, 24], "labeller": [1, 17, 32]}
    for name in NAMES:
        m, spec = _manifest(out, name), specs[name]
        io = {(b["mode"], b["name"]): b for b in m["io"]}
        want = [("input", t) for t in spec.inputs] + [("output", t) for t in spec.outputs]
        assert len(io) == len(want)
        for mode, t in want:
            b = io[(mode, t["name"])]
            assert b["shape"] == [-1 if d == "N" else d for d in t["shape"]]
            assert b["dtype"] == t["dtype"] == "float32"  # fp16 models keep float32 I/O
        # ... and the ONNX graph the engine was built from agrees
        g = onnx.load(str(out / m["slim_onnx_file"])).graph
        assert [i.name for i in g.input] == [t["name"] for t in spec.inputs]
        assert [o.name for o in g.output] == [t["name"] for t in spec.outputs]
        # the serialised engine carries its I/O tensor names
        blob = (out / m["engine_file"]).read_bytes()
        assert all(t["name"].encode() in blob for _, t in want)
        (inp,) = spec.inputs
        prof = m["profiles"][inp["name"]]
        assert [prof["min"][0], prof["opt"][0], prof["max"][0]] == batch[name]
        assert prof["max"][1:] == inp["shape"][1:]


def test_engine_cannot_be_deserialised_without_gpu(built):
    """What the library allows here: building yes, deserialising no (it needs the CUDA driver)."""
    from engine.backends.base import cuda_device_count

    if cuda_device_count():
        pytest.skip("a GPU is present: deserialisation is covered by tests/test_backend_gpu_tensorrt.py")
    _, out = built
    trt = fl.load("rtx").module
    rt = trt.Runtime(trt.Logger(trt.Logger.INTERNAL_ERROR))
    assert rt.deserialize_cuda_engine((out / "segmenter.fp16.rtx.engine").read_bytes()) is None


def test_check_fresh_then_stale_after_model_change_then_rebuild(built, tmp_path, capsys):
    models0, out0 = built
    models, out = tmp_path / "models", tmp_path / "engines"
    shutil.copytree(models0, models)
    shutil.copytree(out0, out)
    args = ["export", "--check", "--target", "rtx", "--models", str(models), "--out", str(out)]
    capsys.readouterr()
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["fresh"] * 3

    # "Retrain" the segmenter: new weights in its fp16 ONNX and the models manifest updated, as training does.
    spec = load_manifest(models)["segmenter"]
    p = spec.path("fp16")
    mdl = onnx.load(str(p))
    w = next(t for t in mdl.graph.initializer if numpy_helper.to_array(t).size > 16)
    w.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(w) * 1.01).astype(numpy_helper.to_array(w).dtype),
                                       w.name))
    onnx.save(mdl, str(p))
    entry = dict(spec.raw)
    entry["sha256"] = {**entry["sha256"], "fp16": sha256_file(p)}
    write_manifest(models, {"segmenter": entry})

    assert main(args) == 1
    out_text = capsys.readouterr().out
    states = {ln.split()[1]: ln for ln in out_text.splitlines() if ln.split()[0] in ("fresh", "stale", "missing")}
    assert states["segmenter"].startswith("stale") and "model changed" in states["segmenter"]
    assert states["detector"].startswith("fresh") and states["labeller"].startswith("fresh")
    assert "spinert export --precision fp16 --target rtx" in out_text

    # The runtime refuses it, naming the command; --rebuild (ensure_engine(rebuild=True)) rebuilds only it.
    from engine.errors import StaleEngineError
    from export.engines import ensure_engine

    spec = load_manifest(models)["segmenter"]
    with pytest.raises(StaleEngineError, match=r"spinert export --precision fp16 --target rtx --model segmenter"):
        ensure_engine(spec, "fp16", rebuild=False, flavour="rtx", out_dir=out)
    before = {n: (out / f"{n}.fp16.rtx.engine").stat().st_mtime_ns for n in NAMES}
    assert ensure_engine(spec, "fp16", rebuild=True, flavour="rtx", out_dir=out) == out / "segmenter.fp16.rtx.engine"
    after = {n: (out / f"{n}.fp16.rtx.engine").stat().st_mtime_ns for n in NAMES}
    assert after["segmenter"] != before["segmenter"]
    assert after["detector"] == before["detector"] and after["labeller"] == before["labeller"]
    assert main(args) == 0
    assert _manifest(out, "segmenter")["source_sha256"] == sha256_file(p)


def test_other_staleness_reasons(built, tmp_path, capsys):
    models0, out0 = built
    out = tmp_path / "engines"
    shutil.copytree(out0, out)
    # a different TensorRT version recorded at build, a corrupted engine, a missing engine
    m = _manifest(out, "detector")
    m["trt_version"] = "1.0.0.0"
    (out / "detector.fp16.rtx.json").write_text(json.dumps(m))
    blob = bytearray((out / "labeller.fp16.rtx.engine").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (out / "labeller.fp16.rtx.engine").write_bytes(bytes(blob))
    (out / "segmenter.fp16.rtx.engine").unlink()
    capsys.readouterr()
    assert main(["export", "--check", "--target", "rtx", "--models", str(models0), "--out", str(out)]) == 1
    lines = {ln.split()[1]: ln for ln in capsys.readouterr().out.splitlines() if ln.split()[0] in ("stale", "missing", "fresh")}
    assert lines["detector"].startswith("stale") and "built with 1.0.0.0" in lines["detector"]
    assert lines["labeller"].startswith("stale") and "does not match its manifest" in lines["labeller"]
    assert lines["segmenter"].startswith("missing")
    # a plain export rebuilds exactly those and leaves nothing stale
    assert main(["export", "--target", "rtx", "--models", str(models0), "--out", str(out), "--no-parity"]) == 0
    assert main(["export", "--check", "--target", "rtx", "--models", str(models0), "--out", str(out)]) == 0


def test_fresh_engines_are_skipped_and_profiles_rebuild(built, tmp_path, capsys):
    models, out0 = built
    out = tmp_path / "engines"
    shutil.copytree(out0, out)
    capsys.readouterr()
    assert main(["export", "--target", "rtx", "--models", str(models), "--out", str(out), "--model", "labeller"]) == 0
    assert "fresh   labeller" in capsys.readouterr().out
    assert main(["export", "--target", "rtx", "--models", str(models), "--out", str(out), "--model", "labeller",
                 "--profile", "labeller=1/2/4", "--cc", "8.9"]) == 0
    assert "profiles changed" in capsys.readouterr().out
    m = _manifest(out, "labeller")
    assert m["profiles"]["x"]["max"][0] == 4 and m["target_cc"] == ["8.9"]


@pytest.mark.parametrize("argv, needle", [
    (["--models", "/nonexistent/models"], "models folder not found"),
    (["--precision", "int4"], "unknown precision 'int4'"),
    (["--target", "cuda"], "unknown TensorRT target"),
    (["--model", "nope"], "unknown model(s) nope"),
    (["--profile", "labeller=4/2/1"], "MIN <= OPT <= MAX"),
    (["--cc", "9.0"], "is not a tensorrt_rtx"),
])
def test_bad_inputs_one_line(built, tmp_path, capsys, argv, needle):
    models, _ = built
    base = ["export", "--target", "rtx", "--models", str(models), "--out", str(tmp_path / "e")]
    rc = main(base + argv)
    err = capsys.readouterr().err
    assert rc == 2 and needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_int8_without_a_calibrated_model_names_calibrate(tmp_path, capsys):
    models = _copy_models(tmp_path / "models")
    man = json.loads((models / "manifest.json").read_text())
    for entry in man["models"].values():  # as shipped before `spinert calibrate` ran
        for key in ("files", "sha256", "size_bytes"):
            entry.get(key, {}).pop("int8", None)
        entry.pop("calibration", None)
        entry.pop("int8_refused", None)
    (models / "manifest.json").write_text(json.dumps(man))
    rc = main(["export", "--target", "rtx", "--precision", "int8", "--models", str(models), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err
    assert rc == 2 and "spinert calibrate" in err and len(err.strip().splitlines()) == 1


def test_no_tensorrt_installed_one_line(built, tmp_path, capsys, monkeypatch):
    models, _ = built
    monkeypatch.setattr(fl, "_import", lambda name: None)
    for target in ("rtx", "auto"):
        rc = main(["export", "--target", target, "--models", str(models), "--out", str(tmp_path / "e")])
        err = capsys.readouterr().err
        assert rc == 2 and "installed" in err and "pip install tensorrt-rtx" in err
        assert len(err.strip().splitlines()) == 1


def test_unmanaged_engine_file_is_not_overwritten(built, tmp_path, capsys):
    models, _ = built
    out = tmp_path / "e"
    out.mkdir()
    (out / "labeller.fp16.rtx.engine").write_bytes(b"someone else's file")
    rc = main(["export", "--target", "rtx", "--models", str(models), "--out", str(out), "--model", "labeller"])
    assert rc == 2 and "--force" in capsys.readouterr().err
    assert (out / "labeller.fp16.rtx.engine").read_bytes() == b"someone else's file"


@pytest.mark.slow
def test_tiny_retrain_makes_exactly_that_engine_stale(built, tmp_path, capsys):
    """One tiny step of real retraining (`spinert train labeller --tiny`), then --check and a rebuild."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _synth_spine import make_folder

    models0, out0 = built
    models, out = tmp_path / "models", tmp_path / "engines"
    shutil.copytree(models0, models)
    shutil.copytree(out0, out)
    data = make_folder(tmp_path / "synth", n=2)
    assert main(["train", "labeller", "--data", str(data), "--out", str(models), "--work", str(tmp_path / "w"),
                 "--tiny", "--device", "cpu", "--overwrite"]) == 0
    capsys.readouterr()
    check = ["export", "--check", "--target", "rtx", "--models", str(models), "--out", str(out)]
    assert main(check) == 1
    states = {ln.split()[1]: ln.split()[0] for ln in capsys.readouterr().out.splitlines()
              if ln.split()[0] in ("fresh", "stale", "missing")}
    assert states == {"detector": "fresh", "segmenter": "fresh", "labeller": "stale"}
    assert main(["export", "--target", "rtx", "--models", str(models), "--out", str(out), "--no-parity"]) == 0
    assert main(check) == 0
    spec = load_manifest(models)["labeller"]
    io = {b["name"]: b for b in _manifest(out, "labeller")["io"]}
    assert io["x"]["shape"][1:] == spec.inputs[0]["shape"][1:]
    assert io["logits"]["shape"] == [-1, *spec.outputs[0]["shape"][1:]]
    assert np.isfinite(_manifest(out, "labeller")["build_seconds"])


def test_int8_export_uses_the_fp16_engine_of_a_model_whose_int8_was_refused(built, tmp_path, capsys):
    # A segmenter whose INT8 file the calibration guard refused (sessions 13-20's): asked for INT8, the cascade
    # loads its FP16 engine (engine.models.run_precision), so that is the engine export checks and builds.
    _, out = built
    models = _copy_models(tmp_path / "models")
    refuse_int8(models, "segmenter")
    rc = main(["export", "--check", "--target", "rtx", "--precision", "int8", "--models", str(models), "--out", str(out)])
    lines = capsys.readouterr().out.splitlines()
    seg = [ln for ln in lines if " segmenter " in f" {ln} "]
    assert rc == 1 and len(seg) == 1 and "segmenter.fp16.rtx.engine" in seg[0] and not seg[0].startswith("missing")
    # The detector ships an INT8 file, so its INT8 engine (not built by the fixture) is what is missing.
    assert any("detector.int8.rtx.engine" in ln and ln.startswith("missing") for ln in lines)

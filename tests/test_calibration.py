"""`spinert calibrate`: real Q/DQ quantisation (onnxruntime.quantization) of real ONNX models, calibrated on a
real CT (a tiny phantom with its label map), run by real ONNX Runtime sessions and by the whole cascade.

The models are the analytic ones of tests/pipeline_synth.py (so the cascade finds the bone blocks of a
synthetic CT in a second) and, for a conv/transformer network quantised with the default TensorRT op set,
a copy of the shipped labeller (only its structure is relied on, not its weights).

INT8 vs FP32 bounds on the calibration inputs (int8 step = range / 127 per tensor):
- labeller logits: max |d| <= 5 % of max |fp32| (a few steps through pool, matmul and add);
- segmenter probability: max |d| <= 0.1, mean |d| <= 0.005, the 0.5-thresholded mask agrees on >= 99.9 %
  of voxels;
- detector: boxes within 1 px (one int8 step of the ~124 px anchor range is 0.98 px), and the detection
  decision (score > 0.5) agrees on >= 99 % of anchors (the synthetic detector's peak test compares two
  quantised tensors for equality, so a near-tie can flip);
- shipped labeller (default op types): max |d| <= 10 % of max |fp32|.
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import SimpleITK as sitk
from onnx import numpy_helper

import phantom
import pipeline_synth as ps
from calibration.cache import CalibCache
from calibration.data import data_fingerprint
from engine.models import MODEL_NAMES, load_manifest, read_manifest, run_precision, sha256_file
from engine.preprocess import volume_to_image
from engine.types import Volume
from engine.verse import centroids_from_labels, write_ctd
from spinert.cli import build_parser, main

SHIPPED = Path(__file__).resolve().parents[1] / "spinert" / "models"
INPUT = {"detector": "images", "segmenter": "roi", "labeller": "x"}
GUARD_FIRST_LABEL = 18  # the synthetic cascade labels the 4 blocks T11..L2 (checked: fp32 Dice > 0.5 below)


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def blocks_case(folder: Path, cid: str, n_vert: int = 4, first: int = GUARD_FIRST_LABEL) -> Path:
    """pipeline_synth.make_ct's CT as a VerSe-style case: its bone blocks are the vertebra masks."""
    folder.mkdir(parents=True, exist_ok=True)
    vol = ps.make_ct(n_vert=n_vert)
    nk, nj, ni = vol.array.shape
    sx, sy, sz = vol.spacing
    Z, Y, X = np.meshgrid((np.arange(nk) + 0.5) * sz, (np.arange(nj) + 0.5) * sy, (np.arange(ni) + 0.5) * sx,
                          indexing="ij")
    lab = np.zeros(vol.array.shape, np.uint8)
    for v in range(n_vert):  # same blocks as make_ct; the top (largest Z) block gets the first label
        r = np.maximum(np.maximum(np.abs(Z - (31 + v * 32)) / 10, np.abs(X - 45) / 14), np.abs(Y - 42) / 12)
        lab[r <= 1] = first + n_vert - 1 - v
    ct = Volume(np.rint(vol.array).astype(np.int16), vol.spacing, vol.origin, vol.direction, cid)
    lv = Volume(lab, vol.spacing, vol.origin, vol.direction, cid)
    sitk.WriteImage(volume_to_image(ct), str(folder / f"{cid}_ct.nii.gz"))
    sitk.WriteImage(volume_to_image(lv), str(folder / f"{cid}_seg-vert_msk.nii.gz"))
    write_ctd(folder / f"{cid}_ctd.json", centroids_from_labels(lv), overwrite=True)
    return folder


@pytest.fixture(scope="module")
def cal_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cal")
    phantom.write_case(phantom.generate(3, "tiny"), root, meta=False)
    return root


@pytest.fixture(scope="module")
def guard_data(tmp_path_factory) -> Path:
    return blocks_case(tmp_path_factory.mktemp("guard"), "blocks-0")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


def _args(models: Path, data: Path, cache: Path, *extra: str) -> list[str]:
    return ["calibrate", "--models", str(models), "--data", str(data), "--samples", "4", "--cache", str(cache),
            "--op-types", "all", *extra]


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, cal_data, cache):
    models = ps.make_models(tmp_path_factory.mktemp("calibrated") / "models")
    rc, out, err = _main(_args(models, cal_data, cache))
    assert rc == 0, err
    return models, out


def _inputs(models: Path, cache: Path, name: str) -> np.ndarray:
    rec = read_manifest(models)["models"][name]["calibration"]
    got = CalibCache(cache).load_inputs(name, rec["set_fingerprint"])
    assert got is not None and got.n == rec["samples"] == 4
    return got


def _run(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {name: x})[0]


# ------------------------------------------------------------------------------------------------ the models
def test_int8_models_are_qdq_with_zero_zero_points(calibrated):
    models, out = calibrated
    for name in MODEL_NAMES:
        m = onnx.load(str(models / f"{name}_int8.onnx"))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
        dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
        assert q and dq, name
        for n in q + dq:
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), (name, n.name)  # symmetric int8: TensorRT's only kind
            assert (inits[n.input[1]] > 0).all()
        assert f"{name}: 4 inputs" in out


def test_int8_outputs_are_close_to_fp32_on_the_calibration_inputs(calibrated, cache):
    models, _ = calibrated
    res = {}
    for name in MODEL_NAMES:
        x = _inputs(models, cache, name).x
        res[name] = (_run(models / f"{name}.onnx", INPUT[name], x), _run(models / f"{name}_int8.onnx", INPUT[name], x))
    a, b = res["labeller"]
    assert a.shape == b.shape == (4, 24)  # the whole batch at once: the dynamic batch axis survived
    assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()
    a, b = res["segmenter"]
    d = np.abs(a - b)
    assert d.max() <= 0.1 and d.mean() <= 0.005 and ((a > 0.5) == (b > 0.5)).mean() >= 0.999
    assert (a > 0.5).any()  # the calibration ROIs do contain bone
    a, b = res["detector"]
    assert np.abs(a[:, :4] - b[:, :4]).max() <= 1.0
    assert ((a[:, 4] > 0.5) == (b[:, 4] > 0.5)).mean() >= 0.99


def test_calibration_inputs_are_the_runtime_tensors(calibrated, cache, cal_data):
    """Each cached sample equals what engine.modelio builds from training's canonical case (independent loader)."""
    from engine.detect import spine_band
    from engine.modelio import detector_batch, labeller_input, segmenter_input
    from training.data import load_case

    models, _ = calibrated
    specs = load_manifest(models)
    cid = next(cal_data.glob("*_ct.nii.gz")).name[:-len("_ct.nii.gz")]
    case = load_case(cal_data, cid, 1.0)
    band = spine_band(case.iso, 1.0).slices
    for name in MODEL_NAMES:
        ci, pp = _inputs(models, cache, name), specs[name].preprocess
        assert {c for c, _ in ci.keys} == {cid}
        for x, (_, k) in zip(ci.x, ci.keys):
            if name == "detector":
                assert k in band
                want = detector_batch(case.iso, [k], pp)[0][0]
            elif name == "segmenter":
                want = segmenter_input(case.iso, case.centers[k], pp)
            else:
                want = labeller_input(case.labels == k, case.iso, case.centers[k], pp)
            np.testing.assert_array_equal(x, want)
    det = [k for _, k in _inputs(models, cache, "detector").keys]
    assert det[0] == band[0] and det[-1] == band[-1]  # spread over the whole band, ends included ...
    assert band[(band.size - 1) // 2] in det  # ... and its middle, where the detector fires hardest
    seg = [k for _, k in _inputs(models, cache, "segmenter").keys]
    assert len(set(seg)) == 4 and set(seg) <= set(case.centers)


def test_manifest_gets_a_verified_int8_entry_and_the_cascade_runs_it(calibrated, cal_data, guard_data, tmp_path):
    models, _ = calibrated
    specs = load_manifest(models)
    raw = read_manifest(models)["models"]
    for name in MODEL_NAMES:
        spec = specs[name]
        assert spec.files["int8"] == f"{name}_int8.onnx"
        spec.verify("int8")  # sha256 of the file matches the manifest
        assert raw[name]["size_bytes"]["int8"] == spec.path("int8").stat().st_size
        rec = raw[name]["calibration"]
        assert rec["method"] == "minmax" and rec["samples"] == 4 and rec["format"] == "QDQ"
        assert rec["data_fingerprint"] == data_fingerprint(cal_data, rec["cases"])
        assert rec["source_sha256"] == spec.sha256["fp32"] and rec["date"] and rec["guard"] is None
        assert {"onnxruntime", "onnx", "numpy"} <= set(rec["versions"])
        assert rec["qdq"]["nonzero_zero_points"] == 0 and rec["qdq"]["quantize_linear"] > 0
        # The graph's outputs are written by float nodes: the detector's boxes (pixels) and scores (0-1)
        # share one tensor, and one INT8 scale for both rounds every score to zero.
        g = onnx.load(str(spec.path("int8"))).graph
        producers = {o: n.op_type for n in g.node for o in n.output}
        assert all(producers[o.name] != "DequantizeLinear" for o in g.output), name
    ct = guard_data / "blocks-0_ct.nii.gz"
    rc, out, err = _main(["run", str(ct), "--out", str(tmp_path), "--backend", "onnxruntime", "--precision", "int8",
                          "--models", str(models), "--quiet"])
    assert rc == 0, err
    res = json.loads((tmp_path / "blocks-0_ct_result.json").read_text())
    assert res["precision"] == "int8" and len(res["vertebrae"]) == 4
    assert any("INT8 Q/DQ on ONNX Runtime" in w for w in res["warnings"])  # slow there: said once, plainly


# -------------------------------------------------------------------------------------------- cache, outputs
def test_rerun_reuses_cached_inputs_and_ranges(calibrated, cal_data, cache, tmp_path):
    models, _ = calibrated
    fresh = ps.make_models(tmp_path / "models")
    rc, out, err = _main(_args(fresh, cal_data, cache))
    assert rc == 0, err
    for name in MODEL_NAMES:
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(f"{name}:"))
        assert "inputs" in line and line.count("reused from cache") == 2, line
        # same model, data and ranges -> the very same INT8 file
        assert sha256_file(fresh / f"{name}_int8.onnx") == sha256_file(models / f"{name}_int8.onnx")
    # another method: the inputs are reused, the ranges are calibrated anew
    rc, out, err = _main(_args(fresh, cal_data, cache, "--overwrite", "--method", "percentile", "--model", "labeller"))
    assert rc == 0, err
    assert "(reused from cache), ranges calibrated" in out
    assert read_manifest(fresh)["models"]["labeller"]["calibration"]["method"] == "percentile"
    rc, out, err = _main(_args(fresh, cal_data, cache, "--overwrite", "--method", "entropy", "--model", "labeller"))
    assert rc == 0 and "(reused from cache), ranges calibrated" in out and "histogram" not in out, err
    assert read_manifest(fresh)["models"]["labeller"]["calibration"]["method"] == "entropy"
    # a damaged ranges file is recomputed, never trusted
    rpath = next(p for p in (cache / "ranges").glob("labeller-percentile-*.json") if not p.name.endswith(".meta.json"))
    rpath.write_text("{not json")
    rc, out, err = _main(_args(fresh, cal_data, cache, "--overwrite", "--method", "percentile", "--model", "labeller"))
    assert rc == 0, err
    assert "ranges calibrated" in out and json.loads(rpath.read_text())


def test_existing_int8_file_is_not_overwritten(calibrated, cal_data, cache):
    models, _ = calibrated
    before = {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()}
    rc, out, err = _main(_args(models, cal_data, cache))
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "detector_int8.onnx exists (use --overwrite" in err
    assert {p.name: p.read_bytes() for p in models.iterdir() if p.is_file()} == before


# ------------------------------------------------------------------------------------------------ the guard
def test_guard_accepts_and_records_the_deltas(cal_data, guard_data, cache, tmp_path):
    models = ps.make_models(tmp_path / "models")
    rc, out, err = _main(_args(models, cal_data, cache, "--guard", str(guard_data)))
    assert rc == 0, err
    rep = json.loads((models / "int8_guard" / "int8_guard.json").read_text())
    assert (models / "int8_guard" / "int8_guard.md").is_file() and (models / "int8_guard" / "int8_guard.png").is_file()
    assert rep["verdict"] == "accepted" and rep["cases"] == ["blocks-0"] and not rep["reasons"]
    s, d = rep["summary"], rep["delta_vs_fp32"]
    assert set(s) == {"fp32", "fp16", "int8"} and set(d) == {"fp16", "int8"}
    assert s["fp32"]["dice"] > 0.5 and s["fp32"]["labelling_accuracy"] == 1.0  # a meaningful comparison
    assert abs(d["int8"]["dice"] - (s["int8"]["dice"] - s["fp32"]["dice"])) < 1e-12
    assert d["int8"]["dice"] >= -0.01 and d["fp16"]["dice"] == 0.0  # the synthetic fp16 files are the fp32 graphs
    for name in MODEL_NAMES:
        g = read_manifest(models)["models"][name]["calibration"]["guard"]
        assert g["verdict"] == "accepted" and g["delta_vs_fp32"] == d
    assert "guard int8: Dice" in out


def test_guard_refusal_keeps_the_model_out_of_the_manifest_unless_forced(cal_data, guard_data, cache, tmp_path):
    from engine.backends import load_session
    from engine.errors import ModelError

    models = ps.make_models(tmp_path / "models")
    manifest_before = (models / "manifest.json").read_text()
    rc, out, err = _main(_args(models, cal_data, cache, "--guard", str(guard_data), "--max-dice-drop", "-1"))
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith("spinert calibrate: error: INT8 refused by the accuracy guard: mean Dice drops")
    assert "detector_int8.rejected.onnx" in err and "--force" in err
    for name in MODEL_NAMES:
        assert (models / f"{name}_int8.rejected.onnx").is_file() and not (models / f"{name}_int8.onnx").exists()
    # No INT8 file is registered; each entry only records the refusal, tied to its fp32 file, so that a
    # cascade asked for INT8 runs these models at FP16 (engine.models.run_precision).
    before, after = json.loads(manifest_before)["models"], read_manifest(models)["models"]
    for name in MODEL_NAMES:
        refusal = after[name].pop("int8_refused")
        assert refusal["source_sha256"] == before[name]["sha256"]["fp32"] and refusal["reasons"]
        assert after[name] == before[name]
        assert run_precision(load_manifest(models)[name], "int8") == "fp16"
    assert not list(models.glob(".calibrate-*"))  # no scratch left behind
    with pytest.raises(ModelError, match="spinert calibrate"):
        load_session(load_manifest(models)["labeller"], "onnxruntime", "int8")
    assert json.loads((models / "int8_guard" / "int8_guard.json").read_text())["verdict"] == "refused"
    # a rerun needs --overwrite (report and rejected files exist); --force registers despite the guard
    rc, _, err = _main(_args(models, cal_data, cache, "--guard", str(guard_data), "--max-label-drop", "-1"))
    assert rc == 2 and "exists (use --overwrite" in err
    rc, out, err = _main(_args(models, cal_data, cache, "--guard", str(guard_data), "--max-label-drop", "-1",
                               "--force", "--overwrite"))
    assert rc == 0 and "overridden by --force" in err and "labelling accuracy drops" in err
    for name in MODEL_NAMES:
        load_manifest(models)[name].verify("int8")
        assert read_manifest(models)["models"][name]["calibration"]["guard"]["verdict"] == "forced"
        assert "int8_refused" not in read_manifest(models)["models"][name]
        assert run_precision(load_manifest(models)[name], "int8") == "int8"


# ----------------------------------------------------------------------------- a real network, default op set
def test_shipped_labeller_default_op_types_quantise_every_conv_per_channel(cal_data, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    for f in ("labeller.onnx", "manifest.json"):
        shutil.copy2(SHIPPED / f, models / f)
    rc, out, err = _main(["calibrate", "--models", str(models), "--data", str(cal_data), "--model", "labeller",
                          "--samples", "3", "--cache", str(tmp_path / "cache")])
    assert rc == 0, err
    m = onnx.load(str(models / "labeller_int8.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    producer = {o: n for n in m.graph.node for o in n.output}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert convs and any(n.op_type == "MatMul" for n in m.graph.node)
    for c in convs:
        x, w = producer[c.input[0]], producer[c.input[1]]
        assert x.op_type == w.op_type == "DequantizeLinear"
        wq, scale, zp = inits[w.input[0]], inits[w.input[1]], inits[w.input[2]]
        assert wq.dtype == np.int8 and scale.shape == (wq.shape[0],) and not zp.any()  # per output channel
        assert len(c.input) < 3 or c.input[2] in inits  # the bias stays float (TensorRT refuses int32 ones)
    ci = CalibCache(tmp_path / "cache").load_inputs(
        "labeller", read_manifest(models)["models"]["labeller"]["calibration"]["set_fingerprint"])
    a, b = _run(models / "labeller.onnx", "x", ci.x), _run(models / "labeller_int8.onnx", "x", ci.x)
    assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()


# ------------------------------------------------------------------------------------------------ bad inputs
def _corrupt_data(root: Path) -> Path:
    root.mkdir()
    for suf in ("_ct.nii.gz", "_seg-vert_msk.nii.gz"):
        (root / f"bad{suf}").write_bytes(b"not a nifti")
    return root


def _no_ctd(root: Path) -> Path:
    blocks_case(root, "b")
    (root / "b_ctd.json").unlink()
    return root


@pytest.mark.parametrize("edit, needle", [
    (lambda a, t: a + ["--method", "kl"], "unknown calibration method 'kl'"),
    (lambda a, t: a + ["--samples", "0"], "--samples must be >= 1"),
    (lambda a, t: a + ["--model", "nope"], "unknown model(s) nope"),
    (lambda a, t: a + ["--op-types", "Frobnicate"], "cannot quantise Frobnicate"),
    (lambda a, t: a + ["--max-dice-drop", "nan"], "must be a finite number"),
    (lambda a, t: a + ["--models", "/nonexistent/models"], "models folder not found"),
    (lambda a, t: a + ["--data", "/nonexistent/data"], "--data /nonexistent/data: no such folder"),
    (lambda a, t: a + ["--data", str(t / "empty")], "no VerSe-style cases"),
    (lambda a, t: a + ["--data", str(_corrupt_data(t / "bad"))], "bad_ct.nii.gz"),
    (lambda a, t: a + ["--guard", "/nonexistent/guard"], "--guard /nonexistent/guard: no such folder"),
    (lambda a, t: a + ["--guard", str(_no_ctd(t / "g"))], "lacks b_ctd.json"),
    (lambda a, t: a + ["--cache", str(t / "file")], "is a file, not a folder"),
])
def test_bad_inputs_are_one_line_errors(cal_data, cache, tmp_path, edit, needle):
    models = ps.make_models(tmp_path / "models")
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    rc, _, err = _main(edit(_args(models, cal_data, cache), tmp_path))
    assert rc == 2, err
    assert err.count("\n") == 1 and err.startswith("spinert calibrate: error: ") and needle in err, err
    assert not list(models.glob("*_int8*.onnx")) and "int8" not in load_manifest(models)["labeller"].files


# ------------------------------------------------------------------------------- export and run --rebuild
def test_export_int8_builds_from_the_qdq_file_or_fails_in_one_line(cal_data, cache, tmp_path):
    from export import flavour as fl

    if not fl.installed("tensorrt_rtx"):
        pytest.skip("TensorRT for RTX (tensorrt-rtx-cu13-bindings) is not installed")
    models = ps.make_models(tmp_path / "models")
    rc, _, err = _main(["calibrate", "--models", str(models), "--data", str(cal_data), "--samples", "4",
                        "--cache", str(cache), "--model", "labeller"])
    assert rc == 0, err
    out = tmp_path / "engines"
    base = ["export", "--precision", "int8", "--target", "rtx", "--models", str(models), "--out", str(out),
            "--model", "labeller", "--no-parity"]
    rc, so, err = _main(base + ["--cc", "8.6,8.9"])
    assert rc == 0, err
    m = json.loads((out / "labeller.int8.rtx.json").read_text())
    assert m["precision"] == "int8" and m["target_cc"] == ["8.6", "8.9"]
    assert m["source_sha256"] == sha256_file(models / "labeller_int8.onnx")
    assert m["extra"]["simplify"] == "Q/DQ graph: not simplified"
    slim = onnx.load(str(out / m["slim_onnx_file"]))
    assert any(n.op_type == "QuantizeLinear" for n in slim.graph.node)
    # TensorRT for RTX 1.7 compiles no INT8 path for Turing: one line naming the layer and the way out
    rc, so, err = _main(base + ["--cc", "7.5", "--force"])
    assert rc == 2 and err.count("\n") == 1, err
    assert "could not build labeller int8" in err and "Turing" in err and "--cc" in err


def test_run_rebuild_reaches_the_tensorrt_backend(calibrated, guard_data, tmp_path, monkeypatch):
    """`spinert run --rebuild` parses and arrives at the TensorRT backend's load(..., rebuild=True)."""
    import engine.backends as eb
    from engine.backends import onnxruntime as ort_backend
    from engine.backends import tensorrt as trt_backend

    models, _ = calibrated
    ct = str(guard_data / "blocks-0_ct.nii.gz")
    parser = build_parser()
    assert parser.parse_args(["run", ct, "--out", "o", "--rebuild"]).rebuild is True
    assert parser.parse_args(["run", ct, "--out", "o"]).rebuild is False
    assert parser.parse_args(["demo", "--rebuild"]).rebuild is True
    seen = []

    def fake_load(spec, precision="fp16", backend="tensorrt", *, rebuild=False, **kw):
        seen.append((spec.name, backend, precision, rebuild))
        return ort_backend.load(spec, "fp32", "onnxruntime")  # no GPU here: stand in with a real ORT session

    monkeypatch.setattr(eb, "probe", lambda name: None)
    monkeypatch.setattr(trt_backend, "load", fake_load)
    rc, _, err = _main(["run", ct, "--out", str(tmp_path), "--backend", "tensorrt", "--precision", "fp16",
                        "--models", str(models), "--rebuild", "--quiet"])
    assert rc == 0, err
    assert seen == [(m, "tensorrt", "fp16", True) for m in MODEL_NAMES]
    seen.clear()
    rc, _, err = _main(["run", ct, "--out", str(tmp_path), "--backend", "tensorrt", "--precision", "fp16",
                        "--models", str(models), "--overwrite", "--quiet"])
    assert rc == 0, err
    assert [r for *_, r in seen] == [False] * 3

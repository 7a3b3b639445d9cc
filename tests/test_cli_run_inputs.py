"""`spinert run` / `spinert demo` through the real dispatcher: outputs, overwrite protection, bad inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import pipeline_synth as ps
from engine.errors import InputError
from engine.io import write_volume
from engine.pipeline import Cascade
from spinert.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return ps.make_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def ct_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("ct") / "case7_ct.nii.gz"
    write_volume(ps.make_ct(n_vert=3), p)
    return p


def _run(argv, capsys):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_run_writes_the_contract_files(models, ct_file, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = _run(["run", str(ct_file), "--out", str(out), "--models", str(models),
                            "--backend", "onnxruntime"], capsys)
    assert rc == 0, err
    names = sorted(p.name for p in out.iterdir())
    assert names == ["case7_ct_ctd.json", "case7_ct_result.json", "case7_ct_seg-vert_msk.nii.gz"]
    ctd = json.loads((out / "case7_ct_ctd.json").read_text())
    assert len(ctd) == 3
    img = sitk.ReadImage(str(out / "case7_ct_seg-vert_msk.nii.gz"))
    src = sitk.ReadImage(str(ct_file))
    assert img.GetSize() == src.GetSize()
    np.testing.assert_allclose(img.GetOrigin(), src.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(img.GetSpacing(), src.GetSpacing(), atol=1e-6)
    assert "3 vertebrae" in stdout and "detect" in stdout  # summary + timing table


def test_switches_turn_off_the_steps_they_name(models, ct_file):
    from engine.cli import _cascade
    from spinert.cli import build_parser

    base = ["run", str(ct_file), "--out", "x", "--models", str(models), "--backend", "onnxruntime"]
    with _cascade(build_parser().parse_args(base)) as c:
        on = c.config
    flags = ["--no-recover", "--no-ribs", "--no-regrow", "--raw-centres", "--no-face-pieces"]
    with _cascade(build_parser().parse_args(base + flags)) as c:
        off = c.config
    assert (on.chain.recover, on.ribs.rib_cue, on.segment.regrow_rounds > 0, on.centre_offset,
            on.segment.face_pieces) == (True,) * 5
    assert (off.chain.recover, off.ribs.rib_cue, off.segment.regrow_rounds, off.centre_offset,
            off.segment.face_pieces) == (False, False, 0, False, False)


def test_existing_outputs_are_never_overwritten(models, ct_file, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", str(ct_file), "--out", str(out), "--models", str(models), "--quiet"]
    assert _run(argv, capsys)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, _, err = _run(argv, capsys)
    assert rc == 2
    line = _one_error_line(err)
    assert "case7_ct_" in line and "--overwrite" in line
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    rc, _, err = _run(argv + ["--overwrite"], capsys)
    assert rc == 0, err


def test_all_targets_checked_before_any_is_written(models, ct_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "case7_ct_result.json").write_text("mine")
    rc, _, err = _run(["run", str(ct_file), "--out", str(out), "--models", str(models), "--quiet"], capsys)
    assert rc == 2 and "case7_ct_result.json" in _one_error_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["case7_ct_result.json"]
    assert (out / "case7_ct_result.json").read_text() == "mine"


def _bad_inputs(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (path, expected words in the one-line error)."""
    cases = {}
    cases["missing"] = (d / "nope_ct.nii.gz", "no such file")
    p = d / "corrupt_ct.nii.gz"
    p.write_bytes(os.urandom(2048))
    cases["corrupt"] = (p, "cannot read")
    p = d / "empty_ct.nii.gz"
    p.write_bytes(b"")
    cases["empty"] = (p, "cannot read")
    p = d / "flat_ct.nii.gz"
    sitk.WriteImage(sitk.Image([64, 64], sitk.sitkInt16), str(p))
    cases["2d"] = (p, "3-D")
    vol = ps.make_ct(n_vert=2)
    vol.array[5, 5, 5] = np.nan
    p = d / "nan_ct.mha"  # ITK's NIfTI reader turns NaN into 0; MHA keeps it
    write_volume(vol, p)
    cases["nan"] = (p, "NaN")
    p = d / "thick_ct.nii.gz"
    write_volume(ps.make_ct(n_vert=2, spacing=(0.8, 0.8, 5.0)), p)
    cases["thick"] = (p, "too coarse")
    # A header that promises 4096^3 voxels (no data behind it): refused before any voxel is read.
    p = d / "huge_ct.mhd"
    p.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4096 4096 4096\nElementSpacing = 0.5 0.5 0.5\n"
                 "ElementType = MET_SHORT\nElementDataFile = huge_ct.raw\n")
    cases["huge"] = (p, "too large")
    return cases


@pytest.mark.parametrize("case", ["missing", "corrupt", "empty", "2d", "nan", "thick", "huge"])
def test_bad_input_cli_one_line_and_api_typed_error(models, tmp_path, capsys, case):
    path, words = _bad_inputs(tmp_path)[case]
    rc, _, err = _run(["run", str(path), "--out", str(tmp_path / "out"), "--models", str(models)], capsys)
    assert rc == 2
    line = _one_error_line(err)
    assert line.startswith("spinert run: error:") and words in line, line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with Cascade(backend="onnxruntime", models_dir=str(models)) as c:
        with pytest.raises(InputError, match=words):
            c.run(path)


def test_no_spine_exits_zero_with_a_warning_and_empty_outputs(models, tmp_path, capsys):
    p = tmp_path / "nobone_ct.nii.gz"
    write_volume(ps.make_ct(n_vert=0), p)
    rc, _, err = _run(["run", str(p), "--out", str(tmp_path / "o"), "--models", str(models), "--quiet"], capsys)
    assert rc == 0
    assert "no spine found" in err
    assert json.loads((tmp_path / "o" / "nobone_ct_ctd.json").read_text()) == []
    assert not sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "o" / "nobone_ct_seg-vert_msk.nii.gz"))).any()


def test_several_inputs_continue_past_a_bad_one(models, ct_file, tmp_path, capsys):
    bad = tmp_path / "bad_ct.nii.gz"
    bad.write_bytes(b"garbage")
    rc, _, err = _run(["run", str(bad), str(ct_file), "--out", str(tmp_path / "o"), "--models", str(models),
                       "--quiet"], capsys)
    assert rc == 2
    assert "bad_ct" in err and "1 of 2 inputs failed" in err
    assert (tmp_path / "o" / "case7_ct_ctd.json").is_file()


def test_bad_options_and_models(models, ct_file, tmp_path, capsys):
    rc, _, err = _run(["run", str(ct_file), "--out", str(tmp_path), "--models", str(models), "--stride", "0"], capsys)
    assert rc == 2 and "--stride" in _one_error_line(err)
    rc, _, err = _run(["run", str(ct_file), "--out", str(tmp_path), "--models", str(tmp_path / "none")], capsys)
    assert rc == 2 and "manifest" in _one_error_line(err)
    rc, _, err = _run(["run", str(ct_file), "--out", str(tmp_path), "--models", str(models), "--backend", "nope"],
                      capsys)
    assert rc == 2 and "unknown backend" in _one_error_line(err)


def test_subprocess_error_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "spinert", "run", str(tmp_path / "missing.nii.gz"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert _one_error_line(r.stderr).startswith("spinert run: error:") and "no such file" in r.stderr


def test_demo_on_a_sample_with_ground_truth(models, tmp_path, capsys, monkeypatch):
    import engine.cli as ecli

    d = tmp_path / "data"
    d.mkdir()
    write_volume(ps.make_ct(n_vert=3), d / "sample_ct.nii.gz")
    with Cascade(backend="onnxruntime", models_dir=str(models)) as c:
        res = c.run(d / "sample_ct.nii.gz")
    (d / "sample_ctd.json").write_text(json.dumps([v.to_json() for v in res.vertebrae]))
    monkeypatch.setattr(ecli, "sample_paths", lambda: {"ct": d / "sample_ct.nii.gz",
                                                       "mask": d / "sample_seg-vert_msk.nii.gz",
                                                       "ctd": d / "sample_ctd.json"})
    rc, out, err = _run(["demo", "--models", str(models), "--out", str(tmp_path / "demo")], capsys)
    assert rc == 0, err
    assert "localisation error" in out and "0.00 mm over 3 vertebrae" in out
    assert "centres: mask centroids (no centre offset)" in out  # the synthetic segmenter has none
    assert (tmp_path / "demo" / "sample_ctd.json").is_file()


def test_demo_without_sample_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import engine.cli as ecli

    monkeypatch.setattr(ecli, "sample_paths", lambda: {"ct": tmp_path / "sample_ct.nii.gz",
                                                       "mask": tmp_path / "m", "ctd": tmp_path / "c"})
    rc, _, err = _run(["demo"], capsys)
    assert rc == 2 and "sample CT is missing" in _one_error_line(err)

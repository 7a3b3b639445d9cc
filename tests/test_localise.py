"""Centre offsets (engine.localise) and their fit (calibration.centres): crafted chains and residuals,
then `spinert calibrate-centres` on the bundled sample CT with the shipped models."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine import labels as L
from engine.errors import ModelError
from engine.localise import CentreOffset, apply_offset, fit_offsets, posterior_axes, replace_card_section
from engine.models import default_models_dir, load_manifest
from engine.pipeline import Cascade
from calibration.centres import match_case
from spinert.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "spinert" / "data"


def _chain(n: int, step=(0.0, 0.0, -25.0), start=(0.0, 0.0, 0.0)) -> np.ndarray:
    return np.asarray(start) + np.arange(n)[:, None] * np.asarray(step)


def test_posterior_axis_of_a_straight_vertical_chain_is_lps_y():
    np.testing.assert_allclose(posterior_axes(_chain(5)), np.tile([0.0, 1.0, 0.0], (5, 1)), atol=1e-12)
    np.testing.assert_allclose(posterior_axes(_chain(1)), [[0.0, 1.0, 0.0]], atol=1e-12)
    assert posterior_axes(np.zeros((0, 3))).shape == (0, 3)


def test_posterior_axis_is_square_to_a_tilted_chain_and_follows_the_input_order():
    ang = np.deg2rad(30.0)  # a lordotic segment: the chain leans 30 degrees towards the back
    c = _chain(4, step=(0.0, 25.0 * np.sin(ang), -25.0 * np.cos(ang)))
    shuffled = c[[2, 0, 3, 1]]
    ax = posterior_axes(shuffled)
    t = c[0] - c[1]
    t /= np.linalg.norm(t)
    np.testing.assert_allclose(ax @ t, 0.0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(ax, axis=1), 1.0)
    np.testing.assert_allclose(ax, np.tile([0.0, np.cos(ang), np.sin(ang)], (4, 1)), atol=1e-12)


def test_apply_moves_each_centre_by_its_regions_offset_and_none_is_identity():
    c = _chain(4)
    labs = np.array([7, 8, 24, 26])  # C7, T1, L5, S
    off = CentreOffset(mm={"cervical": 1.0, "thoracic": 2.0, "lumbar": -0.5})  # no sacral offset
    moved = apply_offset(c, labs, off)
    np.testing.assert_allclose(moved - c, [[0, 1.0, 0], [0, 2.0, 0], [0, -0.5, 0], [0, 0, 0]], atol=1e-12)
    np.testing.assert_array_equal(apply_offset(c, labs, None), c)
    assert apply_offset(c, labs, None) is not c
    np.testing.assert_allclose(apply_offset(c, np.array([28, 28, 28, 28]), off) - c, np.tile([0, 2.0, 0], (4, 1)))


def test_fit_recovers_per_region_offsets_and_pools_a_rare_region():
    rng = np.random.default_rng(0)
    true = {"cervical": 1.2, "thoracic": 1.6, "lumbar": 2.1}
    labs = np.array([3] * 40 + [12] * 60 + [21] * 50 + [26] * 3)
    axes = posterior_axes(_chain(len(labs), step=(0.0, 0.0, -2.0)))
    along = np.array([true.get(L.region(int(x)), 9.0) for x in labs]) + rng.normal(0, 0.3, len(labs))
    lateral = rng.normal(0, 1.0, (len(labs), 3)) * [1.0, 0.0, 1.0]
    mm, counts = fit_offsets(along[:, None] * axes + lateral, axes, labs, min_count=8)
    for reg, v in true.items():
        assert abs(mm[reg] - v) < 0.15, (reg, mm[reg])
    assert counts == {"cervical": 40, "thoracic": 60, "lumbar": 50, "sacral": 3}
    # three sacra (one of them 9 mm off) are too few: the sacrum takes the pooled median
    assert mm["sacral"] == pytest.approx(float(np.median(along)), abs=1e-9)
    with pytest.raises(ValueError):
        fit_offsets(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0))


def test_match_keeps_same_label_predictions_within_20_mm_only():
    pred = np.array([[0, 0, 0], [0, 0, -25.0], [0, 0, -50.0]])
    truth = {10: np.array([0, 1.5, 0.0]), 11: np.array([0, 0, -4.0]), 12: np.array([0, 25.0, -50.0])}
    r, ax, labs = match_case(pred, np.array([10, 11, 12]), truth)
    np.testing.assert_array_equal(labs, [10])  # 11 is 21 mm away, 12 is 25 mm away
    np.testing.assert_allclose(r, [[0, 1.5, 0]])
    np.testing.assert_allclose(ax, [[0, 1.0, 0]])


def test_manifest_offset_is_read_and_a_malformed_one_is_a_model_error():
    off = CentreOffset.from_manifest({"centre_offset": {"axis": "posterior", "mm": {"lumbar": 1.5},
                                                        "segmenter_sha256": "ab"}})
    assert off.mm == {"lumbar": 1.5} and off.segmenter_sha256 == "ab"
    assert CentreOffset.from_manifest({}) is None
    assert CentreOffset.from_manifest({"centre_offset": off.to_manifest()}) == off
    for bad in ({"mm": {"neck": 1.0}}, {"mm": {"lumbar": float("nan")}}, {"mm": 3}, {"axis": "left", "mm": {}}, {}):
        with pytest.raises(ModelError):
            CentreOffset.from_manifest({"centre_offset": bad})


def test_card_section_is_replaced_not_repeated():
    off = CentreOffset(mm={"lumbar": 2.0}, fitted={"counts": {"lumbar": 30}})
    card = "# Segmenter\n\n## Cost\n\n- params\n"
    once = replace_card_section(card, off.card_markdown(), off.CARD_HEADING)
    twice = replace_card_section(once + "\n## Later\n\nkept\n", off.card_markdown(), off.CARD_HEADING)
    assert once.startswith(card.rstrip()) and once.count(off.CARD_HEADING) == 1 and "| lumbar | +2.00 | 30 |" in once
    assert twice.count(off.CARD_HEADING) == 1 and "## Later\n\nkept" in twice and twice.endswith(off.card_markdown())


def _models_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "models"
    shutil.copytree(default_models_dir(), dst, ignore=shutil.ignore_patterns("*_int8*", "centre_offset"))
    m = json.loads((dst / "manifest.json").read_text())
    for e in m["models"].values():  # int8 files were left out of the copy
        e["files"].pop("int8", None)
        e.get("sha256", {}).pop("int8", None)
    m["models"]["segmenter"].pop("centre_offset", None)  # each test fits its own
    (dst / "manifest.json").write_text(json.dumps(m, indent=2))
    return dst


def _sample_folder(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    shutil.copy(SAMPLE / "sample_ct.nii.gz", d / "sample_ct.nii.gz")
    shutil.copy(SAMPLE / "sample_ctd.json", d / "sample_ctd.json")
    return d


@pytest.mark.slow
def test_calibrate_centres_writes_the_offset_that_run_then_applies(tmp_path, capsys):
    models, data = _models_copy(tmp_path), _sample_folder(tmp_path)
    rep = tmp_path / "rep"
    assert main(["calibrate-centres", "--data", str(data), "--models", str(models), "--report", str(rep),
                 "--threads", "1", "--min-count", "1"]) == 0
    body = json.loads((rep / "centre_offset.json").read_text())
    assert (rep / "centre_offset.png").stat().st_size > 0
    entry = json.loads((models / "manifest.json").read_text())["models"]["segmenter"]
    assert entry["centre_offset"]["mm"] == body["centre_offset"]["mm"]
    assert entry["centre_offset"]["segmenter_sha256"] == entry["sha256"]["fp32"]
    off = CentreOffset.from_manifest(entry)
    assert (models / "segmenter.md").read_text().count(off.CARD_HEADING) == 1
    # in-sample, the fitted offset can only bring the centres' posterior residuals nearer zero
    before, after = body["in_sample"]["overall"]["before"], body["in_sample"]["overall"]["after"]
    assert after["n"] == before["n"] > 0 and after["mle_mm"] <= before["mle_mm"] + 1e-6

    with Cascade(models_dir=str(models), threads=1, centre_offset=False) as raw_c, \
            Cascade(models_dir=str(models), threads=1) as cal_c:
        assert raw_c.centre_offset is None and cal_c.centre_offset == off
        raw, cal = raw_c.run(data / "sample_ct.nii.gz"), cal_c.run(data / "sample_ct.nii.gz")
    assert [v.label for v in raw.vertebrae] == [v.label for v in cal.vertebrae]
    assert raw.info["centre_offset_mm"] is None and cal.info["centre_offset_mm"] == dict(off.mm)
    c_raw = np.array([v.center_lps for v in raw.vertebrae])
    shift = np.array([v.center_lps for v in cal.vertebrae]) - c_raw
    want = off.along_axis(np.array([v.label for v in raw.vertebrae]))[:, None] * posterior_axes(c_raw)
    np.testing.assert_allclose(shift, want, atol=1e-6)
    assert np.abs(want).max() > 0.05  # the fit moved something: the comparison is not trivially equal

    # refitting needs --overwrite (before any work); a dry run leaves the manifest alone
    capsys.readouterr()
    assert main(["calibrate-centres", "--data", str(data), "--models", str(models), "--report", str(tmp_path / "r2")]) == 2
    assert "already has a centre offset" in capsys.readouterr().err
    before_text = (models / "manifest.json").read_text()
    assert main(["calibrate-centres", "--data", str(data), "--models", str(models), "--report", str(rep),
                 "--dry-run", "--threads", "1"]) == 2  # the report exists
    assert main(["calibrate-centres", "--data", str(data), "--models", str(models), "--report", str(tmp_path / "r3"),
                 "--dry-run", "--threads", "1", "--min-count", "1", "--max-cases", "5"]) == 0
    assert (models / "manifest.json").read_text() == before_text


def test_an_offset_fitted_for_another_segmenter_file_is_not_applied(tmp_path):
    models = _models_copy(tmp_path)
    m = json.loads((models / "manifest.json").read_text())
    m["models"]["segmenter"]["centre_offset"] = {"axis": "posterior", "mm": {"thoracic": 5.0},
                                                 "segmenter_sha256": "0" * 64}
    (models / "manifest.json").write_text(json.dumps(m))
    with Cascade(models_dir=str(models), threads=1) as c:
        assert c.centre_offset is None and "another segmenter file" in c.offset_note


def test_calibrate_centres_bad_inputs_are_one_line_errors(tmp_path, capsys):
    models = _models_copy(tmp_path)
    assert main(["calibrate-centres", "--data", str(tmp_path / "missing"), "--models", str(models)]) == 2
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["calibrate-centres", "--data", str(tmp_path / "empty"), "--models", str(models)]) == 2
    assert "no VerSe-style cases" in capsys.readouterr().err
    assert main(["calibrate-centres", "--data", str(tmp_path / "empty"), "--models", str(models),
                 "--max-cases", "0"]) == 2
    err = capsys.readouterr().err
    assert "--max-cases" in err and len(err.strip().splitlines()) == 1

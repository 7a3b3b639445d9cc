"""Metrics move exactly as expected under known perturbations; evaluate(gt, gt) is perfect."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DatasetError, OutputExistsError
from engine.io import write_volume
from engine.types import Volume
from engine.verse import Centroid, list_cases, read_case, read_ctd, write_ctd
from evaluation.metrics import evaluate_case
from evaluation.report import evaluate_folders, write_report
from spinert.cli import main
from spinert.paths import real_data_dir

REAL = real_data_dir()
SPACING = (0.8, 0.9, 2.0)  # (i, j, k) mm: anisotropic on purpose
LABELS = (20, 21, 22, 23)   # L1-L4, stacked along k with gaps


def _spine(shift_label: int | None = None, shift_k: int = 0) -> Volume:
    a = np.zeros((60, 30, 30), np.uint8)  # [k, j, i]
    for n, lab in enumerate(LABELS):
        k0 = 3 + n * 14 + (shift_k if lab == shift_label else 0)
        a[k0:k0 + 10, 8:22, 6:24] = lab
    return Volume(a, SPACING, (5.0, -3.0, 10.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), "syn")


def _centroids(vol: Volume) -> list[Centroid]:
    out = []
    for lab in np.unique(vol.array)[1:]:
        kji = np.argwhere(vol.array == lab).mean(axis=0)
        out.append(Centroid(int(lab), tuple(vol.index_to_lps(kji[::-1]).tolist())))
    return out


def _by_label(score):
    return {v.label: v for v in score.vertebrae}


def test_identity_is_perfect_synthetic():
    gt = _spine()
    s = evaluate_case("c", gt, _centroids(gt), gt, _centroids(gt))
    for v in s.vertebrae:
        assert v.dice == 1 and v.iou == 1 and v.hd_mm == 0 and v.loc_error_mm == 0 and v.identified
    assert s.sequence_correct and s.extra == []


def test_two_voxel_shift_moves_only_that_vertebra():
    gt, pred = _spine(), _spine(shift_label=22, shift_k=2)
    s = _by_label(evaluate_case("c", gt, _centroids(gt), pred, _centroids(pred)))
    sk = SPACING[2]
    assert s[22].loc_error_mm == pytest.approx(2 * sk)
    assert s[22].hd_mm == pytest.approx(2 * sk)
    assert s[22].dice == pytest.approx(8 / 10)  # 10 slices thick, 8 still overlap
    assert s[22].identified  # 4 mm is well inside 20 mm
    for lab in (20, 21, 23):
        assert s[lab].dice == 1 and s[lab].loc_error_mm == 0 and s[lab].hd_mm == 0


def test_label_swap_costs_exactly_two_vertebrae():
    gt = _spine()
    pred_arr = gt.array.copy()
    pred_arr[gt.array == 21], pred_arr[gt.array == 22] = 22, 21
    pred = Volume(pred_arr, gt.spacing, gt.origin, gt.direction)
    from tempfile import TemporaryDirectory
    with TemporaryDirectory() as d:
        _write_case(Path(d) / "gt", "a", gt)
        _write_case(Path(d) / "gt", "b", gt)
        _write_pred(Path(d) / "pred", "a", pred)
        _write_pred(Path(d) / "pred", "b", gt)
        rep = evaluate_folders(Path(d) / "gt", Path(d) / "pred", progress=False)
    s = rep.summary()
    assert s["labelling_accuracy"] == pytest.approx(6 / 8)
    assert s["identification_rate"] == pytest.approx(6 / 8)
    assert s["sequence_accuracy"] == pytest.approx(0.5)
    assert s["missed"] == 0 and s["extra"] == 0


def test_missing_and_extra_vertebra():
    gt = _spine()
    arr = gt.array.copy()
    arr[arr == 23] = 0
    pred = Volume(arr, gt.spacing, gt.origin, gt.direction)
    ctd = _centroids(pred) + [Centroid(24, (500.0, 500.0, 500.0))]  # far from everything
    s = evaluate_case("c", gt, _centroids(gt), pred, ctd)
    by = _by_label(s)
    assert not by[23].detected and by[23].dice == 0 and by[23].hd_mm is None
    assert sum(not v.detected for v in s.vertebrae) == 1
    assert s.extra == [24] and not s.sequence_correct


def _write_case(folder: Path, cid: str, vol: Volume) -> None:
    write_volume(Volume(np.zeros(vol.array.shape, np.int16), vol.spacing, vol.origin, vol.direction),
                 folder / f"{cid}_ct.nii.gz")
    write_volume(vol, folder / f"{cid}_seg-vert_msk.nii.gz")
    write_ctd(folder / f"{cid}_ctd.json", _centroids(vol))


def _write_pred(folder: Path, cid: str, vol: Volume) -> None:
    write_volume(vol, folder / f"{cid}_ct_seg-vert_msk.nii.gz")  # named as `spinert run` names them
    write_ctd(folder / f"{cid}_ct_ctd.json", _centroids(vol))


@pytest.mark.skipif(not REAL.is_dir(), reason="../shared/data/real is not present")
def test_real_cases_against_themselves_are_perfect(tmp_path):
    rep = evaluate_folders(REAL, REAL, progress=False)
    s = rep.summary()
    assert s["vertebrae"] == 15 and s["identification_rate"] == 1 and s["mle_mm"]["mean"] == 0
    assert s["dice"]["mean"] == 1 and s["hd95_mm"]["mean"] == 0 and s["sequence_accuracy"] == 1
    paths = write_report(rep, tmp_path / "r")
    assert json.loads(paths["json"].read_text())["summary"]["vertebrae"] == 15
    assert paths["png"].stat().st_size > 10_000 and "identification rate" in paths["md"].read_text()
    with pytest.raises(OutputExistsError):
        write_report(rep, tmp_path / "r")


def test_dataset_errors(tmp_path):
    gt = _spine()
    with pytest.raises(DatasetError, match="no such folder"):
        list_cases(tmp_path / "nope")
    with pytest.raises(DatasetError, match="no VerSe-style cases"):
        list_cases(tmp_path)
    _write_case(tmp_path, "a", gt)
    (tmp_path / "a_ctd.json").unlink()
    with pytest.raises(DatasetError, match="lacks a_ctd.json"):
        list_cases(tmp_path)
    (tmp_path / "a_ctd.json").write_text('{"label": 1}')
    with pytest.raises(DatasetError, match="JSON list"):
        read_ctd(tmp_path / "a_ctd.json")
    (tmp_path / "a_ctd.json").write_text('[{"label": 99, "X": 0, "Y": 0, "Z": 0}]')
    with pytest.raises(DatasetError, match="not a VerSe"):
        read_ctd(tmp_path / "a_ctd.json")
    shifted = Volume(gt.array, gt.spacing, (0.0, 0.0, 0.0), gt.direction)
    write_volume(shifted, tmp_path / "a_seg-vert_msk.nii.gz", overwrite=True)
    with pytest.raises(DatasetError, match="differ in origin"):
        read_case(tmp_path, "a")
    bad = Volume(np.full(gt.array.shape, 77, np.uint8), gt.spacing, gt.origin, gt.direction)
    write_volume(bad, tmp_path / "a_seg-vert_msk.nii.gz", overwrite=True)
    with pytest.raises(DatasetError, match="not VerSe IDs"):
        read_case(tmp_path, "a").labels


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--gt", str(tmp_path / "missing"), "--pred", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0]

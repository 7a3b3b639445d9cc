"""`spinert evaluate` and evaluate_folders on real files: the real cases against themselves and perturbed."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DatasetError, OutputExistsError
from engine.io import write_volume
from engine.types import Volume
from engine.verse import centroids_from_labels, list_cases, read_case, write_ctd
from evaluation.report import evaluate_folders, write_report
from spinert.cli import main
from spinert.paths import real_data_dir

REAL = real_data_dir()
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} is not present (workplace data only)")
BIG = "tssample-example-ct"  # T11-L5 + sacrum at 3 mm


def write_prediction(folder: Path, cid: str, vol: Volume, extra_ctd=()) -> None:
    """Files named as `spinert run` names them for the CT <cid>_ct.nii.gz."""
    write_volume(vol, folder / f"{cid}_ct_seg-vert_msk.nii.gz")
    write_ctd(folder / f"{cid}_ct_ctd.json", centroids_from_labels(vol) + list(extra_ctd))


@needs_real
def test_real_cases_against_themselves_are_perfect(tmp_path):
    rep = evaluate_folders(REAL, REAL, progress=False)
    s = rep.summary()
    assert s["cases"] == 3 and s["vertebrae"] == 15 and s["identification_rate"] == 1
    assert s["mle_mm"]["mean"] == 0 and s["labelling_accuracy"] == 1 and s["sequence_accuracy"] == 1
    assert s["dice"]["mean"] == 1 and s["hd_mm"]["max"] == 0 and s["hd95_mm"]["mean"] == 0
    assert s["missed"] == 0 and s["extra"] == 0 and rep.notes == []
    paths = write_report(rep, tmp_path / "r")
    doc = json.loads(paths["json"].read_text())
    assert doc["summary"]["vertebrae"] == 15 and set(doc["regions"]) == {"thoracic", "lumbar", "sacral"}
    assert paths["png"].stat().st_size > 10_000 and "identification rate" in paths["md"].read_text()
    with pytest.raises(OutputExistsError):
        write_report(rep, tmp_path / "r")


@needs_real
def test_cli_on_perturbed_real_predictions(tmp_path, capsys):
    """L1 shifted 2 slices, L3<->L4 swapped in one case; L3 deleted in another; the third not predicted."""
    pred = tmp_path / "pred"
    big = read_case(REAL, BIG).labels
    a = big.array.copy()
    l1 = a == 20
    a[l1] = 0
    a[np.roll(l1, 2, axis=0)] = 20  # k: 2 slices x 3 mm (cuts into T12's voxels; T12 is not asserted)
    l3, l4 = a == 22, a == 23
    a[l3], a[l4] = 23, 22
    write_prediction(pred, BIG, Volume(a, big.spacing, big.origin, big.direction))
    small = read_case(REAL, "tptbox-sample-ct-L3").labels
    b = small.array.copy()
    b[b == 22] = 0
    write_prediction(pred, "tptbox-sample-ct-L3", Volume(b, small.spacing, small.origin, small.direction))

    assert main(["evaluate", "--gt", str(REAL), "--pred", str(pred)]) == 0
    out, err = capsys.readouterr()
    assert "| identification rate" in out and "| region |" in out
    assert "no prediction for 1 of 3 case(s): tssample-example-ct-sm" in err
    doc = json.loads((pred / "evaluation" / "evaluation.json").read_text())
    cases = {c["case"]: c for c in doc["cases"]}
    v = {x["label"]: x for x in cases[BIG]["vertebrae"]}
    assert v[20]["loc_error_mm"] == pytest.approx(6.0, abs=0.02)  # GT ctd: 2 decimals and v[20]["identified"]
    assert v[20]["hd_mm"] == pytest.approx(6.0)
    assert not v[22]["identified"] and not v[23]["identified"] and v[22]["dice"] == 0
    assert all(v[lab]["identified"] and v[lab]["dice"] == 1 for lab in (21, 24, 26))
    assert cases[BIG]["missed"] == [] and not cases[BIG]["sequence_correct"]
    assert cases["tptbox-sample-ct-L3"]["missed"] == [22]
    assert cases["tssample-example-ct-sm"]["missing_prediction"]
    assert cases["tssample-example-ct-sm"]["missed"] == [18, 19, 20, 21]
    s = doc["summary"]
    assert s["missed"] == 1 + 4 and s["extra"] == 0 and s["identification_rate"] == pytest.approx(8 / 15)
    assert s["labelling_accuracy"] == pytest.approx(8 / 10) and s["sequence_accuracy"] == 0
    assert s["hd_mm"]["undefined"] == 5  # L3 and the 4 vertebrae of the unpredicted case: null, not a number
    # a second run refuses to overwrite the report, with one line
    assert main(["evaluate", "--gt", str(REAL), "--pred", str(pred)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists" in err[0] and "--overwrite" in err[0]
    assert main(["evaluate", "--gt", str(REAL), "--pred", str(pred), "--overwrite",
                 "--case", BIG, "--out", str(tmp_path / "one")]) == 0
    assert json.loads((tmp_path / "one" / "evaluation.json").read_text())["summary"]["cases"] == 1


def test_synthetic_folders_swap_and_missing_case(tmp_path):
    a = np.zeros((50, 20, 20), np.uint8)
    for n, lab in enumerate((8, 9, 10)):
        a[3 + 15 * n:13 + 15 * n, 5:15, 5:15] = lab
    gt = Volume(a, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for cid in ("a", "b", "c"):
        write_volume(gt, tmp_path / "gt" / f"{cid}_seg-vert_msk.nii.gz")
        write_ctd(tmp_path / "gt" / f"{cid}_ctd.json", centroids_from_labels(gt))
    sw = a.copy()
    sw[a == 8], sw[a == 9] = 9, 8
    write_prediction(tmp_path / "pred", "a", Volume(sw, gt.spacing, gt.origin, gt.direction))
    write_prediction(tmp_path / "pred", "b", gt)
    write_prediction(tmp_path / "pred", "zz", gt)  # no such GT case: reported, not scored
    rep = evaluate_folders(tmp_path / "gt", tmp_path / "pred", progress=False)
    s = rep.summary()
    assert s["labelling_accuracy"] == pytest.approx(4 / 6)  # detected: a and b; c has no prediction
    assert s["identification_rate"] == pytest.approx(4 / 9) and s["missed"] == 3
    assert s["sequence_accuracy"] == pytest.approx(1 / 3)
    assert rep.by_region()["thoracic"]["labelling_accuracy"] == pytest.approx(4 / 6)
    assert any("no prediction for 1 of 3 case(s): c" in n for n in rep.notes)
    assert any("no GT case, not scored: zz_ct" in n for n in rep.notes)


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert main(["evaluate", "--gt", str(tmp_path / "missing"), "--pred", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such folder" in err[0] and "missing" in err[0]
    (tmp_path / "gt").mkdir()
    write_ctd(tmp_path / "gt" / "a_ctd.json", [])
    write_volume(Volume(np.zeros((4, 4, 4), np.uint8), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
                 tmp_path / "gt" / "a_seg-vert_msk.nii.gz")
    assert main(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "nopred")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such prediction folder" in err[0]
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a_ct_seg-vert_msk.nii.gz").write_bytes(b"garbage")
    assert main(["evaluate", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a_ct_seg-vert_msk.nii.gz" in err[0]
    with pytest.raises(DatasetError, match="no GT case"):
        evaluate_folders(tmp_path / "gt", tmp_path / "pred", ids=["nope"], progress=False)
    assert list_cases(tmp_path / "gt", require=("msk", "ctd")) == ["a"]


@needs_real
def test_baseline_comparison_names_the_vertebrae_each_case_lost_or_gained(tmp_path, capsys):
    pred = tmp_path / "pred"
    big = read_case(REAL, BIG).labels
    a = big.array.copy()
    a[a == 22] = 0  # L3 not found
    write_prediction(pred, BIG, Volume(a, big.spacing, big.origin, big.direction))
    r0, r1 = tmp_path / "r0", tmp_path / "r1"
    assert main(["evaluate", "--gt", str(REAL), "--pred", str(REAL), "--case", BIG, "--out", str(r0)]) == 0
    assert main(["evaluate", "--gt", str(REAL), "--pred", str(pred), "--case", BIG, "--out", str(r1),
                 "--baseline", str(r0)]) == 0
    assert "| identification rate | 100.0 % | 87.5 % | -12.5 pt (worse) |" in capsys.readouterr().out
    cmp = json.loads((r1 / "comparison.json").read_text())
    assert cmp["cases_changed"] == [{"case": BIG, "vertebrae": 8, "identified_baseline": 8, "identified_current": 7,
                                     "lost": ["L3"], "gained": []}]
    rows = {r["metric"]: r for r in cmp["summary"]}
    assert rows["missed"]["change"] == 1 and rows["missed"]["better"] is False
    assert rows["Dice"]["better"] is False and "L3" in (r1 / "comparison.md").read_text()
    # The other way round, the same vertebra is gained.
    assert main(["evaluate", "--gt", str(REAL), "--pred", str(REAL), "--case", BIG, "--out", str(tmp_path / "r2"),
                 "--baseline", str(r1 / "evaluation.json")]) == 0
    back = json.loads((tmp_path / "r2" / "comparison.json").read_text())
    assert back["cases_changed"][0]["gained"] == ["L3"] and back["cases_changed"][0]["lost"] == []
    # A file that is no evaluation report: one line, and nothing evaluated or written.
    capsys.readouterr()
    (tmp_path / "bad.json").write_text('{"cases": []}')
    for bad in (tmp_path / "bad.json", tmp_path / "none.json"):
        assert main(["evaluate", "--gt", str(REAL), "--pred", str(pred), "--out", str(tmp_path / "r3"),
                     "--baseline", str(bad)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "baseline report" in err[0]
    assert not (tmp_path / "r3").exists()

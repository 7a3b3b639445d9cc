"""Metrics move exactly as expected under known perturbations; evaluate(gt, gt) is perfect.

Synthetic label maps: box 'vertebrae' stacked along k on an anisotropic grid (0.8, 0.9, 2.0 mm) with a
non-trivial origin and direction, so every distance is checked in mm, not voxels."""
from __future__ import annotations

import numpy as np
import pytest

from engine.errors import DatasetError
from engine.types import Vertebra, SpineResult, Volume
from engine.verse import Centroid, centroids_from_labels
from evaluation.metrics import evaluate_case, evaluate_result, overlap, prediction_from_result
from evaluation.report import EvaluationReport

SPACING = (0.8, 0.9, 2.0)  # (i, j, k) mm: anisotropic on purpose
DIRECTION = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # RAS-like storage
LABELS = (20, 21, 22, 23)  # L1-L4, 10 slices (20 mm) thick, 4 slices (8 mm) apart


def spine(labels=LABELS, shift: dict | None = None, pitch: int = 14, thick: int = 10,
          spacing=SPACING) -> Volume:
    """Label map [k, j, i]; ``shift`` = {label: (dk, dj, di)} moves one vertebra's box by whole voxels."""
    a = np.zeros((3 + pitch * len(labels) + 4, 30, 30), np.uint8)
    for n, lab in enumerate(labels):
        dk, dj, di = (shift or {}).get(lab, (0, 0, 0))
        k0 = 3 + n * pitch + dk
        a[k0:k0 + thick, 8 + dj:22 + dj, 6 + di:24 + di] = lab
    return Volume(a, spacing, (5.0, -3.0, 10.0), DIRECTION, "syn")


def by_label(score):
    return {v.label: v for v in score.vertebrae}


def test_identity_is_perfect():
    gt = spine()
    s = evaluate_case("c", gt, centroids_from_labels(gt), gt, centroids_from_labels(gt))
    assert [v.label for v in s.vertebrae] == list(LABELS)
    for v in s.vertebrae:
        assert (v.dice, v.iou, v.pa, v.fpd, v.fnd) == (1, 1, 1, 0, 0)
        assert (v.hd_mm, v.hd95_mm, v.msd_mm, v.loc_error_mm) == (0, 0, 0, 0)
        assert v.identified and v.detected and not v.pred_empty
    assert s.sequence_correct and s.extra == [] and s.missed == []
    summ = EvaluationReport([s]).summary()
    assert summ["identification_rate"] == 1 and summ["labelling_accuracy"] == 1
    assert summ["acc_1.5mm"] == 1 and summ["mle_mm"]["mean"] == 0 and summ["sequence_accuracy"] == 1


@pytest.mark.parametrize("axis", [0, 2])  # k (2.0 mm) and i (0.8 mm): the distances must follow spacing
def test_two_voxel_shift_moves_only_that_vertebra(axis):
    move = [0, 0, 0]
    move[axis] = 2
    gt, pred = spine(), spine(shift={22: tuple(move)})
    s = by_label(evaluate_case("c", gt, centroids_from_labels(gt), pred, centroids_from_labels(pred)))
    step_mm = 2 * SPACING[::-1][axis]  # array axis 0 = k, 2 = i
    width = (10, 14, 18)[axis]
    assert s[22].loc_error_mm == pytest.approx(step_mm)
    assert s[22].hd_mm == pytest.approx(step_mm)
    assert s[22].hd95_mm == pytest.approx(step_mm)
    assert 0 < s[22].msd_mm < step_mm
    assert s[22].dice == pytest.approx((width - 2) / width)
    assert s[22].iou == pytest.approx((width - 2) / (width + 2))
    assert s[22].fnd == pytest.approx(2 / width)
    assert s[22].identified  # a few mm is well inside 20 mm
    for lab in (20, 21, 23):
        assert s[lab].dice == 1 and s[lab].loc_error_mm == 0 and s[lab].hd_mm == 0


def test_label_swap_costs_exactly_two_vertebrae():
    gt = spine()
    arr = gt.array.copy()
    arr[gt.array == 21], arr[gt.array == 22] = 22, 21
    pred = Volume(arr, gt.spacing, gt.origin, gt.direction)
    swapped = evaluate_case("a", gt, centroids_from_labels(gt), pred, centroids_from_labels(pred))
    perfect = evaluate_case("b", gt, centroids_from_labels(gt), gt, centroids_from_labels(gt))
    s = EvaluationReport([swapped, perfect]).summary()
    assert s["labelling_accuracy"] == pytest.approx(6 / 8)
    assert s["identification_rate"] == pytest.approx(6 / 8)
    assert s["sequence_accuracy"] == pytest.approx(0.5)
    assert s["missed"] == 0 and s["extra"] == 0 and s["detected"] == 8
    v = by_label(swapped)
    assert not v[21].identified and v[21].closest_label == 22 and v[21].dice == 0
    assert v[20].identified and v[23].identified and v[20].dice == 1
    assert v[21].match_mm == 0  # located perfectly, only labelled wrong
    assert v[21].loc_error_mm == pytest.approx(14 * SPACING[2])  # the same-label centroid is one level off


@pytest.mark.parametrize("pitch", [14, 7])  # 28 mm and 14 mm apart: the latter closer than 20 mm
def test_deleted_vertebra_is_exactly_one_missed(pitch):
    gt = spine(pitch=pitch, thick=5)
    arr = gt.array.copy()
    arr[arr == 22] = 0
    pred = Volume(arr, gt.spacing, gt.origin, gt.direction)
    s = evaluate_case("c", gt, centroids_from_labels(gt), pred, centroids_from_labels(pred))
    v = by_label(s)
    assert s.missed == [22] and s.extra == []
    assert v[22].dice == 0 and v[22].pred_empty and v[22].fnd == 1
    assert v[22].hd_mm is None and v[22].msd_mm is None and v[22].loc_error_mm is None
    assert not v[22].identified and not s.sequence_correct
    assert all(v[lab].dice == 1 and v[lab].detected for lab in (20, 21, 23))
    summ = EvaluationReport([s]).summary()
    assert summ["hd_mm"]["undefined"] == 1 and summ["hd_mm"]["n"] == 3 and summ["empty_predicted_masks"] == 1
    assert summ["acc_2.0mm"] == pytest.approx(3 / 4) and summ["mle_mm"]["n"] == 3


def test_extra_predicted_vertebra_counts_once():
    gt = spine()
    ctd = centroids_from_labels(gt)
    far = ctd + [Centroid(24, (500.0, 500.0, 500.0))]
    s = evaluate_case("c", gt, ctd, gt, far)
    assert s.extra == [24] and s.missed == [] and not s.sequence_correct
    assert all(v.identified for v in s.vertebrae)  # the extra one harms no GT vertebra
    # A duplicate right next to L2: still one extra (one-to-one matching), L2 keeps its match.
    near = list(ctd) + [Centroid(21, tuple(np.add(ctd[1].xyz, (0.0, 0.0, 3.0))))]
    s = evaluate_case("c", gt, ctd, gt, near)
    assert s.extra == [21] and s.missed == [] and by_label(s)[21].match_mm == 0
    assert EvaluationReport([s]).summary()["labelling_precision"] == pytest.approx(4 / 5)


def test_predictions_say_whether_the_chain_logic_found_them():
    # `spinert run` writes "recovered" in the ctd (engine.types.Vertebra); the report counts them, and
    # the extras among them. A ctd without the key (another tool's) says nothing: None, counted as 0.
    gt = spine()
    ctd = centroids_from_labels(gt)
    said = [Centroid(c.label, c.xyz, {"recovered": c.label == 20}) for c in ctd]
    said.append(Centroid(24, (500.0, 500.0, 500.0), {"recovered": True}))
    s = evaluate_case("c", gt, ctd, gt, said)
    assert [p.recovered for p in s.predictions] == [True, False, False, False, True]
    summary = EvaluationReport([s]).summary()
    assert summary["recovered"] == 2 and summary["extra_recovered"] == 1 and summary["extra"] == 1
    assert s.to_json()["predictions"][0]["recovered"] is True
    silent = evaluate_case("c", gt, ctd, gt, ctd)
    assert {p.recovered for p in silent.predictions} == {None}
    assert EvaluationReport([silent]).summary()["recovered"] == 0


def test_anisotropic_spacing_in_mm():
    iso = spine(spacing=(1.0, 1.0, 1.0))
    ani = spine(spacing=(0.5, 1.0, 3.0))
    for vol, mm in ((iso, 2.0), (ani, 6.0)):  # a 2-slice shift along k
        pred = spine(shift={21: (2, 0, 0)}, spacing=vol.spacing)
        s = by_label(evaluate_case("c", vol, centroids_from_labels(vol), pred, centroids_from_labels(pred)))
        assert s[21].hd_mm == pytest.approx(mm) and s[21].loc_error_mm == pytest.approx(mm)
    # Hausdorff of a one-voxel bump on a face: spacing of the bump's axis (i = 0.5 mm) only.
    g = np.zeros((12, 12, 12), np.uint8)
    g[3:9, 3:9, 3:9] = 20
    p = g.copy()
    p[5, 5, 9] = 20
    o = overlap(g, p, 20, sampling=(3.0, 1.0, 0.5))
    assert o["hd_mm"] == pytest.approx(0.5)


def test_prediction_on_another_grid_is_rejected():
    gt = spine()
    pred = Volume(gt.array, (1.0, 1.0, 1.0), gt.origin, gt.direction)
    with pytest.raises(DatasetError, match="not on the GT image grid.*spacing"):
        evaluate_case("c", gt, [], pred, [])


def test_in_memory_engine_result_scores_like_files(tmp_path):
    """evaluate_result: what issues 5/6 call on held-out cases without writing files."""
    from engine.io import write_volume
    from engine.verse import read_case, write_ctd
    gt = spine()
    write_volume(gt, tmp_path / "x_seg-vert_msk.nii.gz")
    write_ctd(tmp_path / "x_ctd.json", centroids_from_labels(gt))
    verts = []
    for c in centroids_from_labels(gt):
        m = gt.array == c.label
        box = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in np.nonzero(m))
        verts.append(Vertebra(c.label, c.name, c.xyz, 0.9, m[box], tuple(s.start for s in box[::-1])))
    result = SpineResult("x", gt.geometry(), verts)
    vol, ctd = prediction_from_result(result)
    assert np.array_equal(vol.array, gt.array)
    s = evaluate_result(read_case(tmp_path, "x"), result)
    assert s.sequence_correct and all(v.dice == 1 and v.loc_error_mm == pytest.approx(0, abs=1e-9)
                                      for v in s.vertebrae)


def test_vertebrae_cut_by_the_field_of_view_are_reported_apart():
    """at_face flags a GT mask that reaches the image's face; the report splits whole from cut."""
    gt = spine()
    a = gt.array[6:].copy()  # the first 6 slices go: L1 (slices 3-12) keeps 7 and starts at the face
    cut = Volume(a, gt.spacing, gt.origin, gt.direction, "cut")
    pred = a.copy()
    pred[pred == 20] = 0  # the engine misses the sliver; every whole vertebra is perfect
    pv = Volume(pred, gt.spacing, gt.origin, gt.direction, "p")
    s = evaluate_case("c", cut, centroids_from_labels(cut), pv, centroids_from_labels(pv))
    flags = {v.label: v.at_face for v in s.vertebrae}
    assert flags == {20: True, 21: False, 22: False, 23: False}
    ext = EvaluationReport([s]).by_extent()
    assert ext["whole"]["vertebrae_with_mask"] == 3 and ext["whole"]["dice"]["mean"] == 1
    assert ext["cut by the FOV"]["vertebrae_with_mask"] == 1 and ext["cut by the FOV"]["dice"]["mean"] == 0
    assert ext["cut by the FOV"]["missed"] == 1 and ext["whole"]["missed"] == 0
    assert "| cut by the FOV | 1 |" in EvaluationReport([s]).markdown()

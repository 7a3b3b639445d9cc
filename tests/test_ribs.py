"""The rib cue (engine.ribs) on built volumes, in the decoder, and on the real abdomen CT."""
from __future__ import annotations

import numpy as np
import pytest

from engine.label import decode_labels, level_warnings
from engine.labels import IDS, NAMES
from engine.ribs import ILIUM, NO_RIBS, RIBS, UNKNOWN, RibParams, ilium_share, rib_evidence, rib_reach
from spinert.paths import real_data_dir

REAL = real_data_dir()
BONE, RIB = 500.0, 400.0
WHOLE = np.zeros(4, dtype=bool)  # no block cut by the field of view


def _spine(k_len=200, width=200, rib_hu=RIB, ribs=(0, 1), process=(2,), small=()):
    """Four 30 mm blocks down a 1 mm canonical volume [k, j, i], centred on i = width / 2. Blocks in
    ``ribs`` get a 6 mm bar from their side out to 75 mm from the centre (a rib, held by no mask); those
    in ``process`` a 20 mm stub (a transverse-process tip the mask missed, 40 mm from the centre)."""
    iso = np.zeros((k_len, 120, width), dtype=np.float32)
    owner = np.zeros(iso.shape, dtype=np.uint8)
    ci = width // 2
    centers, boxes = [], []
    for n, k0 in enumerate((20, 60, 100, 140)):
        half = 4 if n in small else 20
        box = (slice(k0, k0 + 30), slice(35, 65), slice(ci - half, ci + half))
        iso[box], owner[box] = BONE, n + 1
        boxes.append(box)
        centers.append([k0 + 14.5, 49.5, ci - 0.5])
        side = slice(ci + half, min(ci + 75, width)) if n in ribs else (
            slice(ci + half, ci + 40) if n in process else None)
        if side is not None:
            iso[k0 + 12:k0 + 18, 50:56, side] = rib_hu if n in ribs else BONE
    voxels = np.array([np.count_nonzero(owner == n + 1) for n in range(4)])
    return iso, owner, np.asarray(centers), boxes, voxels


def test_a_rib_touching_a_vertebra_is_seen_and_a_missed_process_is_not():
    iso, owner, centers, boxes, voxels = _spine()
    reach = rib_reach(iso, owner, centers, boxes, 1.0)
    assert reach[0] >= 62 and reach[1] >= 62
    assert 35 <= reach[2] < 50 and reach[3] == 0
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0).tolist() == [RIBS, RIBS, NO_RIBS, NO_RIBS]


def test_no_rib_counts_only_where_one_would_show():
    # The last block cut by the scan's last slice: its rib may be out of view.
    iso, owner, centers, boxes, voxels = _spine(k_len=165)
    boxes[3] = (slice(140, 165),) + boxes[3][1:]
    cut = np.array([False, False, False, True])
    assert rib_evidence(iso, owner, centers, boxes, voxels, cut, 1.0).tolist() == [RIBS, RIBS, NO_RIBS, UNKNOWN]
    # A small mask (a slab at the face, a piece) says nothing either way, a rib beside it included: it may
    # be the neighbour's rib.
    iso, owner, centers, boxes, voxels = _spine(small=(0, 3))
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0).tolist() == [UNKNOWN, RIBS, NO_RIBS, UNKNOWN]
    # 60 mm of field of view beside the spine: the ribs leave it before they count, so none is seen and
    # no absence is trusted.
    iso, owner, centers, boxes, voxels = _spine(width=120)
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0).tolist() == [UNKNOWN] * 4
    # Ribs fainter than the bone threshold: no rib anywhere, so nothing is known (a lumbar scan, or
    # osteoporotic bone) rather than "no ribs" everywhere.
    iso, owner, centers, boxes, voxels = _spine(rib_hu=150.0)
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0).tolist() == [UNKNOWN] * 4
    faint_ok = RibParams(bone_hu=120.0)
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0, faint_ok)[:2].tolist() == [RIBS] * 2
    # One dense rib in the scan and one faint one (osteoporotic ribs vary): the faint one is not seen,
    # and its absence is not trusted either (checked at the fainter threshold).
    iso, owner, centers, boxes, voxels = _spine()
    iso[106:112, 50:56, 120:175] = 150.0
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0).tolist() == [RIBS, RIBS, UNKNOWN, NO_RIBS]


def _with_ilium(width=200, top=0, bottom=32):
    """``_spine`` with a 10 mm plate beside the last block, held by no mask, from its side out to 95 mm on
    its rows ``top``..``bottom`` (the ilium beside the sacrum; ribs on the first two blocks as before)."""
    iso, owner, centers, boxes, voxels = _spine(width=width, process=())
    ci = width // 2
    iso[138 + top:138 + bottom, 45:55, ci + 20:min(ci + 95, width)] = BONE
    return iso, owner, centers, boxes, voxels


def test_the_ilium_beside_the_last_vertebra_marks_it_and_a_rib_does_not():
    iso, owner, centers, boxes, voxels = _with_ilium()
    share = ilium_share(iso, owner, centers, boxes, 1.0)
    assert share[3] >= 0.8 and share[0] < 0.5 and share[2] == 0  # a 6 mm rib bar fills a few rows
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0).tolist() == [RIBS, RIBS, NO_RIBS, ILIUM]
    # Bone far out on half its levels is not the ilium (an iliac crest, a rib pair): just a rib seen.
    iso, owner, centers, boxes, voxels = _with_ilium(top=16)
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0)[3] == RIBS
    # 70 mm of field of view beside the spine: ribs of one side alone could fill the window, so the
    # ilium is not read (ilium_room_mm).
    iso, owner, centers, boxes, voxels = _with_ilium(width=140)
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0)[3] == RIBS
    assert ilium_share(iso, owner, centers, boxes, 1.0, which=np.array([0, 0, 0, 1], bool))[:3].tolist() == [0] * 3


def test_only_the_lowest_vertebra_with_bone_beside_it_is_read_for_the_ilium():
    # A plate beside the second block (a thoracic vertebra whose rib fan fills its rows) with a rib on the
    # last block: the sacrum is the lowest vertebra in view, so the second is not measured.
    iso, owner, centers, boxes, voxels = _spine(ribs=(0, 1, 3), process=())
    iso[58:92, 45:55, 120:195] = BONE
    assert ilium_share(iso, owner, centers, boxes, 1.0)[1] >= 0.8
    assert rib_evidence(iso, owner, centers, boxes, voxels, WHOLE, 1.0).tolist() == [RIBS, RIBS, NO_RIBS, RIBS]


def test_the_ilium_anchors_a_sacrum_the_labeller_reads_as_l6():
    """The real abdomen CT under session 18's fine-tuned labeller, in round numbers: it reads the lumbar
    spine one level high and the sacrum's first mask as L6 (0.54; S 0.07). Without an anchor every level
    comes out one too high; the ilium beside the last one says S."""
    rows = [{18: 0.5, 19: 0.3}, {19: 0.67, 20: 0.25}, {20: 0.83, 21: 0.1}, {21: 0.5, 22: 0.3},
            {22: 0.47, 23: 0.34}, {24: 0.82, 23: 0.1}, {25: 0.54, 24: 0.12, 26: 0.07}]
    probs = _probs(rows)
    lps = np.array([[0, 0, -35.0 * r] for r in range(7)])
    names = lambda labs: [NAMES[int(x)] for x in labs]  # noqa: E731
    assert names(decode_labels(probs, list(range(1, 27)), lps)[0])[-2:] != ["L5", "S"]
    got = decode_labels(probs, list(range(1, 27)), lps, ribs=np.array([UNKNOWN] * 6 + [ILIUM]))[0]
    assert names(got) == ["T12", "L1", "L2", "L3", "L4", "L5", "S"]


def _probs(rows):
    probs = np.zeros((len(rows), 26))
    for r, row in enumerate(rows):
        probs[r] = (1 - sum(row.values())) / (26 - len(row))
        for lab, q in row.items():
            probs[r, lab - 1] = q
    return probs


def test_no_rib_on_a_whole_vertebra_moves_the_chain_off_a_thoracic_reading():
    # The real crop's pattern, by a margin the cue can move: the labeller reads T12 twice, then L1.
    probs = _probs([{19: 0.7, 18: 0.28}, {19: 0.7, 20: 0.28}, {20: 0.7, 21: 0.28}])
    lps = np.array([[0, 0, 0], [0, 0, -31], [0, 0, -64]], dtype=float)
    names = lambda labs: [NAMES[int(x)] for x in labs]  # noqa: E731
    assert names(decode_labels(probs, list(range(1, 27)), lps)[0]) == ["T11", "T12", "L1"]
    # No rib on the second, where one would show: an L1 far more often than a T12 without its rib.
    got = decode_labels(probs, list(range(1, 27)), lps, ribs=np.array([RIBS, NO_RIBS, UNKNOWN]))[0]
    assert names(got) == ["T12", "L1", "L2"]
    # A rib on the first alone does not say whether it is T11 or T12; unknown says nothing.
    for ribs in ([RIBS, UNKNOWN, UNKNOWN], [UNKNOWN] * 3):
        assert names(decode_labels(probs, list(range(1, 27)), lps, ribs=np.array(ribs))[0]) == ["T11", "T12", "L1"]


def test_a_rib_seen_moves_the_chain_off_a_lumbar_reading():
    # Three vertebrae the labeller reads L1-L3 by a small margin over T12-L2; a rib on the first says T12.
    probs = np.zeros((3, 26))
    for r, (a, b) in enumerate(((20, 19), (21, 20), (22, 21))):
        probs[r] = 0.01 / 24
        probs[r, a - 1], probs[r, b - 1] = 0.6, 0.39
    lps = np.array([[0, 0, 0], [0, 0, -33], [0, 0, -68]], dtype=float)
    assert decode_labels(probs, list(range(1, 27)), lps)[0].tolist() == [20, 21, 22]
    got = decode_labels(probs, list(range(1, 27)), lps, ribs=np.array([RIBS, UNKNOWN, UNKNOWN]))[0]
    assert got.tolist() == [IDS["T12"], IDS["L1"], IDS["L2"]]


def test_level_warnings_flag_a_rib_cue_against_the_labels_and_a_chain_without_a_landmark():
    lab = lambda *n: [IDS[x] for x in n]  # noqa: E731
    # The real T11-L2 crop as decoded one level high: a rib on "T11", none on "T12".
    got = level_warnings(lab("T10", "T11", "T12", "L1"), [UNKNOWN, RIBS, NO_RIBS, UNKNOWN])
    assert len(got) == 1 and "T12 without a rib" in got[0]  # where the ribs stop is a landmark
    assert "L1 with a rib" in level_warnings(lab("L1", "L2"), [RIBS, NO_RIBS])[0]
    # The real L2-L4 crop: no rib, no sacrum, no C1-C2 in view.
    got = level_warnings(lab("L1", "L2", "L3"), [UNKNOWN] * 3)
    assert len(got) == 1 and got[0].startswith("no landmark in view")
    assert level_warnings(lab("L1", "L2", "L3")) == got  # without the cue at all
    # Anchored, consistent chains: nothing to say.
    assert level_warnings(lab("T11", "T12", "L1", "L2"), [RIBS, RIBS, NO_RIBS, NO_RIBS]) == []
    assert level_warnings(lab("L4", "L5", "S"), [UNKNOWN, UNKNOWN, ILIUM]) == []
    assert level_warnings(lab("C2", "C3", "C4"), [UNKNOWN] * 3) == []
    assert level_warnings(lab("C6", "C7", "T1", "T2"), [NO_RIBS, NO_RIBS, RIBS, RIBS]) == []
    # Dropped candidates (label 0) are not vertebrae; an empty chain has no levels to warn about.
    assert level_warnings([0, IDS["S"]], [RIBS, ILIUM]) == []
    assert level_warnings([], []) == []
    # Decoded through decode_labels, the warnings come back with the labels.
    probs = _probs([{19: 0.7, 18: 0.28}, {20: 0.7, 19: 0.28}, {21: 0.7, 20: 0.28}])
    lps = np.array([[0, 0, 0], [0, 0, -33], [0, 0, -68]], dtype=float)
    labs, _, info = decode_labels(probs, list(range(1, 27)), lps)
    assert [NAMES[int(x)] for x in labs] == ["T12", "L1", "L2"]
    assert any(w.startswith("no landmark in view") for w in info["warnings"])
    labs, _, info = decode_labels(probs, list(range(1, 27)), lps, ribs=np.array([RIBS, NO_RIBS, UNKNOWN]))
    assert [NAMES[int(x)] for x in labs] == ["T12", "L1", "L2"] and info["warnings"] == []


def test_decoder_refuses_bad_rib_codes():
    probs = np.full((2, 26), 1 / 26)
    lps = np.array([[0, 0, 0], [0, 0, -30]], dtype=float)
    with pytest.raises(ValueError, match="ribs"):
        decode_labels(probs, list(range(1, 27)), lps, ribs=np.array([3, 0]))


@pytest.fixture(scope="module")
def real_crop_names():
    """Labels of the real 30-slice abdomen crop (a T11 sliver, T12, L1, L2) with and without the rib cue."""
    if not (REAL / "tssample-example-ct-sm_ct.nii.gz").is_file():
        pytest.skip(f"{REAL} not present")
    from engine.pipeline import Cascade

    names = {}
    for cue in (True, False):
        with Cascade(threads=2, rib_cue=cue) as c:
            res = c.run(REAL / "tssample-example-ct-sm_ct.nii.gz")
        names[cue] = [v.name for v in res.vertebrae]
        names[cue, "warnings"] = res.warnings
    return names


def test_real_crop_without_the_cue_is_read_right(real_crop_names):
    """Sessions 13-22 read the crop one level high without the cue (T10, T11, T12, L1): the labeller read
    its whole T12, L1, L2 as T12, T12, L1. Session 23's labeller, trained on the masks its segmenter draws,
    reads it right on its own."""
    assert real_crop_names[False][:4] == ["T11", "T12", "L1", "L2"]


def test_real_crop_read_a_level_off_says_so(real_crop_names):
    """Labelled one level high at a decoded confidence of 0.92, the crop's result warns that the rib cue
    (none on its "T12") disagrees with the labels, which a robot controller sees before it trusts them."""
    warned = any("rib cue disagrees" in w for w in real_crop_names[True, "warnings"])
    if real_crop_names[True][:4] == ["T11", "T12", "L1", "L2"]:  # right (the xfail below passing): no claim
        assert not warned
    else:
        assert real_crop_names[True][:4] == ["T10", "T11", "T12", "L1"]
        assert any("T12 without a rib" in w for w in real_crop_names[True, "warnings"])
    assert not any("rib cue" in w for w in real_crop_names[False, "warnings"])  # no cue, no such claim


def test_real_crop_labels_follow_the_ribs(real_crop_names):
    """The cue (a rib on the first whole vertebra, none where one would show on the second) and the labels
    agree: right in sessions 15-16 and since session 23. In sessions 17-22 the 822-voxel slab at the crop's
    bottom face read L2 at 0.92 and outweighed the cue (evaluation/results/2026-12-01-s17/README.md)."""
    assert real_crop_names[True][:4] == ["T11", "T12", "L1", "L2"]


@pytest.mark.skipif(not (REAL / "tssample-example-ct_ct.nii.gz").is_file(), reason=f"{REAL} not present")
def test_real_abdomen_ribs_on_t12_only():
    """The real abdomen CT (a T11 sliver, T12-L5, sacrum) through the shipped cascade: T12 carries ribs,
    L1-L4 none, the ilium flanks the sacrum alone."""
    from engine.pipeline import Cascade

    seen = {}
    with Cascade(threads=2) as c:
        orig = c._decode

        def spy(seg, probs, canon, iso, end=None):
            labs, conf, info = orig(seg, probs, canon, iso, end)
            seen.update(zip(labs.tolist(), info["ribs"].tolist()))
            return labs, conf, info

        c._decode = spy
        r = c.run(REAL / "tssample-example-ct_ct.nii.gz")
    assert [v.name for v in r.vertebrae] == ["T11", "T12", "L1", "L2", "L3", "L4", "L5", "S"]
    assert seen[IDS["T12"]] == RIBS and r.info["rib_bearing"] >= 1
    assert all(seen[IDS[n]] != RIBS for n in ("L1", "L2", "L3", "L4"))
    assert seen[IDS["S"]] == ILIUM and sum(code == ILIUM for code in seen.values()) == 1

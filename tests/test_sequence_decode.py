"""Positional label logic (engine.sequence) on crafted score matrices."""
from __future__ import annotations

import numpy as np
import pytest

from engine.labels import CRANIOCAUDAL, IDS, ORDER_INDEX
from engine.sequence import DEFAULT_STEP_MM, TRANSITIONAL, SequenceParams, decode_sequence

ALL = list(range(1, 29))  # a labeller with a column for every VerSe ID, T13 and L6 included
CORE = [c for c in CRANIOCAUDAL if c not in TRANSITIONAL]


def ids(*names: str) -> list[int]:
    return [IDS[n] for n in names]


def span(first: str, last: str) -> list[int]:
    a, b = ORDER_INDEX[IDS[first]], ORDER_INDEX[IDS[last]]
    return [c for c in CRANIOCAUDAL[a:b + 1] if c not in TRANSITIONAL]


def centres(true_labels: list[int], scale: float = 1.0, jitter: float = 0.0, seed: int = 0) -> np.ndarray:
    """Centres of the given vertebrae (true anatomy) along a gently curved line, typical spacing."""
    rng = np.random.default_rng(seed)
    z = [0.0]
    for a, b in zip(true_labels[:-1], true_labels[1:]):
        if a in TRANSITIONAL or b in TRANSITIONAL:
            core_a = a if a not in TRANSITIONAL else CORE[CORE.index({28: 19, 25: 24}[a])]
            d = DEFAULT_STEP_MM[core_a]
        else:
            d = sum(DEFAULT_STEP_MM[CORE[i]] for i in range(CORE.index(a), CORE.index(b)))
        z.append(z[-1] + d * scale * (1 + jitter * rng.normal()))
    z = np.asarray(z)
    return np.stack([z, 10 * np.sin(z / 200.0), np.zeros_like(z)], 1)


def onehot(labels: list[int], p: float = 0.8, classes: list[int] = ALL) -> np.ndarray:
    S = np.full((len(labels), len(classes)), (1 - p) / (len(classes) - 1))
    for i, lab in enumerate(labels):
        S[i, classes.index(lab)] = p
    return S


def set_row(S: np.ndarray, i: int, probs: dict[int, float], classes: list[int] = ALL) -> None:
    rest = (1 - sum(probs.values())) / (len(classes) - len(probs))
    S[i] = rest
    for lab, q in probs.items():
        S[i, classes.index(lab)] = q


def assert_valid(labels: list[int]) -> None:
    order = [ORDER_INDEX[lab] for lab in labels]
    assert all(b > a for a, b in zip(order, order[1:])), labels


def test_correct_sequence_unchanged():
    labs = span("T5", "L5")
    r = decode_sequence(onehot(labs, 0.7), ALL, centres(labs, jitter=0.05))
    assert r.labels == labs
    assert r.missed == [] and r.consistent
    assert min(r.confidence) > 0.9
    assert r.names[0] == "T5" and r.names[-1] == "L5"


def test_duplicate_t12_at_thoracolumbar_junction():
    labs = span("T8", "L3")
    S = onehot(labs, 0.85)
    i = labs.index(IDS["L1"])
    set_row(S, i, {IDS["T12"]: 0.7, IDS["L1"]: 0.2})  # both i-1 and i scored T12
    r = decode_sequence(S, ALL, centres(labs))
    assert r.labels == labs
    assert r.names[i - 1: i + 1] == ["T12", "L1"]
    assert r.confidence[i] < r.confidence[0]  # the corrected one is less certain


def test_missed_vertebra_large_gap_gives_skip():
    true = span("T10", "L5")
    seen = [lab for lab in true if lab != IDS["L2"]]  # L2 not detected: a ~2x gap between L1 and L3
    C = centres(true)[[true.index(lab) for lab in seen]]
    # Weak, partly ambiguous scores: L3..L5 look like L2..L4 as often as not.
    S = onehot(seen, 0.5)
    for lab in ids("L3", "L4", "L5"):
        set_row(S, seen.index(lab), {lab: 0.4, lab - 1: 0.35})
    r = decode_sequence(S, ALL, C)
    assert r.labels == seen
    assert r.missed == [(seen.index(IDS["L1"]), [IDS["L2"]])]


def test_normal_gap_forbids_skip():
    # Scores jump L1 -> L3, but the centres are consecutive: a mislabel, not a miss.
    true = span("T10", "L5")
    S = onehot(true, 0.75)
    i = true.index(IDS["L2"])
    set_row(S, i, {IDS["L3"]: 0.75})
    r = decode_sequence(S, ALL, centres(true))
    assert r.missed == []
    assert r.labels == true


def test_uniform_row_corrected_by_neighbours():
    labs = span("T3", "T12")
    S = onehot(labs, 0.8)
    S[4] = 1.0 / len(ALL)
    r = decode_sequence(S, ALL, centres(labs))
    assert r.labels == labs


def test_confidently_wrong_row_is_overruled():
    labs = span("C3", "T6")
    S = onehot(labs, 0.8)
    set_row(S, 5, {IDS["T9"]: 0.95})  # one row says T9 in the middle of C3..T6
    r = decode_sequence(S, ALL, centres(labs))
    assert r.labels == labs


def test_t13_only_when_scores_support_it():
    true = span("T9", "T12") + [28] + span("L1", "L5")
    C = centres(true)
    S = onehot(true, 0.7)
    r = decode_sequence(S, ALL, C)
    assert r.labels == true and "T13" in r.names
    # Same geometry, but the extra vertebra scored as an ambiguous T12/L1 and the rest as a normal
    # 12-thoracic spine would be: no T13.
    normal = span("T8", "L5")
    S2 = onehot(normal, 0.7)
    r2 = decode_sequence(S2, ALL, centres(normal))
    assert 28 not in r2.labels and r2.labels == normal


def test_t13_weak_evidence_not_taken():
    labs = span("T9", "L4")
    S = onehot(labs, 0.8)
    i = labs.index(IDS["L1"])
    set_row(S, i, {IDS["L1"]: 0.6, 28: 0.3})  # some T13 score, but L1 wins
    r = decode_sequence(S, ALL, centres(labs))
    assert r.labels == labs


def test_l6_when_supported():
    true = span("L1", "L5") + [25, IDS["S"]]
    r = decode_sequence(onehot(true, 0.7), ALL, centres(true))
    assert r.labels == true and r.names[-2:] == ["L6", "S"]
    # L5 scored also for the vertebra above the sacrum, no L6 score: L5 then S stays.
    normal = span("L1", "S")
    S = onehot(normal, 0.8)
    r2 = decode_sequence(S, ALL, centres(normal))
    assert r2.labels == normal


def test_partial_fov_start_and_end_anywhere():
    labs = span("T5", "L2")
    r = decode_sequence(onehot(labs, 0.6), ALL, centres(labs))
    assert r.names[0] == "T5" and r.names[-1] == "L2" and r.labels == labs
    cerv = span("C1", "C5")
    r = decode_sequence(onehot(cerv, 0.6), ALL, centres(cerv))
    assert r.labels == cerv


def test_shifted_block_follows_majority():
    # A run where the classifier is off by one in a minority of rows: the sequence follows the majority.
    labs = span("T6", "L3")
    S = onehot(labs, 0.7)
    for i in (2, 3):
        set_row(S, i, {labs[i] + 1: 0.55, labs[i]: 0.35})
    r = decode_sequence(S, ALL, centres(labs))
    assert r.labels == labs


def test_patient_scale_estimated():
    # A small patient (0.75x): normal gaps must not look like skips and consecutive labels stay.
    labs = span("T10", "L5")
    r = decode_sequence(onehot(labs, 0.7), ALL, centres(labs, scale=0.75))
    assert r.labels == labs
    assert r.scale == pytest.approx(0.75, abs=0.05)
    # A large one (1.35x) with a truly missed L3: still detected as a skip.
    true = span("T10", "L5")
    seen = [lab for lab in true if lab != IDS["L3"]]
    C = centres(true, scale=1.35)[[true.index(lab) for lab in seen]]
    r = decode_sequence(onehot(seen, 0.5), ALL, C)
    assert r.labels == seen and r.missed == [(seen.index(IDS["L2"]), [IDS["L3"]])]


def test_classes_subset_and_background_column():
    classes = [0] + list(range(1, 25)) + [26]  # background column, no T13/L6/Co columns
    labs = span("T11", "S")
    S = onehot(labs, 0.8, classes)
    r = decode_sequence(S, classes, centres(labs))
    assert r.labels == labs
    with pytest.raises(ValueError):
        decode_sequence(S, classes[:-1] + [99], centres(labs))


def test_logits_input():
    labs = span("L1", "L5")
    logits = np.log(onehot(labs, 0.8)) + 3.0
    r = decode_sequence(logits, ALL, centres(labs), logits=True)
    assert r.labels == labs


def test_edge_cases():
    r = decode_sequence(np.zeros((0, 28)), ALL, np.zeros((0, 3)))
    assert r.labels == [] and r.confidence == []
    r = decode_sequence(onehot([IDS["L3"]], 0.6), ALL, np.zeros((1, 3)))
    assert r.labels == [IDS["L3"]] and 0 < r.confidence[0] <= 1
    with pytest.raises(ValueError):
        decode_sequence(np.zeros((2, 5)), ALL, np.zeros((2, 3)))
    with pytest.raises(ValueError):
        decode_sequence(onehot([20, 21]), ALL, np.zeros((3, 3)))
    with pytest.raises(ValueError):
        decode_sequence(np.full((2, 28), np.nan), ALL, np.zeros((2, 3)))
    # More candidates than levels: no consistent labelling, flagged, not crashed.
    n = len(CRANIOCAUDAL) + 2
    r = decode_sequence(np.full((n, 28), 1 / 28), ALL, centres(CORE + CORE[:4])[:n])
    assert not r.consistent and len(r.labels) == n


@pytest.mark.parametrize("seed", range(40))
def test_random_scores_always_valid(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 27))
    S = rng.dirichlet(np.full(28, rng.uniform(0.05, 2.0)), size=n)
    gaps = rng.uniform(5.0, 90.0, size=max(n - 1, 0))
    z = np.concatenate([[0.0], np.cumsum(gaps)])
    C = np.stack([z, rng.normal(0, 3, n), rng.normal(0, 3, n)], 1)
    params = SequenceParams(max_skip=int(rng.integers(0, 4)))
    r = decode_sequence(S, ALL, C, params)
    assert len(r.labels) == n and r.consistent
    # Garbage scores and gaps: candidates may be dropped (label 0), at most max_drop_run in a row; the
    # others follow the chain, and a missed level lies between a kept candidate and the next kept one.
    kept = [i for i in range(n) if i not in r.dropped]
    assert all(r.labels[i] == 0 and r.confidence[i] == 0.0 for i in r.dropped)
    assert all(b - a <= params.max_drop_run + 1 for a, b in zip([-1] + kept, kept + [n]))
    assert_valid([r.labels[i] for i in kept])
    assert all(r.labels[i] in CRANIOCAUDAL for i in kept)
    assert all(0.0 <= c <= 1.0 + 1e-9 for c in r.confidence)
    for i, missed in r.missed:
        below = kept[kept.index(i) + 1]
        assert 1 <= len(missed) <= params.max_skip
        assert ORDER_INDEX[r.labels[i]] < ORDER_INDEX[missed[0]] < ORDER_INDEX[r.labels[below]]


def test_slightly_large_gap_with_equivocal_scores_stays_consecutive():
    # A 1.6x gap (a tall disc, a bad centre) is not proof of a missed level: with scores that fit both
    # readings equally, the skip prior keeps the labels consecutive.
    labs = span("T10", "L5")
    C = centres(labs)
    i = labs.index(IDS["L1"])
    C[i + 1:, 0] += 0.6 * (C[i + 1, 0] - C[i, 0])
    S = onehot(labs, 0.8)
    for j in range(i + 1, len(labs)):
        set_row(S, j, {labs[j]: 0.4, CORE[CORE.index(labs[j]) + 1]: 0.4})
    r = decode_sequence(S, ALL, C)
    assert r.missed == [] and r.labels == labs
    # A clear ~2x gap with the same scores is read as a missed level.
    C2 = centres(labs)
    C2[i + 1:, 0] += 1.05 * (C2[i + 1, 0] - C2[i, 0])
    r2 = decode_sequence(S, ALL, C2)
    assert r2.missed == [(i, [IDS["L2"]])]


def test_transitional_prior_needs_clear_scores():
    # Field of view ending at the junction: the last vertebra scored T13 0.45 vs L1 0.40. T13 is rare,
    # so L1 is kept; with T13 clearly ahead (0.8 vs 0.1) it is taken.
    labs = span("T8", "L1")
    S = onehot(labs, 0.8)
    set_row(S, len(labs) - 1, {28: 0.45, IDS["L1"]: 0.40})
    assert decode_sequence(S, ALL, centres(labs)).labels == labs
    set_row(S, len(labs) - 1, {28: 0.8, IDS["L1"]: 0.1})
    assert decode_sequence(S, ALL, centres(labs)).names[-1] == "T13"


def test_a_loose_piece_takes_the_level_next_to_its_end():
    # T6..T11 and, above T6, the spinous tip of T5 hanging into the top slices: its centroid 40 mm behind
    # the bodies and level with T6 (a 3-D gap that reads as a missed level), and the labeller scoring the
    # fragment as T2. As a partial row it carries neither: it becomes T5, the others keep their labels.
    labs = span("T6", "T11")
    c = centres(labs)
    piece = c[0] + [2.0, 40.0, 0.0]
    S = np.concatenate([onehot([IDS["T2"]], 0.9), onehot(labs, 0.7)])
    C = np.concatenate([[piece], c])
    part = [True] + [False] * len(labs)
    r = decode_sequence(S, ALL, C, partial=part)
    assert r.labels == ids("T5") + labs and r.missed == []
    # Read as a whole vertebra it would not be T5 (the gap and the scores both say otherwise).
    assert decode_sequence(S, ALL, C).labels[0] != IDS["T5"]
    # Its gap is left out of the patient's scale: the same scale as without the piece.
    assert r.scale == pytest.approx(decode_sequence(onehot(labs, 0.7), ALL, c).scale)
    with pytest.raises(ValueError):
        decode_sequence(S, ALL, C, partial=part[1:])


def test_a_small_piece_inside_the_chain_is_dropped_not_labelled():
    # Held-out phantom default-100004: T4 .. T11 found, and between T5 and T6 a spinous process
    # segmented apart (4 % of its neighbours' volume) whose centre sits a normal step from T6 and whose
    # scores say "T6". Kept, it pushes every label above it one level up; dropped (label 0), the
    # chain reads right.
    labs = span("T4", "T11")
    c = centres(labs)
    piece = c[2] + [-5.0, 30.0, 0.0]  # 5 mm above T6, 30 mm behind it
    S = onehot(labs, 0.8)
    S = np.concatenate([S[:2], onehot([IDS["T6"]], 0.7), S[2:]])
    C = np.concatenate([c[:2], [piece], c[2:]])
    vol = np.full(len(C), 30000.0)
    vol[2] = 1200.0
    r = decode_sequence(S, ALL, C, volumes=vol)
    assert r.dropped == [2] and r.labels[2] == 0 and r.confidence[2] == 0.0
    assert [x for i, x in enumerate(r.labels) if i != 2] == labs
    # A whole vertebra scored one level off the others' reading is relabelled, not dropped; a small
    # one at an end (cut by the field of view) is not cheap to drop either.
    odd = onehot(labs, 0.8)
    set_row(odd, 3, {labs[3] + 1: 0.6, labs[3]: 0.3})
    full = decode_sequence(odd, ALL, c, volumes=np.full(len(labs), 30000.0))
    assert full.dropped == [] and full.labels == labs
    vol_end = np.full(len(labs), 30000.0)
    vol_end[0] = 1200.0
    assert decode_sequence(onehot(labs, 0.8), ALL, c, volumes=vol_end).dropped == []
    # Disabled: the old behaviour.
    off = decode_sequence(S, ALL, C, SequenceParams(drop_logprior=None), volumes=vol)
    assert off.dropped == [] and 0 not in off.labels
    with pytest.raises(ValueError):
        decode_sequence(S, ALL, C, volumes=vol[1:])


def _lumbar_read_two_high():
    """The real abdomen CT (tssample-example-ct: T12-L5 and the sacrum; T11 barely in view) as a
    coarse-scanner labeller scored it in session 8: the top scores of each row, lumbar levels read up to
    two levels high, the sacrum clear; and the centres the cascade found."""
    labs = span("T12", "L5") + [IDS["S"]]
    rows = [{19: 0.94, 18: 0.02}, {19: 0.93, 20: 0.04}, {20: 0.89, 19: 0.08}, {20: 0.96, 21: 0.01, 19: 0.01},
            {21: 0.49, 6: 0.12, 24: 0.09}, {21: 0.53, 7: 0.11, 19: 0.06}, {26: 0.86, 7: 0.04, 20: 0.02}]
    S = onehot(labs, 0.8)
    for i, row in enumerate(rows):
        set_row(S, i, row)
    z = 416.2 - np.array([416.2, 385.7, 350.7, 315.3, 278.8, 242.9, 217.9])  # its centres (mm, head to feet)
    return labs, S, np.stack([z, np.zeros(7), np.zeros(7)], 1)


def test_sacrum_anchors_a_chain_the_labeller_reads_too_high():
    labs, S, C = _lumbar_read_two_high()
    free = decode_sequence(S, ALL, C, SequenceParams(anchors=()))
    assert free.labels[-1] != IDS["S"]  # the shifted reading outvotes the sacrum's own score
    r = decode_sequence(S, ALL, C)
    assert r.labels == labs and r.consistent


def test_anchor_only_binds_a_confident_top_most_sacrum():
    labs, S, C = _lumbar_read_two_high()
    set_row(S, len(labs) - 1, {IDS["S"]: 0.45, IDS["L1"]: 0.02})  # under anchor_min_score: not anchored
    assert decode_sequence(S, ALL, C).labels == decode_sequence(S, ALL, C, SequenceParams(anchors=())).labels
    # A second sacrum-like candidate below the first (a lower sacral piece) is not forced to S as well:
    # the chain stays consistent and the upper one is the sacrum.
    labs, S, C = _lumbar_read_two_high()
    S2 = np.vstack([S, S[-1:]])
    C2 = np.vstack([C, C[-1:] + [25.0, 0.0, 0.0]])
    r = decode_sequence(S2, ALL, C2)
    assert r.consistent and r.labels[:len(labs)] == labs and r.labels[-1] in (0, IDS["Co"])


def test_anchored_sacrum_is_never_dropped():
    labs = span("L1", "L5") + [IDS["S"]]
    S = onehot(labs, 0.8)
    C = centres(labs)
    r = decode_sequence(S, ALL, C, SequenceParams(small_drop_logprior=0.0), volumes=np.r_[np.full(5, 40.0), 1.0],
                        cut=np.zeros(6, bool))  # a tiny sacrum mask: cheap to drop, but anchored
    assert r.labels == labs and r.dropped == []


def test_a_slab_cut_by_the_field_of_view_does_not_anchor_the_chain():
    """The pattern of the real 30-slice abdomen crop (tssample-example-ct-sm) with a session-11 labeller: three
    whole vertebrae, then a 5-slice slab at the scan's bottom face (1 % of the median volume) scoring the
    sacrum 0.62. Anchored, the slab moved the three vertebrae above it by three levels."""
    labs = span("T11", "L1") + [IDS["L2"]]
    S = onehot(labs, 0.6)
    set_row(S, 3, {IDS["S"]: 0.62, IDS["L2"]: 0.05})
    C = centres(labs)
    cut = np.array([True, False, False, True])
    r = decode_sequence(S, ALL, C, volumes=np.array([34.0, 39.0, 41.0, 0.4]), cut=cut)
    assert r.labels[:3] == labs[:3]
    # The same scores on a large mask anchor as before: a sacrum the field of view cuts is still a sacrum.
    big = decode_sequence(S, ALL, C, volumes=np.array([34.0, 39.0, 41.0, 120.0]), cut=cut)
    assert big.labels[-1] == IDS["S"]

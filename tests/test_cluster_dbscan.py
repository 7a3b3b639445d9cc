"""engine.cluster: DBSCAN parity with scikit-learn, and the two-stage box clustering."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import DBSCAN as SkDBSCAN

from bench.micro_dbscan import bench_one, detections_of_size, synth_detections
from engine.cluster import (DBSCAN, BoxSet, ClusterParams, cluster_boxes, connected_components_min_label,
                            neighbour_pairs)
from engine.xp import get_xp, to_numpy


def sk(X, eps, ms):
    X = np.asarray(X, dtype=np.float64)
    if len(X) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    m = SkDBSCAN(eps=eps, min_samples=ms, metric="euclidean").fit(X)
    return m.labels_, m.core_sample_indices_


def assert_same(X, eps, ms):
    want, want_core = sk(X, eps, ms)
    for comp in ("scipy", "propagate"):
        est = DBSCAN(eps, ms, components=comp)
        got = est.fit_predict(X)
        np.testing.assert_array_equal(got, want, err_msg=f"components={comp} eps={eps} ms={ms}")
        np.testing.assert_array_equal(est.core_sample_indices_, want_core)


@pytest.mark.parametrize("seed", range(12))
def test_parity_random_blobs(seed):
    rng = np.random.default_rng(seed)
    d = int(rng.integers(1, 4))
    centres = rng.uniform(-20, 20, size=(int(rng.integers(1, 8)), d))
    n = int(rng.integers(20, 400))
    X = centres[rng.integers(0, len(centres), n)] + rng.normal(0, rng.uniform(0.5, 3), size=(n, d))
    assert_same(X, float(rng.uniform(0.3, 3.0)), int(rng.integers(1, 10)))


@pytest.mark.parametrize("seed", range(6))
def test_parity_uniform_noise(seed):
    rng = np.random.default_rng(100 + seed)
    X = rng.uniform(0, 50, size=(300, 3))
    for eps, ms in ((1.0, 2), (3.0, 4), (6.0, 8), (0.2, 1)):
        assert_same(X, eps, ms)


def test_parity_chains_and_border_ties():
    # Two dense chains with sparse bridges: many border points equidistant to both clusters, so the
    # sklearn rule (lowest-numbered cluster claims the border point) is exercised.
    t = np.linspace(0, 30, 61)
    a = np.stack([t, np.zeros_like(t)], 1)
    b = np.stack([t, np.full_like(t, 2.0)], 1)
    border = np.stack([t[::5] + 0.1, np.full(len(t[::5]), 1.0)], 1)
    rng = np.random.default_rng(3)
    for perm_seed in range(4):
        X = np.concatenate([border, a, b])  # borders first: their index must not decide their cluster
        X = X[np.random.default_rng(perm_seed).permutation(len(X))] if perm_seed else X
        assert_same(X, 1.05, 4)
    zig = np.cumsum(rng.normal(0, 0.4, size=(500, 3)), axis=0)
    assert_same(zig, 0.6, 3)


def test_border_point_goes_to_first_discovered_cluster():
    # core chains A and B; point 0 (3 neighbours < min_samples 4) is a border point of both.
    A = [[-1.0, 0.0], [-1.5, 0.0], [-2.0, 0.0], [-2.5, 0.0]]
    B = [[1.0, 0.0], [1.5, 0.0], [2.0, 0.0], [2.5, 0.0]]
    X = np.array([[0.0, 0.0]] + B + A)  # B has the lower indices -> B is cluster 0 and claims point 0
    got = DBSCAN(1.0, 4).fit_predict(X)
    np.testing.assert_array_equal(got, sk(X, 1.0, 4)[0])
    assert got[0] == got[1] == 0 and got[5] == 1
    X2 = np.array(A + [[0.0, 0.0]] + B)  # now A is discovered first and claims it
    got2 = DBSCAN(1.0, 4).fit_predict(X2)
    np.testing.assert_array_equal(got2, sk(X2, 1.0, 4)[0])
    assert got2[4] == got2[0] == 0 and got2[5] == 1


def test_parity_duplicates_and_grid():
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 10, size=(60, 3))
    X = np.concatenate([base, base, base[:20], np.round(rng.uniform(0, 10, size=(100, 3)))])
    for eps, ms in ((0.5, 2), (0.5, 3), (1.3, 5), (2.0, 10)):
        assert_same(X, eps, ms)
    grid = np.stack(np.meshgrid(np.arange(8.0), np.arange(8.0), indexing="ij"), -1).reshape(-1, 2)
    assert_same(grid, 1.5, 5)  # distances 1 and sqrt(2), both clear of eps
    assert_same(np.zeros((30, 3)), 0.1, 31)  # all identical, not enough for a core
    assert_same(np.zeros((30, 3)), 0.1, 30)


def test_edge_cases():
    assert DBSCAN(1.0, 2).fit_predict(np.zeros((0, 3))).shape == (0,)
    np.testing.assert_array_equal(DBSCAN(1.0, 1).fit_predict(np.ones((1, 2))), [0])
    np.testing.assert_array_equal(DBSCAN(1.0, 2).fit_predict(np.ones((1, 2))), [-1])
    X = np.arange(10.0)[:, None] * 10
    np.testing.assert_array_equal(DBSCAN(1.0, 2).fit_predict(X), np.full(10, -1))  # all noise
    np.testing.assert_array_equal(DBSCAN(1.0, 1).fit_predict(X), np.arange(10))  # min_samples=1
    assert_same(X, 1.0, 1)
    assert_same(np.random.default_rng(0).normal(size=(9, 2)), 0.8, 2)  # sklearn's brute path (n small)
    with pytest.raises(ValueError):
        DBSCAN(0.0, 2)
    with pytest.raises(ValueError):
        DBSCAN(1.0, 0)
    with pytest.raises(ValueError):
        DBSCAN(1.0, 2).fit_predict(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError):
        DBSCAN(1.0, 2).fit_predict(np.zeros(5))


def test_chunked_pairs_equal(monkeypatch):
    import engine.cluster as C

    X = np.random.default_rng(1).normal(0, 2, size=(400, 3))
    want = sk(X, 1.5, 4)[0]
    monkeypatch.setattr(C, "_MAX_PAIRS_PER_CHUNK", 97)  # force many chunks
    np.testing.assert_array_equal(DBSCAN(1.5, 4).fit_predict(X), want)
    s, t = neighbour_pairs(X, 1.5)
    d = np.linalg.norm(X[:, None] - X[None], axis=-1)
    brute = {(i, j) for i, j in zip(*np.nonzero(np.triu(d <= 1.5, 1)))}
    assert {(min(a, b), max(a, b)) for a, b in zip(s.tolist(), t.tolist())} == brute
    assert len(s) == len(brute)


def test_components_propagation_matches_scipy():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(5)
    n = 300
    src = rng.integers(0, n, 260)
    dst = rng.integers(0, n, 260)
    lab = connected_components_min_label(n, src, dst, np)
    ref = connected_components(coo_matrix((np.ones(260), (src, dst)), shape=(n, n)), directed=False)[1]
    # same partition, and each label is the component's smallest index
    for c in np.unique(ref):
        members = np.nonzero(ref == c)[0]
        assert np.all(lab[members] == members.min())


@pytest.mark.parametrize("seed", range(5))
def test_parity_realistic_detection_sets(seed):
    det = synth_detections(17, seed=seed, n_false=40)
    X = det.boxes.centers_mm()
    p = ClusterParams()
    assert_same(X, p.eps_mm, p.min_samples)
    for n in (500, 1500):
        assert_same(detections_of_size(n, seed), p.eps_mm, p.min_samples)


def test_get_xp_numpy():
    assert get_xp(np.zeros(3)) is np and get_xp([1, 2], None) is np
    assert to_numpy([1, 2]).tolist() == [1, 2]


# ----------------------------------------------------------------------------- two-stage clustering

def _purity(det, cands):
    """Per candidate: the single true vertebra its boxes come from (asserts no mixing)."""
    out = []
    for c in cands:
        v = det.vertebra[c.box_indices]
        v = v[v >= 0]
        assert len(np.unique(v)) == 1, "a candidate mixes vertebrae"
        out.append(int(v[0]))
    return out


@pytest.mark.parametrize("seed", range(4))
def test_two_stage_finds_every_vertebra(seed):
    det = synth_detections(17, seed=seed, n_false=40, wrong_size_rate=0.08)
    cands = cluster_boxes(det.boxes)
    assert len(cands) == 17
    assert _purity(det, cands) == list(range(17))  # ordered top to bottom
    for c, true in zip(cands, det.centers_mm):
        assert np.linalg.norm(c.center_mm - true) < 4.0  # synthetic boxes drift ~1.5 mm laterally
        lo, hi = c.extent_mm[:, 0], c.extent_mm[:, 1]
        assert np.all(lo <= c.center_mm) and np.all(c.center_mm <= hi)
        assert 0.0 < c.score <= 1.0 and c.count == len(c.box_indices)
    kept = np.concatenate([c.box_indices for c in cands])
    assert not det.wrong_size[kept].any(), "stage 2 must drop boxes with outlier sizes"
    assert (det.vertebra[kept] < 0).sum() <= 1


def test_stage2_removes_wrong_sizes_and_changes_centre():
    det = synth_detections(5, seed=11, n_false=0, wrong_size_rate=0.0, miss_rate=0.0)
    b = det.boxes
    # Inject 8 boxes on vertebra 2's slices with doubled height, centred 8 mm lower (as a box over two
    # vertebrae would be): inside the stage-1 cluster, but wrong size.
    idx = np.nonzero(det.vertebra == 2)[0][:8]
    rc = b.center_rc[idx] + [8.0, 0.0]
    hw = b.size_hw[idx] * [2.0, 1.0]
    boxes = BoxSet(np.concatenate([b.slice_index, b.slice_index[idx]]), np.concatenate([b.center_rc, rc]),
                   np.concatenate([b.size_hw, hw]), np.concatenate([b.score, b.score[idx]]), b.spacing)
    with_stage2 = cluster_boxes(boxes)
    assert len(with_stage2) == 5
    cand = with_stage2[2]
    assert not np.any(cand.box_indices >= len(b))
    no_stage2 = cluster_boxes(boxes, ClusterParams(size_eps_mm=1e6))
    assert np.any(no_stage2[2].box_indices >= len(b))
    assert abs(cand.center_mm[0] - det.centers_mm[2, 0]) < abs(no_stage2[2].center_mm[0] - det.centers_mm[2, 0])


def test_small_spurious_cluster_dropped_by_fraction_rule():
    det = synth_detections(5, seed=2, n_false=0, first_level=19)  # lumbar: ~45 boxes each
    b = det.boxes
    biggest = max(c.count for c in cluster_boxes(b))
    assert 7 < 0.2 * biggest
    # A tight spurious cluster of 7 boxes far from the spine (e.g. a femoral head seen on 7 slices).
    k = np.full(7, 700.0) + np.arange(7) * 0.3
    extra = BoxSet(np.arange(30, 37), np.stack([k, np.full(7, 60.0)], 1), np.tile([[20.0, 30.0]], (7, 1)),
                   np.full(7, 0.9), b.spacing)
    boxes = BoxSet(np.concatenate([b.slice_index, extra.slice_index]), np.concatenate([b.center_rc, extra.center_rc]),
                   np.concatenate([b.size_hw, extra.size_hw]), np.concatenate([b.score, extra.score]), b.spacing)
    assert len(cluster_boxes(boxes)) == 5
    assert len(cluster_boxes(boxes, ClusterParams(min_fraction=0.0))) == 6


def test_spacing_is_respected():
    a = synth_detections(8, seed=4, spacing=1.0)
    b = synth_detections(8, seed=4, spacing=0.8)  # same anatomy in mm, finer voxels
    ca, cb = cluster_boxes(a.boxes), cluster_boxes(b.boxes)
    assert len(ca) == len(cb) == 8
    for x, y in zip(ca, cb):
        assert np.linalg.norm(x.center_mm - y.center_mm) < 1.0


def test_cluster_boxes_empty_and_all_noise():
    assert cluster_boxes(BoxSet.empty()) == []
    rng = np.random.default_rng(0)
    n = 20
    boxes = BoxSet(rng.integers(0, 200, n), rng.uniform(0, 400, (n, 2)), rng.uniform(10, 30, (n, 2)),
                   rng.uniform(0, 1, n))
    assert cluster_boxes(boxes) == []
    with pytest.raises(ValueError):
        BoxSet(np.zeros(3), np.zeros((2, 2)), np.zeros((3, 2)), np.zeros(3))


def test_micro_bench_reports_identical():
    r = bench_one(300, repeats=2)
    assert r["identical"] is True and r["n"] == 300
    assert set(r) >= {"n", "ours_ms", "sklearn_ms", "speedup_vs_sklearn", "identical"}

"""engine.dbscan: DBSCAN parity with scikit-learn; engine.cluster: the two-stage box clustering."""
from __future__ import annotations

import contextlib
import itertools
import math

import numpy as np
import pytest
from sklearn.cluster import DBSCAN as SkDBSCAN

import engine.dbscan as C
from bench.micro_dbscan import assign_boxes_sklearn, bench_one, bench_two_stage, detections_of_size, synth_detections
from engine.cluster import BoxSet, ClusterParams, assign_boxes, cluster_boxes
from engine.dbscan import DBSCAN, connected_components_min_label, neighbour_pairs
from engine.xp import get_xp, to_numpy


def sk(X, eps, ms):
    X = np.asarray(X, dtype=np.float64)
    if len(X) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    m = SkDBSCAN(eps=eps, min_samples=ms, metric="euclidean").fit(X)
    return m.labels_, m.core_sample_indices_


@contextlib.contextmanager
def settings(**kw):
    """Temporarily set engine.dbscan's tuning constants (to force a path or tiny blocks)."""
    old = {k: getattr(C, k) for k in kw}
    try:
        for k, v in kw.items():
            setattr(C, k, v)
        yield
    finally:
        for k, v in old.items():
            setattr(C, k, v)


# Every implementation path of the numpy estimator; each must equal sklearn on its own.
VARIANTS = {
    "auto": {},
    "scipy": {"components": "scipy"},
    "propagate": {"components": "propagate"},
    "small-pass, float keys, tiny blocks": {"_SMALL_MAX_CANDIDATES": 1 << 40, "_KEY_MAX": 0, "_BLOCK": 64},
    "band+runs": {"_SMALL_MAX_CANDIDATES": -1},
    "band+runs, float keys, tiny blocks, scipy": {"_SMALL_MAX_CANDIDATES": -1, "_KEY_MAX": 0, "_BLOCK": 64,
                                                  "components": "scipy"},
}


def fits(X, eps, ms):
    """(variant, labels, core indices) for every numpy path, and the array-module generic path."""
    for name, cfg in VARIANTS.items():
        cfg = dict(cfg)
        comp = cfg.pop("components", "auto")
        with settings(**cfg):
            est = DBSCAN(eps, ms, components=comp).fit(X)
        yield name, est.labels_, est.core_sample_indices_
    X = np.asarray(X, dtype=np.float64)
    if len(X):
        lab, core = C._fit_generic(X, float(eps), ms, np, "propagate")
        yield "generic (CuPy's path)", lab, core


def assert_same(X, eps, ms):
    want, want_core = sk(X, eps, ms)
    for name, got, core in fits(X, eps, ms):
        np.testing.assert_array_equal(got, want, err_msg=f"{name}: eps={eps} ms={ms}")
        np.testing.assert_array_equal(core, want_core, err_msg=f"{name}: core, eps={eps} ms={ms}")


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


def _three_chains_around(centre, rng):
    """Three 3-D core chains whose end points are within eps=1 of `centre`, pointing away from it in
    different directions; the centre itself has 3 neighbours (< min_samples=5): a border point of all."""
    dirs = np.array([[1.0, 0.0, 0.1], [-0.5, 0.866, -0.1], [-0.5, -0.866, 0.15]])  # ~120 deg apart: ends > eps apart
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    gaps = np.array([0.95, 0.8, 0.88])  # the nearest chain is not the first one; gap + 0.3 > eps
    chains = [centre + d * (g + 0.3 * np.arange(6))[:, None] + rng.normal(0, 1e-3, (6, 3)) for d, g in zip(dirs, gaps)]
    return chains


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3))))
def test_border_point_within_eps_of_several_clusters(perm):
    rng = np.random.default_rng(sum(perm))
    centre = np.array([5.0, 5.0, 5.0])
    chains = _three_chains_around(centre, rng)
    # Chain perm[0] gets the lowest indices -> cluster 0, and must claim the border point whatever its
    # distance; the border point's own index (first, middle, last) must not matter.
    ordered = [chains[k] for k in perm]
    for where in (0, 6, 18):
        pts = np.concatenate(ordered)
        X = np.insert(pts, where, centre, axis=0)
        want = sk(X, 1.0, 5)[0]
        assert want[where] == 0 and len(set(want.tolist())) == 3  # the case really is a 3-way tie
        assert_same(X, 1.0, 5)
    # Scrambled indices: the claimant is the cluster holding the smallest core index.
    X = np.concatenate([centre[None]] + chains)
    X = X[np.random.default_rng(7).permutation(len(X))]
    assert_same(X, 1.0, 5)


def test_ties_at_eps_follow_sklearn_summation_order():
    # Pairs whose squared distance rounds differently with another summation order: sklearn (KD-tree
    # rdist) sums ((0 + dx0^2) + dx1^2) + dx2^2 and compares with eps*eps. eps is picked so one order
    # lands exactly on eps^2 and the other does not; far-away filler points keep sklearn on its tree.
    rng = np.random.default_rng(11)
    cases = 0
    for _ in range(20000):
        dx = rng.uniform(0.1, 1.0, 3)
        sq = dx * dx
        seq, alt = (sq[0] + sq[1]) + sq[2], sq[0] + (sq[1] + sq[2])
        if seq == alt:
            continue
        for r2 in (seq, alt):  # inside by our order / outside by our order (or the reverse)
            eps = math.sqrt(r2)
            if eps * eps != r2:
                continue
            fill = 100.0 + 10.0 * np.arange(14)[:, None] * np.ones((1, 3))
            X = np.concatenate([[np.zeros(3), dx], fill])
            assert_same(X, eps, 2)
            cases += 1
        if cases >= 6:
            break
    assert cases >= 6


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
    X = np.random.default_rng(1).normal(0, 2, size=(400, 3))
    want = sk(X, 1.5, 4)[0]
    for cfg in ({"_BLOCK": 97}, {"_BLOCK": 97, "_SMALL_MAX_CANDIDATES": -1}):  # many blocks, both numpy paths
        with settings(**cfg):
            np.testing.assert_array_equal(DBSCAN(1.5, 4).fit_predict(X), want)
    monkeypatch.setattr(C, "_MAX_PAIRS_PER_CHUNK", 97)  # generic path: many chunks
    np.testing.assert_array_equal(C._fit_generic(X, 1.5, 4, np, "auto")[0], want)
    s, t = neighbour_pairs(X, 1.5)
    d = np.linalg.norm(X[:, None] - X[None], axis=-1)
    brute = {(i, j) for i, j in zip(*np.nonzero(np.triu(d <= 1.5, 1)))}
    assert {(min(a, b), max(a, b)) for a, b in zip(s.tolist(), t.tolist())} == brute
    assert len(s) == len(brute)


@pytest.mark.parametrize("key_max", [1 << 16, 0], ids=["integer keys", "float keys"])
@pytest.mark.parametrize("seed", range(3))
def test_sweep_windows_hold_every_neighbour(key_max, seed):
    # Forward windows of each sorted point hold all its later neighbours; the backward windows
    # (large path, exact counts) hold all earlier ones.
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(0, 2, size=(150, 3)), rng.uniform(-8, 8, size=(50, 3)),
                        np.round(rng.uniform(0, 5, size=(40, 3)))])  # integer points: distances exactly eps
    eps = 1.0 + seed
    with settings(_KEY_MAX=key_max):
        sw = C._sweep(X, eps)
    assert sw.integer_keys == (key_max > 0)
    Xs = sw.Xs.T
    d2 = ((Xs[:, None, :] - Xs[None, :, :]) ** 2).sum(-1)
    n = len(X)
    prev_lo, prev_hi, own_lo = sw.back(np.arange(n))
    for i in range(n):
        fwd = set(range(i + 1, sw.hi_a[i])) | set(range(sw.lo_b[i], sw.hi_b[i]))
        back = set(range(own_lo[i], i)) | set(range(prev_lo[i], prev_hi[i]))
        nbrs = set(np.nonzero(d2[i] <= eps * eps)[0].tolist()) - {i}
        assert {j for j in nbrs if j > i} <= fwd
        assert {j for j in nbrs if j < i} <= back
        assert not (fwd & back)


def test_components_propagation_matches_scipy():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(5)
    n = 300
    src = rng.integers(0, n, 260)
    dst = rng.integers(0, n, 260)
    ref = connected_components(coo_matrix((np.ones(260), (src, dst)), shape=(n, n)), directed=False)[1]
    for lab in (connected_components_min_label(n, src, dst, np), C._propagate_numpy(n, src, dst)):
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
    # A stray box next to a vertebra's chain joins it (the AP axis is down-weighted, so the
    # neighbourhood is ~23 mm deep): tolerated while the centre stays within 4 mm (above).
    assert (det.vertebra[kept] < 0).sum() <= 2


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


def _subset(b: BoxSet, m: np.ndarray) -> BoxSet:
    return BoxSet(b.slice_index[m], b.center_rc[m], b.size_hw[m], b.score[m], b.spacing)


def _plus(b: BoxSet, k: np.ndarray, j: float, s: np.ndarray, hw=(20.0, 30.0)) -> BoxSet:
    n = len(k)
    return BoxSet(np.concatenate([b.slice_index, s]), np.concatenate([b.center_rc, np.stack([k, np.full(n, j)], 1)]),
                  np.concatenate([b.size_hw, np.tile([hw], (n, 1))]), np.concatenate([b.score, np.full(n, 0.9)]),
                  b.spacing)


def test_a_vertebra_seen_only_on_its_sides_is_kept_a_stray_beside_a_kept_one_is_not():
    # The detector misses the middle vertebra on its midline slices (the real tptbox crop's L3): its
    # two sides are two stage-1 clusters, each under 0.2 x the largest count, together above it.
    det = synth_detections(5, seed=2, n_false=0, miss_rate=0.0, wrong_size_rate=0.0, first_level=19)
    b, v, true = det.boxes, det.vertebra, det.centers_mm
    mid = np.abs(b.slice_index - true[2, 2]) < 17  # ~12 boxes left on each side
    sides = _subset(b, ~((v == 2) & mid))
    own = sides.slice_index[v[~((v == 2) & mid)] == 2]
    side_counts = np.array([(own < true[2, 2]).sum(), (own > true[2, 2]).sum()])
    biggest = max(c.count for c in cluster_boxes(sides))
    assert side_counts.max() < 0.2 * biggest <= side_counts.sum()  # the case the rule is for
    assert len(cluster_boxes(sides, ClusterParams(pieces_k_mm=0.0))) == 4  # the paper's rule alone drops it
    kept = cluster_boxes(sides)
    assert len(kept) == 6  # both sides, as two candidates: the pipeline joins them (chain.join_halves)
    near = [c for c in kept if abs(c.center_mm[0] - true[2, 0]) < 5.0]
    assert len(near) == 2 and all(abs(c.center_mm[2] - true[2, 2]) > 10 for c in near)  # its two sides
    # Two small clusters 3 mm below a kept vertebra's centre, 40 mm to each side of it (a rib head's
    # boxes): together over the floor, but beside a vertebra that passed alone, so they stay dropped.
    k0, i0 = true[0, 0] + 3.0, true[0, 2]
    ks = np.full(7, k0) + 0.3 * np.arange(7)
    stray = _plus(_plus(b, ks, true[0, 1], np.arange(7) + i0 - 50), ks, true[0, 1], np.arange(7) + i0 + 44)
    assert len(cluster_boxes(stray)) == 5
    assert len(cluster_boxes(stray, ClusterParams(min_fraction=0.0))) == 7


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


@pytest.mark.parametrize("seed", range(6))
def test_batched_two_stage_equals_per_cluster_sklearn(seed):
    # Stage 2 runs once over all clusters (shifted apart); the paper runs it per cluster. Same boxes
    # kept, same candidate numbers, on realistic sets with many wrong sizes and false positives.
    det = synth_detections(6 + 3 * seed, seed=seed, n_false=30, wrong_size_rate=0.15, boxes_per_slice=1.5)
    c, s = det.boxes.centers_mm(), det.boxes.sizes_mm()
    ours = assign_boxes(c, s)
    assert np.array_equal(ours, assign_boxes_sklearn(c, s))
    assert (ours >= 0).any()


def test_two_stage_tie_all_noise_and_fraction_rule_match_the_paper_way():
    p = ClusterParams(eps_mm=3.0, min_samples=3, size_eps_mm=1.0, size_min_samples=2, ap_weight=1.0,
                      min_fraction=0.2)
    line = lambda k0, m: np.stack([k0 + 0.5 * np.arange(m), np.zeros(m), np.zeros(m)], 1)  # noqa: E731
    # Cluster A: two size sub-clusters of 4 boxes each (a tie: the first found wins).
    # Cluster B: every size isolated (all stage-2 noise: all boxes kept).
    # Cluster C: 3 boxes, under 0.2 x the largest kept count (B's 20).
    c = np.concatenate([line(0.0, 20), line(100.0, 20), line(200.0, 3)])
    s = np.concatenate([np.repeat([[10.0, 10.0], [20.0, 20.0], [40.0, 40.0], [60.0, 60.0]], [6, 6, 4, 4], axis=0),
                        np.stack([10.0 * np.arange(20), np.zeros(20)], 1), np.full((3, 2), 5.0)])
    ours = assign_boxes(c, s, p)
    ref = assign_boxes_sklearn(c, s, p)
    assert np.array_equal(ours, ref)
    assert (ours[:6] == 0).all() and (ours[6:20] == -1).all()  # first of the tied sub-clusters
    assert (ours[20:40] == 1).all() and (ours[40:] == -1).all()
    r = bench_two_stage(c, s, repeats=2, params=p)
    assert r["identical"] is True and r["sklearn_calls"] == 4 and r["candidates"] == 2


def test_micro_bench_reports_identical():
    r = bench_one(300, repeats=2)
    assert r["identical"] is True and r["n"] == 300
    assert set(r) >= {"n", "ours_ms", "sklearn_ms", "speedup_vs_sklearn", "identical"}

"""Vectorised DBSCAN with scikit-learn's exact semantics (the hot path of the cascade's box clustering).

``DBSCAN`` reproduces ``sklearn.cluster.DBSCAN(eps, min_samples, metric="euclidean")`` exactly:
same neighbourhoods (``||a - b||^2 <= eps^2``, the point itself included), same core points
(``count >= min_samples``), same partition, same noise, and the same label numbering. sklearn grows
clusters in index order: the cluster of the lowest-index unlabelled core point is expanded completely
(depth-first, `_dbscan_inner.pyx`) before the next one starts. Hence

* cluster numbers follow the smallest core-point index of each core component, and
* a border point next to cores of several clusters ends in the lowest-numbered of them (the first
  expansion that reaches it claims it; later ones skip labelled points).

Both rules are order statistics, so they vectorise: neighbour pairs from a sort-and-sweep (points
sorted by (cell along the widest axis, a second axis); a point's candidates are two contiguous windows
of that order, then the exact distance test), core mask from pair counts, connected components of
the core-core graph, and a scatter-min for the border points.

Two implementations share that plan:

* numpy (``_fit_numpy``), tuned for the CPU: small sets take one exact pass over all candidates;
  large sets first settle most core points from their nearest sort positions (``_band``), contract
  runs of consecutive adjacent core points (each is connected) and only test the candidates that
  leave a run. Work goes in blocks of ``_BLOCK`` candidates so temporaries stay small.
* array-module generic (``_fit_generic``, numpy or CuPy, ``engine.xp.get_xp``): all pairs at once;
  components from ``scipy.sparse.csgraph`` on numpy, elsewhere from a min-label propagation with
  pointer jumping written in array ops (tested equal to scipy's on the CPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

import numpy as np

from engine.xp import get_xp, is_numpy, to_numpy

NOISE = -1

# Upper bound on candidate pairs handled at once (memory: ~10 arrays of this many float64/int64).
_MAX_PAIRS_PER_CHUNK = 4_000_000


# ----------------------------------------------------------------------------------------- helpers

def _scatter_min(xp: ModuleType, target, index, values) -> None:
    """In place: target[index[n]] = min(target[index[n]], values[n]), repeated indices allowed."""
    if is_numpy(xp):
        np.minimum.at(target, index, values)
    else:  # CuPy: atomicMin-based scatter
        import cupyx

        cupyx.scatter_min(target, index, values)


def _neighbour_pairs_sorted(X, eps: float, xp: ModuleType):
    """Neighbour pairs of the rows of X, in a sorted index space.

    Returns ``(order, src, dst)``: ``order`` sorts the points, and (src, dst) are positions in that
    order (so the points are ``order[src]``, ``order[dst]``) of every unordered pair with
    ``sum((X[i] - X[j])**2) <= eps**2``, each pair once, ``src`` non-decreasing (a CSR row order).

    Candidates come from a strip grid: the axis of widest spread (a) is cut into cells one eps wide,
    and inside a cell the points are sorted along another axis (b). A neighbour of a point lies in its
    own cell or the next one, within +-eps along b: two contiguous windows of the sort, found by
    ``searchsorted``. Windows are widened by a relative slack so they are a superset of the true
    neighbours despite rounding; the exact test (same summation order as sklearn's KD-tree ``rdist``,
    so ties agree) decides.
    """
    n, d = X.shape
    it = xp.int64  # numpy gathers convert any other index dtype to intp first: keep intp
    if n < 2:
        return xp.arange(n, dtype=it), xp.zeros(0, dtype=it), xp.zeros(0, dtype=it)
    mins = X.min(axis=0)
    spread = to_numpy(X.max(axis=0) - mins)
    a = int(np.argmax(spread))
    width = eps * (1.0 + 1e-6)
    cell = xp.floor((X[:, a] - mins[a]) / width)
    # Axis b: the one that best separates points inside a cell. Detection sets are chains across
    # sagittal slices, so pick the axis with the most distinct eps-cells among the remaining ones.
    b, best = None, -1
    for c in range(d):
        if c == a:
            continue
        occupied = int(xp.unique(cell * (2.0 + spread[c] / width) + xp.floor((X[:, c] - mins[c]) / width)).shape[0])
        if occupied > best:
            b, best = c, occupied
    xb = (X[:, b] - mins[b]) if b is not None else xp.zeros(n, dtype=X.dtype)
    span_b = float(spread[b]) if b is not None else 0.0
    stride = span_b + 4.0 * eps + 1.0  # cells never overlap in key space
    key = cell * stride + xb
    order = xp.argsort(key, kind="stable").astype(it)
    key = key[order]
    slack = eps * 1e-6 + 1e-9 * float(xp.abs(key[-1])) + 1e-300
    ar = xp.arange(n, dtype=it)
    # Window 1: own cell, later in the sort, b within +eps. Window 2: next cell, b within +-eps.
    # Interleaved per row, so the expanded pairs come out with src non-decreasing.
    lo = xp.stack([ar + 1, xp.searchsorted(key, key + (stride - eps - slack), side="left").astype(it)], 1)
    hi = xp.stack([xp.searchsorted(key, key + (eps + slack), side="right").astype(it),
                   xp.searchsorted(key, key + (stride + eps + slack), side="right").astype(it)], 1)
    lo, hi = lo.reshape(-1), hi.reshape(-1)
    cnt = xp.maximum(hi - lo, 0)
    rows = xp.repeat(ar, 2)
    Xs = X[order]
    cols = [xp.ascontiguousarray(Xs[:, c]) for c in range(d)]
    r2 = eps * eps
    # Chunk the windows so at most _MAX_PAIRS_PER_CHUNK candidates exist at once.
    cum = to_numpy(xp.cumsum(cnt))
    if cum[-1] == 0:
        z = xp.zeros(0, dtype=it)
        return order, z, z
    cuts = np.searchsorted(cum, np.arange(_MAX_PAIRS_PER_CHUNK, cum[-1], _MAX_PAIRS_PER_CHUNK))
    bounds = sorted(set([0, *cuts.tolist(), rows.shape[0]]))
    srcs, dsts = [], []
    for w0, w1 in zip(bounds[:-1], bounds[1:]):
        c = cnt[w0:w1]
        total = int(c.sum())
        if total == 0:
            continue
        start = xp.cumsum(c) - c
        if is_numpy(xp):  # repeat is a streaming write: cheaper than gathers
            src = np.repeat(rows[w0:w1], c)
            dst = np.arange(total, dtype=it) + np.repeat(lo[w0:w1] - start, c)
            d2 = None
            for col in cols:  # ((0 + dx0^2) + dx1^2) + ...: sklearn's rdist order, so ties agree
                t = np.repeat(col[rows[w0:w1]], c)
                t -= col[dst]
                t *= t
                d2 = t if d2 is None else d2.__iadd__(t)
        else:  # cupy.repeat needs host repeats: locate each pair's window on the running count
            w = xp.searchsorted(xp.cumsum(c), xp.arange(total, dtype=it), side="right").astype(it)
            src = rows[w0:w1][w]
            dst = xp.arange(total, dtype=it) + (lo[w0:w1] - start)[w]
            d2 = None
            for col in cols:
                t = col[src] - col[dst]
                d2 = t * t if d2 is None else d2 + t * t
        keep = d2 <= r2
        srcs.append(src[keep])
        dsts.append(dst[keep])
    if not srcs:
        z = xp.zeros(0, dtype=it)
        return order, z, z
    src = xp.concatenate(srcs) if len(srcs) > 1 else srcs[0]
    dst = xp.concatenate(dsts) if len(dsts) > 1 else dsts[0]
    return order, src, dst


def neighbour_pairs(X, eps: float, xp: ModuleType | None = None):
    """Every unordered pair (i, j) of rows of X within euclidean distance eps (<=), as index arrays."""
    xp = xp or get_xp(X)
    X = xp.asarray(X, dtype=xp.float64)
    order, s, t = _neighbour_pairs_sorted(X, float(eps), xp)
    return order[s], order[t]


def connected_components_min_label(n: int, src, dst, xp: ModuleType):
    """Component label of every node = smallest node index in its component (array ops only).

    Min-label propagation with root hooking and pointer jumping (a Shiloach-Vishkin variant):
    invariant ``lab[v] <= v`` and ``lab[v]`` in v's component; at the fixed point every edge joins
    equal labels, so each component carries its minimum index. O(log n) rounds in practice.
    """
    lab = xp.arange(n, dtype=xp.int64)
    if src.shape[0] == 0:
        return lab
    while True:
        ls, ld = lab[src], lab[dst]
        m = xp.minimum(ls, ld)
        new = lab.copy()
        _scatter_min(xp, new, ls, m)  # hook the roots, not just the endpoints: halves the rounds
        _scatter_min(xp, new, ld, m)
        _scatter_min(xp, new, src, m)
        _scatter_min(xp, new, dst, m)
        while True:  # pointer jumping
            nn = new[new]
            if not bool(xp.any(nn != new)):
                break
            new = nn
        if not bool(xp.any(new != lab)):
            return lab
        lab = new


def _components(n: int, src, dst, xp: ModuleType, method: str):
    """Component id per node, for the undirected graph (src, dst); ``src`` must be non-decreasing."""
    if method == "auto":
        method = "scipy" if is_numpy(xp) else "propagate"
    if method == "scipy":
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import connected_components

        src, dst = to_numpy(src), to_numpy(dst)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
        g = csr_matrix((np.ones(src.shape[0]), dst, indptr), shape=(n, n))  # float64: no conversion
        return xp.asarray(connected_components(g, directed=True, connection="weak")[1])
    if method == "propagate":
        return connected_components_min_label(n, src, dst, xp)
    raise ValueError(f"unknown components method {method!r}")


# ------------------------------------------------------------------------------ generic DBSCAN path

def _fit_generic(X, eps: float, min_samples: int, xp: ModuleType, components: str):
    """Labels and core indices of non-empty, finite X (n, d) with any array module (numpy or CuPy)."""
    n = X.shape[0]
    # Work in the sweep's sorted index space (CSR-ordered pairs), map back at the end.
    order, src, dst = _neighbour_pairs_sorted(X, eps, xp)
    counts = xp.bincount(src, minlength=n) + xp.bincount(dst, minlength=n) + 1  # +1: itself
    core = counts >= int(min_samples)
    lab_s = xp.full(n, NOISE, dtype=xp.int64)
    if not bool(xp.any(core)):
        return lab_s, xp.zeros(0, dtype=xp.int64)
    both = core[src] & core[dst]
    comp = _components(n, src[both], dst[both], xp, components)
    # sklearn's numbering: rank of each core component by its smallest ORIGINAL core index.
    core_pos = xp.nonzero(core)[0]
    big = xp.iinfo(xp.int64).max
    first = xp.full(n, big, dtype=xp.int64)
    _scatter_min(xp, first, comp[core_pos], order[core_pos])
    root = first[comp[core_pos]]
    lab_s[core_pos] = xp.searchsorted(xp.unique(root), root).astype(xp.int64)
    # Border points: the lowest-numbered adjacent cluster claims them (first expansion wins).
    one = core[src] ^ core[dst]
    if bool(xp.any(one)):
        s, t = src[one], dst[one]
        cs = core[s]
        border = xp.where(cs, t, s)
        owner = xp.where(cs, s, t)
        best = xp.full(n, big, dtype=xp.int64)
        _scatter_min(xp, best, border, lab_s[owner])
        hit = best != big
        lab_s[hit] = best[hit]
    labels = xp.empty(n, dtype=xp.int64)
    labels[order] = lab_s
    return labels, xp.sort(order[core_pos])


# -------------------------------------------------------------------------------- numpy DBSCAN path
#
# On the CPU the cost of the generic path is per candidate pair (~10 array passes each) plus page
# faults: with tens of thousands of pairs its temporaries are several MB, which glibc returns to the
# OS after every call and faults in again on the next (~2 us per 4 kB page, most of the time at
# n = 3000). This path evaluates far fewer candidates and keeps every temporary near ``_BLOCK``.
# At a few hundred points the cost is ~100 numpy calls, not arithmetic: ufunc methods and array
# methods (np.add.accumulate, .nonzero(), .argsort(), np.empty + fill) stand in for np.cumsum,
# np.flatnonzero, np.argsort and np.full, whose Python wrappers add ~1 us each (~10 % at 500 points).

# Candidates (or band entries) evaluated per vectorised block: temporaries stay ~200 kB.
_BLOCK = 1 << 13
# Up to this many forward candidates one exact pass over all of them is cheapest; above it the
# band + run contraction path evaluates only a fraction of them.
_SMALL_MAX_CANDIDATES = 1 << 13
# Large path: distances to the K = max(_BAND, min_samples - 1) nearest sort positions on each side are
# always computed. A point with >= min_samples - 1 neighbours among them is core without looking
# further (dense detection sets: ~97 % of the points).
_BAND = 4
# components="auto": array-op propagation up to this many run-graph edges (cheaper than scipy's
# fixed ~50 us there), scipy above.
_PROPAGATE_MAX_EDGES = 1 << 11


@dataclass
class _Sweep:
    """Points sorted by (cell along axis a, coordinate b) and every sorted point's windows.

    Sorted position i has candidate neighbours j > i in two contiguous windows of the order:
    A = [i + 1, hi_a[i]) (same a-cell, b up to +eps) and B = [lo_b[i], hi_b[i]) (next a-cell, b
    within +-eps). Windows are supersets (b binned, or widened by a rounding slack); the exact
    distance test decides.
    """

    order: np.ndarray  # (n,) sorted position -> original index
    Xs: np.ndarray  # (d, n) coordinates in sorted order
    hi_a: np.ndarray
    lo_b: np.ndarray
    hi_b: np.ndarray
    # rows -> (lo_prev, hi_prev, lo_own): the windows before each row, in the previous cell
    # [lo_prev, hi_prev) and in its own cell [lo_own, row) (exact counts need both directions).
    back: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
    integer_keys: bool  # which sweep built it (see _BINS)


# Integer-key sweep: b is binned (_BINS bins per eps) and (a-cell, b-bin) packed into a key below
# 2**16, so the order comes from a radix sort (np.argsort kind="stable" on uint16) and every window
# bound from one prefix-count table lookup. A comparison sort and binary searches of float keys cost
# ~5x more here (their branches are unpredictable). Wider key ranges use the float-key sweep.
_BINS = 4
_KEY_MAX = 1 << 16


def _inner_axis(Z: np.ndarray, a: int) -> int:
    """Sort axis inside an a-cell: the one with the largest variance left after a linear fit on axis a
    (a cheap stand-in for the within-cell spread: a +-eps window along it then holds the fewest
    points). Detection sets are chains across sagittal slices: the slice axis wins over one that only
    drifts along the spine. ``Z``: (d, n) coordinates (any shift). The choice only affects speed."""
    d, n = Z.shape
    others = [c for c in range(d) if c != a]
    if len(others) <= 1:
        return others[0] if others else a
    # One pass for all second moments (a bincount per axis cost ~5x more at a few hundred points).
    s = np.add.reduce(Z, axis=1).tolist()
    S = (Z @ Z.T).tolist()
    va = S[a][a] - s[a] * s[a] / n
    b, best = others[0], -1.0
    for c in others:
        cac = S[a][c] - s[a] * s[c] / n
        resid = S[c][c] - s[c] * s[c] / n - (cac * cac / va if va > 0.0 else 0.0)
        if resid > best:
            b, best = c, resid
    return b


def _sweep(X: np.ndarray, eps: float) -> _Sweep:
    n, d = X.shape
    Xt = np.ascontiguousarray(X.T)
    lo = Xt.min(axis=1)
    spread = (Xt.max(axis=1) - lo).tolist()
    if not math.isfinite(sum(spread)):  # min/max propagate NaN; inf gives inf or nan
        raise ValueError("X contains NaN or infinite values")
    a = max(range(d), key=spread.__getitem__)
    width = eps * (1.0 + 1e-6)  # > eps: a neighbour is at most one cell away, despite rounding
    Z = Xt - lo[:, None]  # every coordinate from 0; one pass serves the cells, the axis choice and the bins
    cell = Z[a] / width
    np.floor(cell, out=cell)
    b = _inner_axis(Z, a)
    Q = _BINS
    delta = width / Q  # neighbours are at most Q bins apart along b
    nb = int(spread[b] / delta) + 2 * Q + 3  # bins per cell, margins included: windows stay in their cell
    size = (int(spread[a] / width) + 4) * nb  # one spare cell before and after
    if size <= min(_KEY_MAX, 16 * n + 4096):  # the table must stay cheap next to n
        y = Z[b] / delta
        np.floor(y, out=y)
        cell *= nb
        y += cell
        y += (Q + 1) + nb  # key = (cell + 1) * nb + bin + Q + 1: every lookup below stays in [0, size]
        key = y.astype(np.uint16)
        order = key.argsort(kind="stable")  # radix sort
        table = np.zeros(size + 1, dtype=np.intp)  # table[v]: number of keys < v
        np.add.accumulate(np.bincount(key, minlength=size), out=table[1:])
        ks = key[order].astype(np.intp)
        w = table[ks + np.array([[Q + 1], [nb - Q], [nb + Q + 1]])]

        def back(rows):
            k = ks[rows]
            t = table[k + np.array([[-nb - Q], [-nb + Q + 1], [-Q]])]
            return t[0], t[1], t[2]

        return _Sweep(order, Xt.take(order, axis=1), w[0], w[1], w[2], back, True)
    # Float keys: sorted by b inside a cell; windows by binary search, widened by a rounding slack.
    stride = spread[b] + 4.0 * eps + 1.0  # cells never overlap in key space
    key = cell * stride
    key += Xt[b]
    order = key.argsort()
    ks = key[order]
    slack = eps * 1e-6 + 1e-9 * max(abs(float(ks[0])), abs(float(ks[-1]))) + 1e-300
    w = np.searchsorted(ks, (ks + np.array([[eps + slack], [stride - eps - slack], [stride + eps + slack]])).ravel(),
                        side="right")

    def back(rows):
        k = ks[rows]
        m = k.shape[0]
        lo_ = np.searchsorted(ks, (k + np.array([[-stride - eps - slack], [-eps - slack]])).ravel(), side="left")
        hi_ = np.searchsorted(ks, k + (-stride + eps + slack), side="right")
        return lo_[:m], hi_, lo_[m:]

    return _Sweep(order, Xt.take(order, axis=1), w[:n], w[n:2 * n], w[2 * n:], back, False)


def _window_pairs(Xs: np.ndarray, rows, windows, r2: float):
    """Neighbour pairs (p, q) among candidate windows of sorted positions.

    ``rows``: (m,) positions, or None for all of them; ``windows``: [(lo, cnt), ...], each (m,) with
    cnt >= 0: row k's candidates are ``lo[k] .. lo[k] + cnt[k] - 1`` of every window in turn. Exact
    test ``sum((x_p - x_q)**2) <= r2``, summed over coordinates in order (sklearn's rdist order, so
    ties agree). Pairs come out grouped by row (ascending), in window order within a row.
    """
    nw = len(windows)
    m = windows[0][0].shape[0]
    lo = np.empty((m, nw), dtype=np.intp)
    cnt = np.empty((m, nw), dtype=np.intp)
    for w, (lo_w, cnt_w) in enumerate(windows):
        lo[:, w] = lo_w
        cnt[:, w] = cnt_w
    per_row = cnt[:, 0].copy()
    for w in range(1, nw):
        per_row += cnt[:, w]
    cum = np.add.accumulate(per_row)
    total = int(cum[-1]) if m else 0
    if total == 0:
        z = np.zeros(0, dtype=np.intp)
        return z, z
    cnt = cnt.ravel()
    off = lo.ravel()  # candidate k (numbered over all windows) of window v is off[v] + k
    off -= np.add.accumulate(cnt)
    off += cnt
    if total <= _BLOCK:
        blocks = [(0, m)]
    else:
        cuts = np.searchsorted(cum, np.arange(_BLOCK, total, _BLOCK), side="right").tolist()
        edges = sorted({0, *cuts, m})
        blocks = list(zip(edges[:-1], edges[1:]))
    ps, qs = [], []
    for r0, r1 in blocks:
        g0 = int(cum[r0 - 1]) if r0 else 0
        g1 = int(cum[r1 - 1])
        if g1 == g0:
            continue
        q = np.repeat(off[r0 * nw:r1 * nw], cnt[r0 * nw:r1 * nw])
        q += np.arange(g0, g1)
        k = per_row[r0:r1]
        rr = np.arange(r0, r1) if rows is None else rows[r0:r1]
        D = np.repeat(Xs[:, r0:r1] if rows is None else Xs[:, rr], k, axis=1)
        D -= Xs.take(q, axis=1)
        D *= D
        keep = np.add.reduce(D, axis=0) <= r2  # ((d0^2 + d1^2) + d2^2): row order, as sklearn
        ps.append(np.repeat(rr, k)[keep])
        qs.append(q[keep])
    if len(ps) == 1:
        return ps[0], qs[0]
    return np.concatenate(ps), np.concatenate(qs)


def _band(Xs: np.ndarray, r2: float, K: int):
    """Neighbour counts among the K nearest sort positions on each side, and adj[i]: (i, i+1) are
    neighbours. Shifted views, no index arrays: (K, d, block) differences per block."""
    d, n = Xs.shape
    K = min(K, n - 1)
    if K <= 0:
        return np.zeros(n, dtype=np.intp), np.zeros(n, dtype=bool)
    P = np.full((d, n + K), np.inf)  # padding: inf - x = inf, never a neighbour
    P[:, :n] = Xs
    M = np.empty((K, n), dtype=bool)  # M[k - 1, i]: (i, i + k) are neighbours
    step = max(1, _BLOCK // K)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        V = np.lib.stride_tricks.as_strided(P[:, i0 + 1:], shape=(K, d, i1 - i0),
                                            strides=(P.strides[1], P.strides[0], P.strides[1]), writeable=False)
        D = V - Xs[:, i0:i1]
        D *= D
        np.less_equal(np.add.reduce(D, axis=1), r2, out=M[:, i0:i1])
    counts = M.sum(axis=0)
    for k in range(1, K + 1):  # the same pairs seen from the far end
        counts[k:] += M[k - 1, :n - k]
    return counts, M[0]


def _runs(link: np.ndarray):
    """Runs: maximal stretches of sorted positions where each consecutive pair is two adjacent core
    points (``link[i]``: i and i + 1 are; ``link[-1]`` is ignored), i.e. one connected piece. Returns
    (run id per position, exclusive end of its run, count)."""
    cut = (~link).astype(np.intp)  # an intp copy: accumulating bools into intp casts per element (slower)
    cut[-1] = 1
    end = cut.nonzero()[0]
    end += 1
    rid = np.empty_like(cut)
    rid[0] = 0
    np.add.accumulate(cut[:-1], out=rid[1:])
    return rid, end[rid], end.shape[0]


def _propagate_numpy(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``connected_components_min_label`` for numpy, in fewer passes: while an edge joins two labels,
    hook both roots onto the smaller label and jump pointers to the fixed point (same invariant:
    ``lab[v] <= v`` and in v's component; when every edge is settled each component carries its
    minimum)."""
    lab = np.arange(n)
    ls, lt = src, dst
    # Checks use count_nonzero (a C function) rather than ndarray.all(), whose Python wrapper costs
    # as much as the comparison at this size.
    while np.count_nonzero(ls != lt):
        m = np.minimum(ls, lt)
        np.minimum.at(lab, ls, m)
        np.minimum.at(lab, lt, m)
        while True:
            nxt = lab[lab]
            if not np.count_nonzero(nxt != lab):
                break
            lab = nxt
        ls, lt = lab[src], lab[dst]
    return lab


def _run_components(nruns: int, es: np.ndarray, et: np.ndarray, method: str):
    """Component id per run for edges (es, et), es non-decreasing; and an upper bound on the ids."""
    if method == "auto":
        method = "propagate" if es.shape[0] <= _PROPAGATE_MAX_EDGES else "scipy"
    if method == "propagate":
        return _propagate_numpy(nruns, es, et), nruns
    if method != "scipy":
        raise ValueError(f"unknown components method {method!r}")
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    it = np.int32 if nruns < 2**31 - 1 and es.shape[0] < 2**31 - 1 else np.int64  # scipy's native index
    indptr = np.searchsorted(es, np.arange(nruns + 1)).astype(it)
    g = csr_matrix((np.ones(es.shape[0]), et.astype(it), indptr), shape=(nruns, nruns))
    k, comp = connected_components(g, directed=True, connection="weak")
    return comp, k


def _fit_numpy(X: np.ndarray, eps: float, min_samples: int, components: str):
    """Labels and core indices of non-empty X (n, d) on the CPU (see the module docstring)."""
    n = X.shape[0]
    sw = _sweep(X, eps)
    r2 = eps * eps
    need = int(min_samples) - 1  # neighbours besides the point itself
    ar = np.arange(n)
    cnt_a = sw.hi_a - ar
    cnt_a -= 1
    cnt_b = sw.hi_b - sw.lo_b
    if int(cnt_a.sum()) + int(cnt_b.sum()) <= _SMALL_MAX_CANDIDATES:
        # One exact pass over every forward candidate: all pairs (p < q).
        p, q = _window_pairs(sw.Xs, None, [(ar + 1, cnt_a), (sw.lo_b, cnt_b)], r2)
        counts = np.bincount(p, minlength=n)
        counts += np.bincount(q, minlength=n)
        core = counts >= need
        if not np.count_nonzero(core):
            return np.full(n, NOISE, dtype=np.int64), np.zeros(0, dtype=np.int64)
        cp, cq = core[p], core[q]
        e = cp & cq
        link = np.zeros(n, dtype=bool)
        link[p[e & (q == p + 1)]] = True
        rid, run_end, nruns = _runs(link)
        e &= q >= run_end[p]  # inside a run: already connected
        es, et = rid[p[e]], rid[q[e]]
        one = cp ^ cq
        border = np.where(cp, q, p)[one]
        owner = (p + q)[one] - border
    else:
        # Sure cores from the band; exact counts (both directions) only for the rest, U.
        counts, adj = _band(sw.Xs, r2, min(max(_BAND, need), 128))  # K >= need: a dense point can pass
        core = np.ones(n, dtype=bool)
        U = (counts < need).nonzero()[0]
        border = owner = None
        if U.shape[0]:
            prev, hi_prev, before = sw.back(U)  # previous cell; own cell, before U
            up, uq = _window_pairs(sw.Xs, U, [(prev, hi_prev - prev), (before, U - before), (U + 1, sw.hi_a[U] - U - 1),
                                              (sw.lo_b[U], sw.hi_b[U] - sw.lo_b[U])], r2)
            core[U] = np.bincount(up, minlength=n)[U] >= need
            sel = core[uq]
            sel &= ~core[up]
            border, owner = up[sel], uq[sel]
        if not np.count_nonzero(core):
            return np.full(n, NOISE, dtype=np.int64), np.zeros(0, dtype=np.int64)
        adj &= core
        adj[:-1] &= core[1:]
        rid, run_end, nruns = _runs(adj)
        # Core-core edges between runs: for a core point, the candidates past the end of its run
        # (a suffix of each window: positions grow along windows).
        C = core.nonzero()[0]
        re = run_end[C]
        lo_a, lo_b = np.maximum(C + 1, re), np.maximum(sw.lo_b[C], re)
        ca, cb = sw.hi_a[C] - lo_a, sw.hi_b[C] - lo_b
        np.maximum(ca, 0, out=ca)
        np.maximum(cb, 0, out=cb)
        p, q = _window_pairs(sw.Xs, C, [(lo_a, ca), (lo_b, cb)], r2)
        e = core[q]
        es, et = rid[p[e]], rid[q[e]]
    comp, ncomp = _run_components(nruns, es, et, components)
    # sklearn's numbering: clusters ranked by their smallest ORIGINAL core index.
    C = core.nonzero()[0]
    cc = comp[rid[C]]
    first = np.empty(ncomp, dtype=np.intp)
    first.fill(n)
    np.minimum.at(first, cc, sw.order[C])
    root = first[cc]
    rank = np.zeros(n, dtype=np.intp)
    rank[root] = 1
    np.add.accumulate(rank, out=rank)
    rank -= 1
    lab = np.empty(n, dtype=np.int64)
    lab.fill(NOISE)
    lab[C] = rank[root]
    # Border points: the lowest-numbered adjacent cluster claims them (first expansion wins).
    if border is not None and border.shape[0]:
        best = np.empty(n, dtype=np.int64)
        best.fill(n)
        np.minimum.at(best, border, lab[owner])
        hit = best < n
        lab[hit] = best[hit]
    labels = np.empty(n, dtype=np.int64)
    labels[sw.order] = lab
    core_o = np.zeros(n, dtype=bool)
    core_o[sw.order] = core
    return labels, core_o.nonzero()[0]


# ------------------------------------------------------------------------------------------ DBSCAN

@dataclass
class DBSCAN:
    """DBSCAN with scikit-learn's semantics (euclidean metric), vectorised for numpy and CuPy.

    ``fit_predict(X)`` returns int64 labels (noise = -1) numbered exactly as sklearn numbers them.
    After fitting, ``labels_`` and ``core_sample_indices_`` are set like sklearn's attributes.
    ``components``: "auto" (numpy: array-op propagation on small graphs, scipy on large ones; CuPy:
    propagation), "scipy" or "propagate".
    """

    eps: float = 0.5
    min_samples: int = 5
    components: str = "auto"
    labels_: Any = field(default=None, init=False, repr=False)
    core_sample_indices_: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not (float(self.eps) > 0.0 and np.isfinite(self.eps)):
            raise ValueError(f"eps must be a positive finite number, got {self.eps!r}")
        if int(self.min_samples) < 1 or int(self.min_samples) != self.min_samples:
            raise ValueError(f"min_samples must be an integer >= 1, got {self.min_samples!r}")
        if self.components not in ("auto", "scipy", "propagate"):
            raise ValueError(f"unknown components method {self.components!r}")

    def fit(self, X, xp: ModuleType | None = None) -> "DBSCAN":
        xp = xp or get_xp(X)
        X = xp.asarray(X, dtype=xp.float64)
        if X.ndim == 1:
            raise ValueError("X must be 2-D (n_samples, n_features); reshape a single feature to (-1, 1)")
        if X.ndim != 2 or X.shape[1] == 0:
            raise ValueError(f"X must be 2-D (n_samples, n_features >= 1), got shape {X.shape}")
        if X.shape[0] == 0:
            self.labels_ = xp.zeros(0, dtype=xp.int64)
            self.core_sample_indices_ = xp.zeros(0, dtype=xp.int64)
            return self
        if is_numpy(xp):
            self.labels_, self.core_sample_indices_ = _fit_numpy(X, float(self.eps), int(self.min_samples),
                                                                 self.components)
        else:
            if not bool(xp.all(xp.isfinite(X))):
                raise ValueError("X contains NaN or infinite values")
            self.labels_, self.core_sample_indices_ = _fit_generic(X, float(self.eps), int(self.min_samples),
                                                                   xp, self.components)
        return self

    def fit_predict(self, X, xp: ModuleType | None = None):
        return self.fit(X, xp=xp).labels_


def dbscan(X, eps: float, min_samples: int, xp: ModuleType | None = None):
    """Functional form: labels of ``DBSCAN(eps, min_samples).fit_predict(X)``."""
    return DBSCAN(eps=eps, min_samples=min_samples).fit_predict(X, xp=xp)

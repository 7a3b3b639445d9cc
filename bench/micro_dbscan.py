"""Micro-benchmark: engine.dbscan.DBSCAN vs scikit-learn on cascade-sized detection sets.

Run: ``python -m bench.micro_dbscan [--sizes 500 1000 3000] [--repeats 20] [--json]``.
``run(sizes, repeats)`` returns one dict per size:
``{"n", "ours_ms", "sklearn_ms", "speedup_vs_sklearn", "identical", "clusters", "device"}``
(median wall time per fit_predict; "identical": same labels as sklearn, numbering included);
``bench_points`` does the same on given points (`spinert bench` also times the cascade's own box sets).

The detection sets are synthetic but shaped like the detector's output: one box per sagittal slice
per vertebra (a chain across the vertebra's width, centres drifting by ~1-2 mm per slice), box sizes
varying smoothly, missed slices, duplicate boxes, boxes with wrong sizes, and uniform false positives.
``synth_detections`` is also used by the tests.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import dataclass

import numpy as np

from bench.runner import time_ms
from engine.cluster import BoxSet, ClusterParams, assign_boxes, fraction_keep, stage1_points
from engine.dbscan import DBSCAN

# Typical centre-to-centre distances (mm) going down the spine, used only to place synthetic vertebrae.
_SPACING_MM = [16.0] * 7 + [20.0] * 4 + [23.0] * 4 + [26.0] * 4 + [33.0] * 5 + [38.0]


@dataclass
class SynthDetections:
    boxes: BoxSet
    vertebra: np.ndarray  # (N,) true vertebra index per box, -1 for false positives
    wrong_size: np.ndarray  # (N,) bool: box of a true vertebra with an outlier size
    centers_mm: np.ndarray  # (V, 3) true vertebra centres (k, j, i) mm


def synth_detections(n_vertebrae: int = 17, seed: int = 0, slices_per_vertebra: int = 40,
                     boxes_per_slice: float = 1.0, miss_rate: float = 0.1, wrong_size_rate: float = 0.05,
                     n_false: int = 15, spacing: float = 1.0, first_level: int = 7) -> SynthDetections:
    """Boxes of ``n_vertebrae`` vertebrae (levels from ``first_level`` on) across their sagittal slices.

    ``boxes_per_slice`` > 1 adds near-duplicate boxes (as before NMS or from overlapping slices).
    Coordinates in pixels of a canonical iso volume with ``spacing`` mm voxels.
    """
    rng = np.random.default_rng(seed)
    levels = np.arange(first_level, first_level + n_vertebrae) % len(_SPACING_MM)
    gaps = np.asarray(_SPACING_MM)[levels] * rng.uniform(0.9, 1.1)
    k = 40.0 + np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    # A gently curved spine: j (anterior-posterior) and i (left-right) drift with k.
    j = 120.0 + 25.0 * np.sin(k / 180.0) + rng.normal(0, 1, n_vertebrae)
    i = 100.0 + 6.0 * np.sin(k / 90.0)
    height = gaps * 0.8
    depth = 35.0 + gaps * 0.6
    width = np.clip(slices_per_vertebra * gaps / 28.0, 12, 70)
    rows = []
    for v in range(n_vertebrae):
        s0, s1 = int(round(i[v] - width[v] / 2)), int(round(i[v] + width[v] / 2))
        for s in range(s0, s1 + 1):
            u = (s - i[v]) / (width[v] / 2)  # -1 .. 1 across the vertebra
            nb = rng.poisson(boxes_per_slice - 1) + 1 if boxes_per_slice > 1 else 1
            for _ in range(nb):
                if rng.random() < miss_rate:
                    continue
                ck = k[v] + 1.5 * u * u + rng.normal(0, 0.7)
                cj = j[v] + 4.0 * u * u + rng.normal(0, 0.7)
                h = height[v] * (1 - 0.25 * u * u) + rng.normal(0, 0.5)
                w = depth[v] * (1 - 0.3 * u * u) + rng.normal(0, 0.5)
                bad = rng.random() < wrong_size_rate
                if bad:  # a box over two vertebrae, or a fragment
                    h = h * (2.0 if rng.random() < 0.5 else 0.4)
                rows.append((s, ck, cj, h, w, rng.uniform(0.5, 0.99), v, bad))
    lo = np.array([k.min() - 30, j.min() - 40, i.min() - 40])
    hi = np.array([k.max() + 30, j.max() + 40, i.max() + 40])
    for _ in range(n_false):
        pk, pj, pi = rng.uniform(lo, hi)
        rows.append((int(pi), pk, pj, rng.uniform(10, 40), rng.uniform(10, 60), rng.uniform(0.25, 0.6),
                     -1, False))
    a = np.array(rows, dtype=np.float64)
    perm = rng.permutation(len(a))  # the detector emits slices in order; shuffle to test independence
    a = a[perm]
    # Everything above is in mm; the BoxSet holds pixels of a volume with `spacing` mm voxels.
    boxes = BoxSet(slice_index=np.round(a[:, 0] / spacing).astype(np.int64), center_rc=a[:, 1:3] / spacing,
                   size_hw=a[:, 3:5] / spacing, score=a[:, 5], spacing=spacing)
    return SynthDetections(boxes, a[:, 6].astype(np.int64), a[:, 7].astype(bool), np.stack([k, j, i], 1))


def detections_of_size(n: int, seed: int = 0) -> np.ndarray:
    """(n, 3) box centres in mm of a synthetic detection set with about n boxes (trimmed to n)."""
    # 24 vertebrae x ~40 slices ~ 900 boxes per box-per-slice; scale duplicates to reach n.
    per = max(1.0, n / 850.0)
    det = synth_detections(n_vertebrae=24, seed=seed, boxes_per_slice=per, n_false=max(5, n // 60),
                           first_level=0)
    X = det.boxes.centers_mm()
    reps = int(np.ceil(n / len(X)))
    if reps > 1:  # top up with jittered copies
        rng = np.random.default_rng(seed + 1)
        X = np.concatenate([X] + [X + rng.normal(0, 0.5, X.shape) for _ in range(reps - 1)])
    return X[np.random.default_rng(seed + 2).permutation(len(X))[:n]]


def _time_ms(fn, repeats: int) -> float:
    return statistics.median(time_ms(fn, repeats))  # after one warm-up call (imports, caches)


def bench_points(X: np.ndarray, repeats: int = 20, params: ClusterParams | None = None, xp=None) -> dict:
    """Median fit_predict time of ours and scikit-learn's DBSCAN on the same points, as a user calls them
    (build the estimator, fit_predict), and whether the labels are identical (numbering included)."""
    from sklearn.cluster import DBSCAN as SkDBSCAN

    from engine.xp import to_numpy

    p = params or ClusterParams()
    device = "cpu (numpy)"
    Xo = X
    sync = lambda: None  # noqa: E731
    if xp is not None and xp.__name__ == "cupy":
        Xo = xp.asarray(X)
        sync = xp.cuda.Device().synchronize
        device = "gpu (cupy)"

    def run_ours():
        lab = DBSCAN(p.eps_mm, p.min_samples).fit_predict(Xo)
        sync()
        return lab

    def run_sklearn():
        return SkDBSCAN(eps=p.eps_mm, min_samples=p.min_samples).fit_predict(X)

    ours_ms = _time_ms(run_ours, repeats)
    sk_ms = _time_ms(run_sklearn, repeats)
    a, b = to_numpy(run_ours()), run_sklearn()
    return {"n": int(len(X)), "ours_ms": round(ours_ms, 4), "sklearn_ms": round(sk_ms, 4),
            "speedup_vs_sklearn": round(sk_ms / ours_ms, 2), "identical": bool(np.array_equal(a, b)),
            "clusters": int(b.max() + 1), "device": device}


def assign_boxes_sklearn(centres_mm: np.ndarray, sizes_mm: np.ndarray, params: ClusterParams | None = None) -> np.ndarray:
    """``engine.cluster.assign_boxes`` written the paper's way with scikit-learn, as a user would: one
    DBSCAN on the centres, then one DBSCAN on the box sizes of each stage-1 cluster in turn (keep the
    most populated sub-cluster, the first found on a tie; all boxes if every size is noise), then the
    ``min_fraction`` rule (``engine.cluster.fraction_keep``, shared: it is not DBSCAN). The reference the
    batched two-stage clustering is timed and checked against."""
    from sklearn.cluster import DBSCAN as SkDBSCAN

    p = params or ClusterParams()
    lab1 = SkDBSCAN(eps=p.eps_mm, min_samples=p.min_samples).fit_predict(stage1_points(centres_mm, p))
    out = np.full(len(lab1), -1, dtype=np.int64)
    for c in range(int(lab1.max()) + 1):
        members = np.flatnonzero(lab1 == c)
        lab2 = SkDBSCAN(eps=p.size_eps_mm, min_samples=p.size_min_samples).fit_predict(sizes_mm[members])
        if np.any(lab2 >= 0):
            members = members[lab2 == np.argmax(np.bincount(lab2[lab2 >= 0]))]
        out[members] = c
    n1 = int(lab1.max()) + 1
    cnt = np.bincount(out[out >= 0], minlength=n1)
    k_mm = np.bincount(out[out >= 0], weights=centres_mm[out >= 0, 0], minlength=n1) / np.maximum(cnt, 1)
    out[(out >= 0) & ~fraction_keep(cnt, k_mm, p)[np.maximum(out, 0)]] = -1
    return out


def bench_two_stage(centres_mm: np.ndarray, sizes_mm: np.ndarray, repeats: int = 20,
                    params: ClusterParams | None = None) -> dict:
    """Median time of the whole two-stage clustering of one detection set, ours (two DBSCAN calls,
    stage 2 batched over the clusters) against ``assign_boxes_sklearn`` (1 + clusters calls), and
    whether every box gets the same candidate."""
    p = params or ClusterParams()
    ours_ms = _time_ms(lambda: assign_boxes(centres_mm, sizes_mm, p), repeats)
    sk_ms = _time_ms(lambda: assign_boxes_sklearn(centres_mm, sizes_mm, p), repeats)
    a, b = assign_boxes(centres_mm, sizes_mm, p), assign_boxes_sklearn(centres_mm, sizes_mm, p)
    stage1 = int(DBSCAN(p.eps_mm, p.min_samples).fit_predict(stage1_points(centres_mm, p)).max()) + 1
    return {"n": int(len(centres_mm)), "ours_ms": round(ours_ms, 4), "sklearn_ms": round(sk_ms, 4),
            "speedup_vs_sklearn": round(sk_ms / ours_ms, 2), "identical": bool(np.array_equal(a, b)),
            "candidates": int(len(np.unique(b[b >= 0]))), "sklearn_calls": 1 + stage1}


def bench_one(n: int, repeats: int = 20, seed: int = 0, params: ClusterParams | None = None,
              xp=None) -> dict:
    """``bench_points`` on a synthetic detection set of n points."""
    return bench_points(detections_of_size(n, seed), repeats, params, xp)


def run(sizes=(500, 1000, 3000), repeats: int = 20, xp=None) -> list[dict]:
    return [bench_one(n, repeats, xp=xp) for n in sizes]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 3000])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    ap.add_argument("--cupy", action="store_true", help="run ours on the GPU with CuPy")
    args = ap.parse_args(argv)
    xp = None
    if args.cupy:
        import cupy as xp  # noqa: F811
    res = run(args.sizes, args.repeats, xp=xp)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"{'n':>6} {'ours ms':>9} {'sklearn ms':>11} {'speedup':>8} identical clusters device")
        for r in res:
            print(f"{r['n']:>6} {r['ours_ms']:>9.3f} {r['sklearn_ms']:>11.3f} {r['speedup_vs_sklearn']:>7.1f}x"
                  f" {str(r['identical']):>9} {r['clusters']:>8} {r['device']}")
    return 0 if all(r["identical"] for r in res) else 1


if __name__ == "__main__":
    raise SystemExit(main())

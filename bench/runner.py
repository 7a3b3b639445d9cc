"""`spinert bench` measurements: the cascade matrix (backend x precision x CT size), the naive baseline,
the model sessions alone, and micro-benchmarks of the hand-written hot paths against their libraries.

Every timing is host wall time (time.perf_counter); the cascade's own per-stage clock is used for stages.
GPU backends synchronise inside their sessions, so host wall time is the latency a caller sees.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bench.machine import GpuMemory, host_peak_mb, reset_host_peak
from engine.errors import InputError
from engine.pipeline import STAGES

# Synthetic CT sizes: number of vertebrae -> (first, last) VerSe label of the field of view.
SPANS = {3: (22, 24), 6: (19, 24), 12: (13, 24), 17: (8, 24), 24: (1, 24)}
Tick = Callable[[str], None]  # progress: advance one step with a description


def pct(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None, "n": 0}
    a = np.asarray(xs, dtype=np.float64)
    r = lambda v: round(float(v), 3)  # noqa: E731
    return {"p50": r(np.percentile(a, 50)), "p95": r(np.percentile(a, 95)), "p99": r(np.percentile(a, 99)),
            "max": r(a.max()), "mean": r(a.mean()), "n": int(a.size)}


# ------------------------------------------------------------------------------------------------ inputs
@dataclass
class BenchCT:
    name: str  # "sample", "6v", ... or a file name
    source: Any  # a path (timed load) or an engine.types.Volume (load = 0)
    vertebrae: int | None
    shape_ijk: tuple[int, int, int]
    spacing: tuple[float, float, float]


def parse_sizes(items: list[str]) -> list[str | int]:
    out: list[str | int] = []
    for s in items:
        if s == "sample":
            out.append("sample")
            continue
        try:
            n = int(s)
        except ValueError:
            raise InputError(f"--sizes: {s!r} is not 'sample' or a vertebra count ({', '.join(map(str, SPANS))})") from None
        if n not in SPANS:
            raise InputError(f"--sizes: no synthetic CT with {n} vertebrae (choose from {', '.join(map(str, SPANS))})")
        out.append(n)
    return out


def make_cts(sizes: list[str | int], extra: list[Path], cache: Path, tick: Tick) -> list[BenchCT]:
    """The CTs to run: the shipped sample (loaded from its file each run), phantom CTs generated once
    (cached as NIfTI in ``cache``; generation is never timed), and user files."""
    from engine.io import read_volume, write_volume
    from spinert import asset_path

    cts = []
    for s in sizes:
        if s == "sample":
            p = asset_path("data/sample_ct.nii.gz")
            v = read_volume(p)
            cts.append(BenchCT("sample", str(p), None, tuple(v.size), tuple(v.spacing)))
            tick("sample CT")
            continue
        f = cache / f"phantom_{s}v.nii.gz"
        if f.is_file():
            vol = read_volume(f, name=f"{s}v")
        else:
            from phantom import generate

            vol = generate(100 + int(s), span=SPANS[int(s)], spacing=(0.8, 0.8, 1.25)).ct
            write_volume(vol, f)
        cts.append(BenchCT(f"{s}v", vol, int(s), tuple(vol.size), tuple(vol.spacing)))
        tick(f"phantom CT {s} vertebrae")
    for p in extra:
        if not p.is_file() and not p.is_dir():
            raise InputError(f"--ct: {p} does not exist")
        v = read_volume(p)
        cts.append(BenchCT(p.name, str(p), None, tuple(v.size), tuple(v.spacing)))
        tick(f"CT {p.name}")
    return cts


# ------------------------------------------------------------------------------------------------ cascade
def _summary(runs: list[dict], infos: list[dict]) -> dict:
    stages = {s: {f"{k}_ms": v for k, v in pct([r[s] for r in runs]).items() if k != "n"} for s in STAGES}
    e2e = pct([r["total"] for r in runs])
    info = infos[-1] if infos else {}
    slices = int(info.get("band", {}).get("slices", 0))
    rois = int(info.get("candidates", 0))
    det_s = (stages["detect"]["p50_ms"] or 0) / 1e3
    seg_s = (stages["segment"]["p50_ms"] or 0) / 1e3
    return {"end_to_end_ms": e2e, "stages": stages, "slices": slices, "boxes": int(info.get("boxes", 0)),
            "rois": rois,
            "throughput": {"cts_per_s": round(1e3 / e2e["p50"], 4) if e2e["p50"] else None,
                           "slices_per_s": round(slices / det_s, 2) if det_s > 0 and slices else None,
                           "rois_per_s": round(rois / seg_s, 3) if seg_s > 0 and rois else None}}


def time_cascade(cascade, ct: BenchCT, runs: int, warmup: int, tick: Tick, label: str) -> dict:
    for w in range(warmup):
        cascade.run(ct.source, name=ct.name)
        tick(f"{label} warm-up {w + 1}/{warmup}")
    timings, infos, res = [], [], None
    for r in range(runs):
        res = cascade.run(ct.source, name=ct.name)
        timings.append(dict(res.timings_ms))
        infos.append(dict(res.info))
        tick(f"{label} run {r + 1}/{runs}")
    out = _summary(timings, infos)
    out["vertebrae_found"] = len(res.vertebrae) if res is not None else 0
    out["runs_ms"] = [round(t["total"], 3) for t in timings]
    return out


def cascade_matrix(backends: list[str], precisions: list[str], cts: list[BenchCT], runs: int, warmup: int,
                   tick: Tick, threads: int | None = None) -> tuple[list[dict], dict]:
    """One cell per (backend, precision, CT); cells that cannot run say why (skipped)."""
    from engine.backends import probe
    from engine.models import load_manifest
    from engine.pipeline import Cascade

    specs = load_manifest(None)
    cells, skipped = [], {}
    for b in backends:
        why = probe(b)
        for p in precisions:
            if why is None:
                lacking = [m for m, s in specs.items() if p not in s.files]
                why_p = f"the model manifest has no {p} files for {', '.join(lacking)}" if lacking else None
            else:
                why_p = why
            if why_p:
                skipped[f"{b}/{p}"] = why_p
                for _ in cts:
                    tick(f"{b}/{p} skipped")
                continue
            with Cascade(backend=b, precision=p, threads=threads) as cascade:
                on_gpu = str(cascade.device).startswith("cuda") or cascade.backend in ("tensorrt", "tensorrt_rtx",
                                                                                        "torch-cuda")
                for ct in cts:
                    reset_host_peak()
                    with GpuMemory(on_gpu) as gm:
                        cell = time_cascade(cascade, ct, runs, warmup, tick, f"{b}/{p} {ct.name}")
                    cell.update(backend=cascade.backend, precision=p, device=str(cascade.device), ct=ct.name,
                                vertebrae_in_ct=ct.vertebrae, shape_ijk=list(ct.shape_ijk),
                                spacing_mm=[round(float(s), 4) for s in ct.spacing],
                                peak_host_mb=host_peak_mb(), peak_gpu_mb=gm.peak_mb)
                    cells.append(cell)
    return cells, skipped


def naive_baseline(backend: str, precision: str, ct: BenchCT, runs: int, warmup: int, tick: Tick,
                   threads: int | None = None) -> dict:
    """The cascade (detector on the spine band) against the paper's naive way (detector on every sagittal
    slice), alternating run by run on the same CT so that both see the same machine load."""
    from engine.pipeline import Cascade

    with Cascade(backend=backend, precision=precision, threads=threads) as ours, \
            Cascade(backend=backend, precision=precision, threads=threads, all_slices=True) as naive:
        for w in range(warmup):
            ours.run(ct.source, name=ct.name)
            naive.run(ct.source, name=ct.name)
            tick(f"baseline warm-up {w + 1}/{warmup}")
        t_ours, t_naive, i_ours, i_naive = [], [], [], []
        for r in range(runs):
            a = ours.run(ct.source, name=ct.name)
            b = naive.run(ct.source, name=ct.name)
            t_ours.append(a.timings_ms)
            t_naive.append(b.timings_ms)
            i_ours.append(a.info)
            i_naive.append(b.info)
            tick(f"baseline run {r + 1}/{runs}")
    so, sn = _summary(t_ours, i_ours), _summary(t_naive, i_naive)
    ratio = lambda n, d: round(n / d, 3) if n and d else None  # noqa: E731
    return {"ct": ct.name, "backend": backend, "precision": precision,
            "cascade": {"detect_p50_ms": so["stages"]["detect"]["p50_ms"], "end_to_end_p50_ms": so["end_to_end_ms"]["p50"],
                        "slices": so["slices"]},
            "naive_all_slices": {"detect_p50_ms": sn["stages"]["detect"]["p50_ms"],
                                 "end_to_end_p50_ms": sn["end_to_end_ms"]["p50"], "slices": sn["slices"]},
            "detect_speedup": ratio(sn["stages"]["detect"]["p50_ms"], so["stages"]["detect"]["p50_ms"]),
            "end_to_end_speedup": ratio(sn["end_to_end_ms"]["p50"], so["end_to_end_ms"]["p50"]),
            "slice_ratio": ratio(sn["slices"], so["slices"])}


# ------------------------------------------------------------------------------------------------ models alone
def _cuda_event_timer():
    """A (start, stop -> ms) pair on CUDA events when torch sees a GPU, else None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
    except Exception:  # noqa: BLE001 - no (working) torch: host timer
        return None

    def start():
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        return a, b

    def stop(ev) -> float:
        a, b = ev
        b.record()
        torch.cuda.synchronize()  # the session may run on its own stream: wait for the whole device
        return float(a.elapsed_time(b))

    return start, stop


def time_ms(fn: Callable[[], Any], repeats: int, warmup: int = 1, cuda: bool = False) -> list[float]:
    """``repeats`` timings of ``fn`` in ms after ``warmup`` untimed calls (CUDA events with ``cuda``)."""
    for _ in range(warmup):
        fn()
    ev = _cuda_event_timer() if cuda else None
    if ev is not None:
        start, stop = ev
        out = []
        for _ in range(repeats):
            h = start()
            fn()
            out.append(stop(h))
        return out
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return ts


def model_sessions(backend: str, precision: str, batches: dict[str, int], repeats: int, warmup: int,
                   tick: Tick, threads: int | None = None) -> dict:
    """Each model session alone on a batch of realistic-shaped inputs built by the runtime's own input
    builders from the phantom/sample CT (detector: sagittal slices; segmenter: 128^3 ROIs at vertebra
    centres; labeller: vertebra crops). The per-item costs are what a trained cascade pays per slice,
    per ROI and per vertebra, whatever the (untrained) models answer."""
    from engine.backends import load_session
    from engine.io import read_volume
    from engine.modelio import detector_batch, labeller_input, segmenter_input
    from engine.models import load_manifest
    from engine.preprocess import to_canonical
    from spinert import asset_path

    specs = load_manifest(None)
    canon = to_canonical(read_volume(asset_path("data/sample_ct.nii.gz")), float(specs["detector"].preprocess["spacing_mm"]))
    iso = canon.array
    k, j, i = iso.shape
    # Vertebra-like centres down the middle of the sample, 25 mm apart along k.
    centres = np.array([[kk, j * 0.55, i * 0.5] for kk in np.linspace(k * 0.2, k * 0.8, 8)])
    out = {}
    for m, n in batches.items():
        spec = specs[m]
        sess = load_session(spec, backend, precision, threads=threads, max_batch=n)
        pp = spec.preprocess
        if m == "detector":
            sl = np.linspace(i * 0.3, i * 0.7, n).round().astype(np.int64)
            x, _ = detector_batch(iso, sl, pp)
            unit = "slice"
        elif m == "segmenter":
            x = np.stack([segmenter_input(iso, centres[t % len(centres)], pp) for t in range(n)])
            unit = "roi"
        else:
            mask = np.zeros(iso.shape, dtype=bool)
            x = np.stack([labeller_input(mask, iso, centres[t % len(centres)], pp) for t in range(n)])
            unit = "vertebra"
        feeds = {sess.input_names[0]: np.ascontiguousarray(x, dtype=np.float32)}
        on_gpu = str(sess.device).startswith("cuda") or backend in ("tensorrt", "tensorrt_rtx", "torch-cuda")
        ts = time_ms(lambda: sess.run(feeds), repeats, warmup, cuda=on_gpu)
        p = pct(ts)
        out[m] = {"batch": n, "input_shape": list(x.shape), "unit": unit, "batch_ms": p,
                  f"ms_per_{unit}": round(p["p50"] / n, 3), f"{unit}s_per_s": round(1e3 * n / p["p50"], 3),
                  "device": str(sess.device), "timer": "cuda events" if on_gpu and _cuda_event_timer() else "perf_counter"}
        sess.close()
        tick(f"{m} session alone")
    return out


# ------------------------------------------------------------------------------------------------ micro
def cascade_point_sets(backend: str, precision: str, cts: list[BenchCT], threads: int | None = None) -> list[tuple]:
    """(CT name, box centres mm, box sizes mm, ClusterParams) of each CT: the detection sets the cascade
    clusters."""
    from engine.pipeline import Cascade

    with Cascade(backend=backend, precision=precision, threads=threads) as cascade:
        return [(ct.name, *cascade.clustering_inputs(ct.source)) for ct in cts]


def micro_dbscan(sizes: tuple[int, ...], repeats: int, sets: list[tuple] = ()) -> dict:
    """DBSCAN against scikit-learn on synthetic detection sets of the given sizes (headline: the largest),
    and on the cascade's own box sets (``sets``: from ``cascade_point_sets``) both a single stage-1 call
    and the whole two-stage clustering."""
    from bench import micro_dbscan as mdb
    from engine.cluster import stage1_points

    rows = mdb.run(sizes, repeats)
    own = [dict(mdb.bench_points(stage1_points(c, p), repeats, p), ct=name) for name, c, s, p in sets if len(c)]
    two = [dict(mdb.bench_two_stage(c, s, repeats, p), ct=name) for name, c, s, p in sets if len(c)]
    head = max(rows, key=lambda r: r["n"])
    return {"n": head["n"], "ours_ms": head["ours_ms"], "sklearn_ms": head["sklearn_ms"],
            "speedup_vs_sklearn": head["speedup_vs_sklearn"],
            "identical": all(r["identical"] for r in rows + own + two), "by_size": rows, "cascade_sets": own,
            "two_stage": two}


def _greedy_nms_loop(group: np.ndarray, xywh: np.ndarray, score: np.ndarray, thr: float) -> np.ndarray:
    """Plain per-slice greedy NMS (the reference when torchvision is absent)."""
    keep = np.zeros(len(score), dtype=bool)
    x1, y1 = xywh[:, 0] - xywh[:, 2] / 2, xywh[:, 1] - xywh[:, 3] / 2
    x2, y2 = xywh[:, 0] + xywh[:, 2] / 2, xywh[:, 1] + xywh[:, 3] / 2
    area = (x2 - x1) * (y2 - y1)
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        idx = idx[np.argsort(-score[idx], kind="stable")]
        while idx.size:
            t, rest = idx[0], idx[1:]
            keep[t] = True
            iw = np.clip(np.minimum(x2[t], x2[rest]) - np.maximum(x1[t], x1[rest]), 0, None)
            ih = np.clip(np.minimum(y2[t], y2[rest]) - np.maximum(y1[t], y1[rest]), 0, None)
            inter = iw * ih
            idx = rest[inter / np.maximum(area[t] + area[rest] - inter, 1e-12) <= thr]
    return keep


def micro_nms(slices: int, per_slice: int, repeats: int, iou: float = 0.5, seed: int = 0) -> dict:
    """engine.detect.nms (vectorised over slices) vs torchvision.ops.batched_nms (else a greedy loop) on a
    detector-shaped candidate set: ``per_slice`` overlapping boxes around a few vertebrae on each slice."""
    from engine.detect import nms

    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(slices), per_slice)
    cx = rng.uniform(100, 280, g.size)
    cy = rng.choice(np.linspace(40, 340, 12), g.size) + rng.normal(0, 4, g.size)
    xywh = np.stack([cx, cy, rng.uniform(20, 40, g.size), rng.uniform(15, 30, g.size)], 1).astype(np.float32)
    score = rng.uniform(0.25, 1.0, g.size).astype(np.float32)
    order = np.lexsort([-score, g])  # decode()'s order: slice, best first
    g, xywh, score = g[order], xywh[order], score[order]
    ours = time_ms(lambda: nms(g, xywh, score, iou), repeats)
    keep = nms(g, xywh, score, iou)
    try:
        import torch
        from torchvision.ops import batched_nms

        tb = torch.from_numpy(np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1))
        ts, tg = torch.from_numpy(score), torch.from_numpy(g)
        ref_name = "torchvision.ops.batched_nms (cpu)"
        ref_fn = lambda: batched_nms(tb, ts, tg, iou)  # noqa: E731
        ref_keep = np.zeros(len(score), dtype=bool)
        ref_keep[ref_fn().numpy()] = True
    except ImportError:
        ref_name = "greedy per-slice loop (numpy)"
        ref_fn = lambda: _greedy_nms_loop(g, xywh, score, iou)  # noqa: E731
        ref_keep = ref_fn()
    ref = time_ms(ref_fn, repeats)
    o, r = statistics.median(ours), statistics.median(ref)
    return {"boxes": int(g.size), "slices": slices, "ours_ms": round(o, 4), "reference": ref_name,
            "reference_ms": round(r, 4), "speedup_vs_reference": round(r / o, 3),
            "identical": bool(np.array_equal(keep, ref_keep)), "kept": int(keep.sum())}


def micro_resample(repeats: int) -> dict:
    """engine.preprocess.to_canonical (reorient + isotropic resample, SimpleITK under the hood) vs one plain
    sitk.Resample of the sample CT: what the engine's wrapping (grid set-up, copies) costs on top."""
    import SimpleITK as sitk

    from engine.io import read_volume
    from engine.preprocess import to_canonical
    from spinert import asset_path

    p = asset_path("data/sample_ct.nii.gz")
    vol = read_volume(p)
    img = sitk.Cast(sitk.ReadImage(str(p)), sitk.sitkFloat32)

    def plain():
        sp = img.GetSpacing()
        size = [int(round(n * s)) for n, s in zip(img.GetSize(), sp)]
        return sitk.GetArrayFromImage(sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                                                    (1.0, 1.0, 1.0), img.GetDirection(), -1000.0, sitk.sitkFloat32))

    o = statistics.median(time_ms(lambda: to_canonical(vol, 1.0), repeats))
    r = statistics.median(time_ms(plain, repeats))
    out_shape = list(to_canonical(vol, 1.0).array.shape)
    return {"input_size_ijk": list(vol.size), "output_shape_kji": out_shape, "ours_ms": round(o, 3),
            "reference": "SimpleITK Resample (no reorientation)", "reference_ms": round(r, 3),
            "overhead_ratio": round(o / r, 3)}


def micro_bridge(n: int) -> dict:
    from bench import micro_bridge as mb

    return mb.run(n)

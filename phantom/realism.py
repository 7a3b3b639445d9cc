"""`spinert realism`: how phantoms look next to real scans, in the numbers a model sees.

Each case is brought to the cascade's canonical 1 mm frame (what the models read), and measured:

* ``spacing_mm``: the stored voxel size (x, y, z); coarse pixels blur thin cortex;
* ``vertebra_hu`` p10/p50/p90 over all labelled bone, ``inner_hu_p50`` 3 mm inside the masks
  (cancellous bone), ``ring_hu`` p10/p50/p90 4-12 mm outside them (muscle, fat, discs);
* ``noise_hu``: robust sigma of neighbour differences in soft tissue (-150..150 HU in the ring),
  divided by sqrt(2): the grain the detector and the segmenter must ignore;
* ``surface_gradient_hu_mm``: median gradient magnitude on the mask surface: how sharp bone edges are;
* ``process_excess_hu``: how much brighter the transverse processes read than the body (median over
  vertebrae of the lateral parts' median minus the body's, parts cut about each mask's centroid). Real
  processes are barely denser than the body; a segmenter trained only on bright ones stops at the
  pedicles of a real scan.

A phantom set looks real when the real cases fall inside the phantoms' spread on every line; the report
(JSON, markdown, PNG) shows both groups side by side.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.errors import InputError, OutputExistsError

METRICS = ("inplane_mm", "slice_mm", "vertebra_hu_p10", "vertebra_hu_p50", "vertebra_hu_p90", "inner_hu_p50",
           "ring_hu_p50", "noise_hu", "surface_gradient_hu_mm", "process_excess_hu")
# Parts of a vertebra in the 1 mm frame, about its centroid: the body lies more than BODY_AHEAD_MM in
# front of it; the transverse processes more than PROCESS_SIDE_MM to either side and not in front.
BODY_AHEAD_MM, PROCESS_SIDE_MM = 5, 22
PART_MIN_VOXELS = 200


@dataclass
class CaseRealism:
    case: str
    group: str
    inplane_mm: float
    slice_mm: float
    vertebra_hu_p10: float
    vertebra_hu_p50: float
    vertebra_hu_p90: float
    inner_hu_p50: float | None
    ring_hu_p10: float
    ring_hu_p50: float
    ring_hu_p90: float
    noise_hu: float | None
    surface_gradient_hu_mm: float
    process_excess_hu: float | None = None


def process_excess(iso: np.ndarray, labels: np.ndarray) -> float | None:
    """Median over vertebrae of (transverse processes' median - body's median) HU; None when no vertebra
    shows both parts. Canonical LPI arrays (k, j, i): j grows towards posterior, i towards left."""
    k, j, i = np.nonzero(labels)
    ids, inv = np.unique(labels[k, j, i], return_inverse=True)
    hu = iso[k, j, i]
    n = np.bincount(inv)
    jc, ic = (np.bincount(inv, weights=j) / n)[inv], (np.bincount(inv, weights=i) / n)[inv]
    body = j < jc - BODY_AHEAD_MM
    side = (np.abs(i - ic) > PROCESS_SIDE_MM) & (j > jc - 2)
    out = []
    for v in range(len(ids)):
        mine = inv == v
        b, s = hu[mine & body], hu[mine & side]
        if b.size >= PART_MIN_VOXELS and s.size >= PART_MIN_VOXELS // 2:
            out.append(float(np.median(s) - np.median(b)))
    return round(float(np.median(out)), 1) if out else None


def measure(iso: np.ndarray, labels: np.ndarray, spacing_xyz, case: str, group: str) -> CaseRealism:
    """The realism figures of one case on its canonical 1 mm grid (``iso`` HU, ``labels`` VerSe IDs)."""
    from scipy import ndimage as ndi

    bone = labels > 0
    if not bone.any():
        raise InputError(f"case {case}: the label map is empty")
    iso = iso.astype(np.float32, copy=False)
    inner = ndi.binary_erosion(bone, iterations=3)
    ring = ndi.binary_dilation(bone, iterations=12) & ~ndi.binary_dilation(bone, iterations=4)
    v10, v50, v90 = np.percentile(iso[bone], [10, 50, 90])
    r10, r50, r90 = np.percentile(iso[ring], [10, 50, 90]) if ring.any() else (np.nan,) * 3
    # Noise: neighbour differences along i inside soft tissue (both voxels in the window and the ring).
    soft = ring & (iso > -150) & (iso < 150)
    both = soft[:, :, 1:] & soft[:, :, :-1]
    d = (iso[:, :, 1:] - iso[:, :, :-1])[both]
    noise = float(1.4826 * np.median(np.abs(d - np.median(d))) / np.sqrt(2)) if d.size > 100 else None
    surface = bone & ~ndi.binary_erosion(bone)
    g = np.sqrt(sum(np.square(ndi.sobel(iso, axis=a) / 8.0) for a in range(3)))  # sobel sums 8 weights
    sp = [float(s) for s in spacing_xyz]
    return CaseRealism(case, group, round(min(sp[0], sp[1]), 3), round(sp[2], 3), round(float(v10), 1),
                       round(float(v50), 1), round(float(v90), 1),
                       round(float(np.median(iso[inner])), 1) if inner.any() else None,
                       round(float(r10), 1), round(float(r50), 1), round(float(r90), 1),
                       None if noise is None else round(noise, 1), round(float(np.median(g[surface])), 1),
                       process_excess(iso, labels))


def measure_folder(folder: Path, group: str, limit: int | None = None, progress=None) -> list[CaseRealism]:
    from engine.verse import list_cases, load_canonical, read_case

    ids = list_cases(folder, require=("ct", "msk"))
    if limit:
        # Spread over the folder (profiles are usually grouped by name), not its first cases only.
        ids = [ids[i] for i in np.unique(np.linspace(0, len(ids) - 1, limit).round().astype(int))]
    out = []
    for cid in ids:
        c = load_canonical(folder, cid, 1.0)
        spacing = read_case(folder, cid, check=False).ct.spacing
        out.append(measure(c.iso, c.labels, spacing, cid, group))
        if progress:
            progress()
    return out


def summarise(rows: list[CaseRealism]) -> dict:
    """Per group and metric: min, median, max over its cases; and for each real case's value, whether the
    phantoms' range holds it."""
    groups = sorted({r.group for r in rows})
    s: dict = {}
    for g in groups:
        s[g] = {}
        for m in METRICS:
            v = [getattr(r, m) for r in rows if r.group == g and getattr(r, m) is not None]
            s[g][m] = {"min": min(v), "median": float(np.median(v)), "max": max(v)} if v else None
    return s


def coverage(rows: list[CaseRealism], ref: str, cases: str) -> dict:
    """For each metric, the share of ``ref`` cases whose value lies within the ``cases`` group's range."""
    out = {}
    for m in METRICS:
        pv = [getattr(r, m) for r in rows if r.group == cases and getattr(r, m) is not None]
        rv = [getattr(r, m) for r in rows if r.group == ref and getattr(r, m) is not None]
        out[m] = round(float(np.mean([(min(pv) <= v <= max(pv)) for v in rv])), 3) if pv and rv else None
    return out


def markdown(rep: dict) -> str:
    groups = list(rep["summary"])
    lines = ["# Phantom realism against real scans", "", "Canonical 1 mm frame (what the models read). "
             "Range over cases: min / median / max.", "",
             "| metric | " + " | ".join(groups) + " | real cases inside " + " / ".join(g for g in groups if g != rep["ref"])
             + " range |", "|---" * (len(groups) + 2) + "|"]
    for m in METRICS:
        cells = []
        for g in groups:
            v = rep["summary"][g][m]
            cells.append("-" if v is None else f"{v['min']:g} / {v['median']:g} / {v['max']:g}")
        cov = " / ".join("-" if rep["coverage"][g][m] is None else f"{100 * rep['coverage'][g][m]:.0f} %"
                         for g in groups if g != rep["ref"])
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {cov} |")
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(rep["summary"])
    fig, axes = plt.subplots(1, len(METRICS), figsize=(2.0 * len(METRICS), 4.2))
    colors = plt.cm.tab10.colors
    for ax, m in zip(axes, METRICS):
        for gi, g in enumerate(groups):
            v = [c[m] for c in rep["cases"] if c["group"] == g and c[m] is not None]
            x = gi + np.random.default_rng(gi).uniform(-0.15, 0.15, len(v))
            ax.scatter(x, v, s=14, color=colors[gi % 10], alpha=0.8)
        ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=7)
        ax.set_title(m, fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Phantoms next to real scans (one dot per case)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def register(sub) -> None:
    p = sub.add_parser("realism", help="compare phantom CTs with real ones (HU, noise, edges, voxel size)",
                       description="Measure VerSe-style folders in the canonical 1 mm frame and write "
                                   "realism.json, realism.md and realism.png side by side.")
    p.add_argument("--ref", required=True, type=Path, help="real cases (VerSe-style folder)")
    p.add_argument("--cases", required=True, type=Path, nargs="+", help="phantom folders, one group each")
    p.add_argument("--limit", type=int, default=None, help="at most this many cases per phantom folder")
    p.add_argument("--out", required=True, type=Path, help="report folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.set_defaults(func=main)


def main(args) -> int:
    from rich.progress import Progress

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be at least 1, got {args.limit}")
    names = [args.ref.name] + [c.name for c in args.cases]
    if len(set(names)) != len(names):
        raise InputError(f"folders need distinct names to label the groups, got {names}")
    files = [args.out / f"realism.{e}" for e in ("json", "md", "png")]
    clash = [f for f in files if f.exists()]
    if clash and not args.overwrite:
        raise OutputExistsError(f"{clash[0]} already exists; use --overwrite to replace")
    rows: list[CaseRealism] = []
    with Progress(transient=True, disable=not sys.stderr.isatty()) as prog:
        for folder in [args.ref, *args.cases]:
            task = prog.add_task(folder.name, total=None)
            rows += measure_folder(folder, folder.name, None if folder == args.ref else args.limit,
                                   lambda: prog.advance(task))
    ref = args.ref.name
    rep = {"ref": ref, "summary": summarise(rows),
           "coverage": {c.name: coverage(rows, ref, c.name) for c in args.cases},
           "cases": [asdict(r) for r in rows]}
    args.out.mkdir(parents=True, exist_ok=True)
    files[0].write_text(json.dumps(rep, indent=1) + "\n")
    md = markdown(rep)
    files[1].write_text(md)
    plot(rep, files[2])
    print(md)
    print(f"report: {' '.join(map(str, files))}")
    return 0

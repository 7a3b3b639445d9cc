"""One PNG a person would rather look at than the JSON: per-vertebra Dice and HD95, localisation error,
and identification / labelling rates, with the headline numbers in the title."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine import labels as L

_LEVEL_COLOUR = {"cervical": "#4C72B0", "thoracic": "#55A868", "lumbar": "#C44E52", "sacral": "#8172B2"}


def _box(ax, names, groups, colours, rng, ylabel, title, hollow=None):
    """Boxplot per label with the individual vertebrae jittered on top (n is small per label); ``hollow``
    (per group, one flag per value) draws those vertebrae as open circles."""
    pos = [i for i, g in enumerate(groups) if g]
    if pos:
        bp = ax.boxplot([groups[i] for i in pos], positions=pos, widths=0.6, showfliers=False,
                        patch_artist=True, medianprops={"color": "black"})
        for patch, i in zip(bp["boxes"], pos):
            patch.set_facecolor(colours[i])
            patch.set_alpha(0.35)
        for i in pos:
            x = i + rng.uniform(-0.15, 0.15, len(groups[i]))
            y = np.asarray(groups[i], float)
            o = np.asarray(hollow[i], bool) if hollow is not None else np.zeros(len(y), bool)
            ax.scatter(x[~o], y[~o], s=10, color=colours[i], zorder=3)
            ax.scatter(x[o], y[o], s=14, facecolors="none", edgecolors=colours[i], zorder=3)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_xlim(-0.7, len(names) - 0.3)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def plot_report(report, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    verts = report.vertebrae
    labs = sorted({v.label for v in verts}, key=L.ORDER_INDEX.get)
    names = [L.name(x) for x in labs]
    colours = [_LEVEL_COLOUR[L.region(x)] for x in labs]
    rng = np.random.default_rng(0)

    def picked(attr, cond):
        """Per label, the vertebrae that meet ``cond`` and have a finite ``attr``."""
        return [[v for v in verts if v.label == lab and cond(v) and getattr(v, attr) is not None
                 and np.isfinite(getattr(v, attr))] for lab in labs]

    def per_label(attr, cond=lambda v: True):
        return [[getattr(v, attr) for v in g] for g in picked(attr, cond)]

    def undefined(attr, cond):
        return [sum(1 for v in verts if v.label == lab and cond(v) and getattr(v, attr) is None) for lab in labs]

    def mark(a, counts, what):
        # vertebrae without a value would silently vanish from a boxplot: say how many per label
        for i, n in enumerate(counts):
            if n:
                a.annotate(f"{n} {what}", (i, 1.0), xycoords=("data", "axes fraction"), ha="center", va="top",
                           fontsize=7, color="tab:red")

    s = report.summary()
    fig, ax = plt.subplots(2, 2, figsize=(max(11, 0.55 * len(labs) * 2 + 3), 8.5), constrained_layout=True)
    # Vertebrae the field of view cuts are partial targets with far lower Dice: drawn open, and each
    # group's mean is in the panel title so the whole-vertebra figure is not hidden by them.
    ext = report.by_extent()
    means = ", ".join(f"{k} {r['dice']['mean']:.3f}" for k, r in ext.items() if r["dice"]["mean"] is not None)
    _box(ax[0, 0], names, per_label("dice", lambda v: v.has_mask), colours, rng, "Dice",
         f"Segmentation: Dice per vertebra (mean {means}; cut: open circles)",
         hollow=[[bool(v.at_face) for v in g] for g in picked("dice", lambda v: v.has_mask)])
    ax[0, 0].set_ylim(-0.02, 1.02)
    _box(ax[0, 1], names, per_label("hd95_mm", lambda v: v.has_mask), colours, rng, "mm",
         "Segmentation: HD95 per vertebra")
    mark(ax[0, 1], undefined("hd95_mm", lambda v: v.has_mask), "empty")
    _box(ax[1, 0], names, per_label("loc_error_mm", lambda v: v.has_centroid), colours, rng, "mm",
         "Localisation error per vertebra (same-label centroid)")
    for t, ls in ((1.5, ":"), (2.0, "--"), (3.0, "-.")):
        ax[1, 0].axhline(t, ls=ls, c="grey", lw=1, label=f"{t} mm")
    ax[1, 0].legend(fontsize=8, loc="center right")
    mark(ax[1, 0], undefined("loc_error_mm", lambda v: v.has_centroid), "no pred.")

    def rate(lab, attr):
        vals = [getattr(v, attr) for v in verts if v.label == lab and v.has_centroid]
        vals = [x for x in vals if x is not None]
        return float(np.mean(vals)) if vals else np.nan
    x = np.arange(len(labs))
    idr = [rate(lab, "identified") for lab in labs]
    det = [rate(lab, "detected") for lab in labs]
    lab_acc = [rate(lab, "labelled_correctly") for lab in labs]
    a = ax[1, 1]
    a.bar(x - 0.27, det, 0.27, label="detected", color="#BBBBBB")
    a.bar(x, idr, 0.27, label="identified (VerSe)", color="#55A868")
    a.bar(x + 0.27, lab_acc, 0.27, label="label right | detected", color="#4C72B0")
    a.set_xticks(x, names, fontsize=8)
    a.set_ylim(0, 1.3)
    a.set_ylabel("rate")
    a.set_title("Identification and labelling per vertebra", fontsize=10)
    a.legend(fontsize=8, ncol=3, loc="upper center")
    a.grid(axis="y", alpha=0.3)

    def f(v, pct=False):
        if v is None:
            return "–"
        if isinstance(v, dict):
            return "–" if v["mean"] is None else f"{v['mean']:.2f}"
        return f"{100 * v:.1f}%" if pct else str(v)
    fig.suptitle(f"{s['cases']} cases, {s['vertebrae']} vertebrae — id rate {f(s['identification_rate'], True)}, "
                 f"MLE {f(s['mle_mm'])} mm, Dice {f(s['dice'])}, HD95 {f(s['hd95_mm'])} mm, "
                 f"missed {s['missed']}, extra {s['extra']}, sequence acc {f(s['sequence_accuracy'], True)}",
                 fontsize=11)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

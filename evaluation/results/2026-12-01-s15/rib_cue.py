"""How often engine.ribs sees a rib (or trusts its absence) per ground-truth level: the measurement behind
engine.sequence's RIB_LIKELIHOOD / NO_RIB_LIKELIHOOD.

    python evaluation/results/2026-12-01-s15/rib_cue.py OUT_DIR DATA_DIR [DATA_DIR ...]

Runs the shipped cascade on every *_ct.nii.gz, takes the rib cue of its last decode, matches each
candidate to the nearest ground-truth centre (within 15 mm, else "stray") and writes rib_cue.json and
rib_cue.png (reach per level, coloured by the observation) into OUT_DIR.
"""
from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from engine import labels as L
from engine.pipeline import Cascade
from engine.ribs import NO_RIBS, RIBS, RibParams, rib_reach

GROUPS = {"C1-C6": range(1, 7), "C7": [7], "T1": [8], "T2-T11": range(9, 19), "T12": [19], "T13": [28],
          "L1": [20], "L2-L4": range(21, 24), "L5": [24], "L6": [25], "S": [26], "stray": [0]}


def main(out: Path, dirs: list[Path]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(f for d in dirs for f in d.glob("*_ct.nii.gz"))
    rows, last = [], {}
    with Cascade(threads=2) as c:
        orig = c._decode

        def spy(seg, probs, canon, iso, end=None):
            labs, conf, info = orig(seg, probs, canon, iso, end)
            last.update(lps=canon.index_to_lps(seg.centers_kji), ribs=info["ribs"],
                        reach=rib_reach(iso, seg.owner, seg.centers_kji, seg.boxes, c.spacing, c.config.ribs))
            return labs, conf, info

        c._decode = spy
        for f in tqdm(files, desc="rib cue"):
            last.clear()
            c.run(f)
            if not last:
                continue
            gt = {d["label"]: np.array([d["X"], d["Y"], d["Z"]])
                  for d in json.loads(Path(str(f).replace("_ct.nii.gz", "_ctd.json")).read_text()) if "label" in d}
            for p, code, reach in zip(last["lps"], last["ribs"], last["reach"]):
                lab = min(gt, key=lambda g: np.linalg.norm(gt[g] - p))
                lab = lab if np.linalg.norm(gt[lab] - p) <= 15.0 else 0
                rows.append({"case": f.name[:-len("_ct.nii.gz")], "level": int(lab), "reach_mm": round(float(reach), 1),
                             "observation": {RIBS: "rib", NO_RIBS: "no rib"}.get(int(code), "unknown")})
    table = {}
    for g, levels in GROUPS.items():
        obs = collections.Counter(r["observation"] for r in rows if r["level"] in levels)
        if obs:
            table[g] = {"n": sum(obs.values()), **{k: obs.get(k, 0) for k in ("rib", "no rib", "unknown")}}
    (out / "rib_cue.json").write_text(json.dumps({"files": [str(f) for f in files], "by_level": table,
                                                  "candidates": rows}, indent=1))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [0] + list(L.CRANIOCAUDAL)
    fig, ax = plt.subplots(figsize=(12, 4.5))
    colour = {"rib": "tab:red", "no rib": "tab:blue", "unknown": "0.6"}
    for r in rows:
        x = order.index(r["level"]) + np.random.default_rng(len(r["case"]) + r["level"]).uniform(-0.25, 0.25)
        ax.scatter(x, r["reach_mm"], s=12, c=colour[r["observation"]])
    ax.axhline(RibParams().reach_mm, ls="--", c="tab:red", lw=0.8)
    ax.axhline(RibParams().none_mm, ls=":", c="tab:blue", lw=0.8)
    ax.set_xticks(range(len(order)), ["stray"] + [L.name(x) for x in L.CRANIOCAUDAL], rotation=90)
    ax.set_ylabel("bone touching the mask reaches (mm from centre)")
    ax.set_title(f"rib cue per ground-truth level ({len(files)} CTs): red rib, blue no rib, grey unknown")
    fig.tight_layout()
    fig.savefig(out / "rib_cue.png", dpi=110)
    for g, t in table.items():
        print(f"{g:>7}: {t}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]])

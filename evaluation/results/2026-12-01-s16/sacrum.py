"""Each sacrum's centre error and Dice before (session 15) and after (session 16) the regrow, from the
two sessions' `spinert evaluate` reports: sacrum.json and sacrum.png beside this file.

    python evaluation/results/2026-12-01-s16/sacrum.py
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
BEFORE = HERE.parent / "2026-12-01-s15"
SETS = ("heldout-generator4", "val-generator4", "new-hard-300000", "real")


def sacra(report: Path) -> dict[str, dict]:
    cases = json.loads((report / "evaluation.json").read_text())["cases"]
    return {c["case"]: {"mm": v["match_mm"], "dice": v["dice"]}
            for c in cases for v in c["vertebrae"] if v["name"] == "S"}


def main() -> None:
    rows = []
    for s in SETS:
        old, new = sacra(BEFORE / s), sacra(HERE / s)
        for case in sorted(old):
            rows.append({"set": s, "case": case, "before_mm": old[case]["mm"], "after_mm": new[case]["mm"],
                         "before_dice": old[case]["dice"], "after_dice": new[case]["dice"]})
    (HERE / "sacrum.json").write_text(json.dumps(rows, indent=1) + "\n")
    found = [r for r in rows if r["before_mm"] is not None and r["after_mm"] is not None]
    fig, ax = plt.subplots(1, 2, figsize=(11, 4.8))
    colours = dict(zip(SETS, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for key, a, unit in (("mm", ax[0], "centre error (mm)"), ("dice", ax[1], "Dice")):
        for s in SETS:
            pts = [(r[f"before_{key}"], r[f"after_{key}"]) for r in found if r["set"] == s]
            if pts:
                a.scatter(*zip(*pts), s=28, color=colours[s], label=f"{s} ({len(pts)})")
        hi = max(max(r[f"before_{key}"], r[f"after_{key}"]) for r in found) * 1.05
        a.plot([0, hi], [0, hi], color="grey", lw=0.8, ls="--")
        a.set_xlim(0, hi), a.set_ylim(0, hi)
        a.set_xlabel(f"session 15 {unit}"), a.set_ylabel(f"session 16 {unit}")
    ax[0].set_title("sacrum centre: below the line is better")
    ax[1].set_title("sacrum Dice: above the line is better")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "sacrum.png", dpi=110)
    print(f"{len(found)} sacra found in both; wrote {HERE / 'sacrum.json'} and sacrum.png")


if __name__ == "__main__":
    main()

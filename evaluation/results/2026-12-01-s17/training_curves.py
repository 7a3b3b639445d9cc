"""Validation Dice per epoch of segmenter stages 7 (session 13) and 8 (session 17): training_curves.png."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

here = Path(__file__).parent
fig, ax = plt.subplots(figsize=(7, 3.8))
for name, label in (("segmenter-stage7-history.jsonl", "stage 7: 4-8-16-32-64, 34 x 120 steps (57 min)"),
                    ("segmenter-training-history.jsonl", "stage 8: widened to 8-16-32-64-128, 28 x 240 steps (61 min)")):
    rows = [json.loads(line) for line in (here / name).read_text().splitlines() if line.strip()]
    steps = 120 if "stage7" in name else 240
    ax.plot([(r["epoch"] + 1) * steps for r in rows], [r["dice_mean"] for r in rows], marker="o", ms=3, label=label)
ax.set_xlabel("training steps (batch 2, 64^3 sub-crops)")
ax.set_ylabel("validation Dice (48 ROIs, 3 mm offset)")
ax.set_title("segmenter fine-tunes on generator-4 phantoms, 2 CPU cores")
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
fig.savefig(here / "training_curves.png", dpi=120)

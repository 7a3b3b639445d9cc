"""Dice of the vertebrae the field of view cuts, baseline against current (two `spinert evaluate` JSONs).

    python cut_change.py BASELINE/evaluation.json CURRENT/evaluation.json
"""
import json
import sys

import numpy as np


def cut(path):
    d = json.load(open(path))
    return {(v["case"], v["label"]): v["dice"] or 0.0 for c in d["cases"] for v in c["vertebrae"] if v["at_face"]}


a, b = cut(sys.argv[1]), cut(sys.argv[2])
keys = sorted(set(a) & set(b))
d = np.array([b[k] - a[k] for k in keys])
print(f"{len(keys)} cut vertebrae: mean Dice {np.mean([a[k] for k in keys]):.3f} -> {np.mean([b[k] for k in keys]):.3f}; "
      f"{int((d > 0.01).sum())} up, {int((d < -0.01).sum())} down (by more than 0.01), {int((abs(d) <= 0.01).sum())} within 0.01")
for k in sorted(keys, key=lambda k: b[k] - a[k]):
    if abs(b[k] - a[k]) > 0.01:
        print(f"  {k[0]} {k[1]:3d}: {a[k]:.3f} -> {b[k]:.3f}")

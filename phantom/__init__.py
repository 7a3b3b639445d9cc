"""Synthetic spine CT phantoms (VerSe-style cases) for training and testing spinert.

    from phantom import generate, write_case, PROFILES
    case = generate(seed, profile="default")
    write_case(case, out_dir)   # <id>_ct.nii.gz, <id>_seg-vert_msk.nii.gz, <id>_ctd.json

A case is deterministic for (seed, profile). Seed ranges (keep them apart so held-out data is never trained on):
- training:             seeds 0 ... 99_999
- held-out evaluation:  seeds >= 100_000
- the bundled demo sample (spinert/data/sample_*): seed DEMO_SEED = 7_000_003 with profile "default", levels T10-S, 1 x 1 x 1.5 mm, cropped 140 x 160 mm in-plane,
  forced orientation "RAS" (see phantom.sample).

CLI: ``spinert phantom --out DIR --n N --seed S [--profile default|hard|clean] [--overwrite]``; case i of a
run uses seed S + i.
"""
from phantom.generator import Case, generate, label_centroids
from phantom.io import write_case
from phantom.profiles import PROFILES, Profile

DEMO_SEED = 7_000_003
TRAIN_SEEDS = range(0, 100_000)
EVAL_SEED_START = 100_000

__all__ = ["Case", "generate", "write_case", "label_centroids", "PROFILES", "Profile", "DEMO_SEED",
           "TRAIN_SEEDS", "EVAL_SEED_START"]

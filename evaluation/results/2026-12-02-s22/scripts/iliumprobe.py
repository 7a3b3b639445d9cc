# iliumprobe.py MODELS CT: the rib cue's ilium share of the lowest seen vertebra, per call, and the labels
import sys, numpy as np
import engine.ribs as ribs
from engine.pipeline import Cascade
orig = ribs.ilium_share
def probe(iso, owner, centers, boxes, spacing, params=None, which=None):
    out = orig(iso, owner, centers, boxes, spacing, params, which)
    w = np.flatnonzero(which) if which is not None else []
    print("ilium_share", [(int(i), np.round(centers[i], 0).tolist(), round(float(out[i]), 2), int((np.asarray(owner) == i + 1).sum())) for i in w], flush=True)
    return out
ribs.ilium_share = probe
with Cascade(models_dir=sys.argv[1], threads=2) as c:
    r = c.run(sys.argv[2])
print([(v.name, round(v.confidence, 2)) for v in r.vertebrae])

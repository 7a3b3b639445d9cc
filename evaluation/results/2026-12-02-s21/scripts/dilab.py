# dilab.py N CT...: the cascade with the labeller fed masks grown by N voxels (erosion if N<0): labels out
import sys, os, numpy as np
from scipy import ndimage as ndi
from dataclasses import replace
from engine.pipeline import Cascade
from engine import labels as L
n = int(sys.argv[1])
def grow(owner, k):
    o = np.asarray(owner)
    for _ in range(abs(k)):
        if k > 0:
            o = np.where(o == 0, ndi.grey_dilation(o, size=3), o)
        else:
            o = np.where(ndi.grey_erosion(o, size=3) == o, o, 0) if False else np.where(ndi.minimum_filter(o, size=3) == ndi.maximum_filter(o, size=3), o, 0)
    return o.astype(owner.dtype)
orig = Cascade._classify
def cls(self, seg, iso, first=0):
    return orig(self, replace(seg, owner=grow(seg.owner, n)), iso, first)
Cascade._classify = cls
with Cascade(threads=2) as c:
    for f in sys.argv[2:]:
        r = c.run(f); print(os.path.basename(f), [(v.name, round(v.confidence, 2)) for v in r.vertebrae], flush=True)

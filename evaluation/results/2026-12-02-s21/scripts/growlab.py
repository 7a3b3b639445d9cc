# growlab.py MODE N HU CT...: the cascade with the labeller fed masks grown N voxels, MODE "any" (into any
# unowned voxel) or "bone" (into unowned voxels above HU); prints labels and confidences
import sys, os, numpy as np
from scipy import ndimage as ndi
from dataclasses import replace
from engine.pipeline import Cascade
mode, n, hu = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
def grow(owner, iso):
    o = np.asarray(owner)
    room = np.asarray(iso) > hu if mode == "bone" else True
    for _ in range(n):
        o = np.where((o == 0) & room, ndi.grey_dilation(o, size=3), o)
    return o.astype(owner.dtype)
orig = Cascade._classify
Cascade._classify = lambda self, seg, iso, first=0: orig(self, replace(seg, owner=grow(seg.owner, iso)), iso, first)
with Cascade(threads=2) as c:
    for f in sys.argv[4:]:
        r = c.run(f); print(os.path.basename(f), [(v.name, round(v.confidence, 2)) for v in r.vertebrae], flush=True)

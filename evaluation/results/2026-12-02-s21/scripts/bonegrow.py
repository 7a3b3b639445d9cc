# bonegrow.py N HU CT...: the labeller fed masks grown N voxels into unowned bone (CT > HU): labels out
import sys, os, numpy as np
from scipy import ndimage as ndi
from dataclasses import replace
from engine.pipeline import Cascade
n, hu = int(sys.argv[1]), float(sys.argv[2])
def grow(owner, iso):
    o = np.asarray(owner); bone = np.asarray(iso) > hu
    before = int((o > 0).sum())
    for _ in range(n):
        o = np.where((o == 0) & bone, ndi.grey_dilation(o, size=3), o)
    print(f'   grow: {before} -> {int((o > 0).sum())} voxels (+{100 * ((o > 0).sum() / max(before, 1) - 1):.1f} %)', flush=True)
    return o.astype(owner.dtype)
orig = Cascade._classify
def cls(self, seg, iso, first=0):
    return orig(self, replace(seg, owner=grow(seg.owner, iso)), iso, first)
Cascade._classify = cls
with Cascade(threads=2) as c:
    for f in sys.argv[3:]:
        r = c.run(f); print(os.path.basename(f), [(v.name, round(v.confidence, 2)) for v in r.vertebrae], flush=True)

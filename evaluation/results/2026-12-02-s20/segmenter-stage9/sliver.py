import sys, numpy as np
import engine.segment as S
from engine.pipeline import Cascade
orig = S._paste
def spy(owner, best, prob, start, label, thr, xp, sizes=None, dup_overlap=0.0):
    used = orig(owner, best, prob, start, label, thr, xp, sizes, dup_overlap)
    if used and used != label:
        c = np.asarray(start) + 64
        print(f'   merged ROI {label} (centre kji {c.tolist()}, {int((prob > thr).sum())} vox) into {used}')
    return used
S._paste = spy
with Cascade(threads=2) as c:
    for f in sys.argv[1:]:
        r = c.run(f)
        print(f.split('/')[-1], [v.name for v in r.vertebrae], r.info.get('merged'))

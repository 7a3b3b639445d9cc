# gtlab.py CASE_CT...: labeller probabilities on the ground-truth masks vs the cascade's masks
import sys, numpy as np
from scipy.ndimage import find_objects
from engine.pipeline import Cascade
from engine.io import read_volume
from engine.preprocess import to_canonical, labels_to_canonical
from engine.label import classify
from engine import labels as L
with Cascade(threads=2) as c:
    pp = c.specs['labeller'].preprocess
    for f in sys.argv[1:]:
        vol = read_volume(f)
        canon = to_canonical(vol, spacing=1.0)
        gt = labels_to_canonical(read_volume(f.replace('_ct.', '_seg-vert_msk.')), canon)
        ids = [int(x) for x in np.unique(gt) if x]
        owner = np.zeros(gt.shape, np.uint8)
        for n, l in enumerate(ids):
            owner[gt == l] = n + 1
        boxes = find_objects(owner)
        ctr = np.array([np.mean(np.nonzero(owner == n + 1), axis=1) for n in range(len(ids))])
        pr = classify(c.sessions['labeller'], owner, canon.array.astype(np.float32), ctr, boxes, pp, 1.0)
        print(f.split('/')[-1])
        for n, l in enumerate(ids):
            top = np.argsort(pr[n])[::-1][:3]
            print(f'   GT {L.name(l):3s} vox {int((owner == n + 1).sum()):6d}:', ' '.join(f'{L.name(c.classes[t]) if c.classes[t] else "bg"}:{pr[n][t]:.2f}' for t in top))

# Run from the repository root: PYTHONPATH=. python evaluation/results/2026-12-01-s18/sacrumprobe.py (needs /work/ckpt/lab9)
# P(S) and the top level of each real CT's ground-truth vertebra masks, shipped vs session-18 labeller
import numpy as np
from scipy import ndimage
from engine.io import read_volume
from engine.preprocess import to_canonical, labels_to_canonical
from engine.label import classify
from engine.models import load_manifest
from engine.backends import load_session
R = '/work/shared/data/real/'
for models in ('/work/main/spinert/models', '/work/ckpt/lab9/models'):
    spec = load_manifest(models)['labeller']
    sess = load_session(spec, 'onnxruntime', 'fp32')
    cl = spec.classes
    print(models)
    for cid in ('tssample-example-ct', 'tptbox-sample-ct-L3'):
        vol = read_volume(R + cid + '_ct.nii.gz'); canon = to_canonical(vol, 1.0)
        lab = labels_to_canonical(read_volume(R + cid + '_seg-vert_msk.nii.gz'), canon)
        ids = [int(i) for i in np.unique(lab) if i > 0]
        owner = np.zeros(lab.shape, np.uint16)
        for n, i in enumerate(ids):
            owner[lab == i] = n + 1
        objs = ndimage.find_objects(owner)
        ctr = np.array([np.argwhere(owner == n + 1).mean(0) for n in range(len(ids))])
        p = classify(sess, owner, canon.array, ctr, objs, spec.preprocess, 1.0)
        print('  ', cid, [(t, cl[int(np.argmax(r))], round(float(r[cl.index(26)]), 2)) for t, r in zip(ids, p)])

"""Per-vertebra false-negative and false-positive voxels as shares of the true mask (FND = FN/GT is in the
report; FPD is over the whole image, so FP/GT follows from Dice and FND), split whole / cut by the FOV."""
import json, sys
import numpy as np
d = json.load(open(sys.argv[1]))
rows = {True: [], False: []}
for c in d['cases']:
    for v in c['vertebrae']:
        if not v['has_mask'] or not v['dice']:
            continue
        fn = v['fnd']; tp = 1 - fn
        rows[bool(v['at_face'])].append((v['dice'], fn, 2 * tp / v['dice'] - 2 * tp - fn))
for cut, r in rows.items():
    a = np.array(r)
    print(f"{'cut by the FOV' if cut else 'whole'}: n {len(a)}, Dice mean {a[:,0].mean():.3f} median {np.median(a[:,0]):.3f}; "
          f"FN/GT median {np.median(a[:,1]):.3f} (mean {a[:,1].mean():.3f}); FP/GT median {np.median(a[:,2]):.3f} (mean {a[:,2].mean():.3f})")

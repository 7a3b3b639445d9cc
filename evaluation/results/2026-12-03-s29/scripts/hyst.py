"""Experiment: output foreground = prob > thr, or prob > LO and the input CT's HU > T (bone the model was unsure of)."""
import sys, os, numpy as np
import engine.preprocess as PP, engine.pipeline as P
LO, T = float(os.environ['LO']), float(os.environ['T'])
from engine.preprocess import input_box, canonical_to_input
def masks_to_input(owner_kji, prob_kji, canon, vol, threshold):
    out = np.zeros(tuple(int(s) for s in vol.size[::-1]), dtype=owner_kji.dtype)
    from scipy.ndimage import find_objects
    spine = find_objects((np.asarray(owner_kji) > 0).view(np.uint8))
    if not spine or spine[0] is None: return out
    lo = np.array([s.start for s in spine[0]]) - 1; hi = np.array([s.stop - 1 for s in spine[0]]) + 1
    box = input_box(canon, vol, lo, hi)
    sub = tuple(slice(int(a), int(b)) for a, b in zip(box[0][::-1], box[1][::-1]))
    lab = canonical_to_input(owner_kji, canon, vol, box=box)
    pin = canonical_to_input(prob_kji, canon, vol, linear=True, box=box)
    fg = (pin > threshold * 255.0) | ((pin > LO * 255.0) & (np.asarray(vol.array)[sub] > T))
    res = np.where(fg, lab, 0).astype(lab.dtype)
    grow = np.argwhere(fg & (lab == 0))
    for _ in range(2):
        if grow.size == 0: break
        best = np.zeros(len(grow), dtype=lab.dtype)
        for ax in range(3):
            for d in (-1, 1):
                nb = grow.copy(); nb[:, ax] = np.clip(nb[:, ax] + d, 0, lab.shape[ax] - 1)
                np.maximum(best, res[nb[:, 0], nb[:, 1], nb[:, 2]], out=best)
        res[grow[:, 0], grow[:, 1], grow[:, 2]] = best
        grow = grow[best == 0]
    out[sub] = res
    return out
P.masks_to_input = masks_to_input
from spinert.cli import main
sys.exit(main(['run', *sys.argv[2:], '--out', sys.argv[1], '--overwrite', '--quiet']))

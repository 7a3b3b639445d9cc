"""Experiment: C1's ROI (centred on the dens) claims C2's dens; rerun C2's ROI and give C2 what it sees above
threshold inside C1's mask (connected to C2's mask)."""
import sys, numpy as np
from dataclasses import replace
import engine.pipeline as P
from engine.segment import _run_rois, mask_threshold, _find_boxes, _centroid, SegmentParams
import scipy.ndimage as ndi
orig = P.Cascade._vertebrae
MODE = sys.argv[1]
def patched(self, vol, canon, seg, labs, conf, probs, warnings):
    labs = np.asarray(labs)
    if MODE != 'off' and (labs == 1).any() and (labs == 2).any():
        i1, i2 = int(np.flatnonzero(labs == 1)[0]), int(np.flatnonzero(labs == 2)[0])
        pp = self.specs["segmenter"].preprocess; r = int(pp["roi"]); thr = mask_threshold(self.config.segment, pp)
        iso = canon.array
        owner = seg.owner.copy(); shape = owner.shape
        def paste(k, roi_prob, start):
            lo, hi = np.maximum(start, 0), np.minimum(start + r, shape)
            win = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
            pr = roi_prob[tuple(slice(int(a), int(b)) for a, b in zip(lo - start, hi - start))]
            ow = owner[win]
            take = (ow == i1 + 1) & (pr > thr)
            # only what is connected to C2's own mask through C2-above-threshold voxels
            lab, n = ndi.label(take | (ow == i2 + 1), structure=np.ones((3, 3, 3), bool))
            keep = np.unique(lab[ow == i2 + 1]); keep = keep[keep > 0]
            take &= np.isin(lab, keep)
            print('dens: moving', int(take.sum()), 'of C1', int((ow == i1 + 1).sum()), file=sys.stderr)
            ow[take] = i2 + 1
        _run_rois(self.sessions["segmenter"], iso, seg.centers_kji[[i2]], pp, None, paste, None)
        found = _find_boxes(owner, len(seg.voxels))
        voxels, boxes, centers = seg.voxels.copy(), list(seg.boxes), seg.centers_kji.astype(np.float64).copy()
        for i in (i1, i2):
            m = owner[found[i]] == i + 1
            voxels[i], boxes[i] = int(m.sum()), found[i]
            centers[i] = _centroid(m, np.array([b.start for b in found[i]]), np)
        seg = replace(seg, owner=owner, voxels=voxels, boxes=boxes, centers_kji=centers)
    return orig(self, vol, canon, seg, labs, conf, probs, warnings)
P.Cascade._vertebrae = patched
from spinert.cli import main
sys.exit(main(['run', *sys.argv[3:], '--out', sys.argv[2], '--overwrite', '--quiet']))

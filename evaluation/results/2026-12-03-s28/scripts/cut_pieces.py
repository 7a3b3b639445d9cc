"""How many pieces a vertebra the field of view cuts is inside the scan, and which of them a prediction holds.

    python cut_pieces.py GT_DIR PRED_DIR CASE LABEL

GT_DIR holds <case>_seg-vert_msk.nii.gz, PRED_DIR <case>_ct_seg-vert_msk.nii.gz (`spinert run`'s output).
Prints the ground-truth mask's 26-connected components (largest first) with the predicted labels on each.
"""
import sys

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

gt_dir, pred_dir, case, lab = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
g = sitk.GetArrayFromImage(sitk.ReadImage(f"{gt_dir}/{case}_seg-vert_msk.nii.gz")) == lab
p = sitk.GetArrayFromImage(sitk.ReadImage(f"{pred_dir}/{case}_ct_seg-vert_msk.nii.gz"))
comp, n = ndi.label(g, np.ones((3, 3, 3)))
sizes = ndi.sum(g, comp, range(1, n + 1))
q = p == lab
print(f"{case} label {lab}: {n} pieces, Dice {2 * np.count_nonzero(g & q) / (g.sum() + q.sum()):.3f}")
for c in np.argsort(sizes)[::-1]:
    piece = comp == c + 1
    u, cnt = np.unique(p[piece], return_counts=True)
    print(f"  {int(sizes[c]):6d} voxels at (k, j, i) {np.round(ndi.center_of_mass(piece), 1)}: predicted labels "
          f"{dict(zip(u.tolist(), cnt.tolist()))}")

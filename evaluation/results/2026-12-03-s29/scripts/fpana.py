import SimpleITK as sitk, numpy as np, sys
from scipy import ndimage as ndi
gt_dir, pred_dir, cids = sys.argv[1], sys.argv[2], sys.argv[3:]
tot = np.zeros(6)
for cid in cids:
    gimg = sitk.ReadImage(f'{gt_dir}/{cid}_seg-vert_msk.nii.gz'); g = sitk.GetArrayFromImage(gimg)
    p = sitk.GetArrayFromImage(sitk.ReadImage(f'{pred_dir}/{cid}_ct_seg-vert_msk.nii.gz'))
    sp = np.array(gimg.GetSpacing())[::-1]
    for L in np.unique(g)[1:]:
        gm = g == L; pm = p == L
        if pm.sum() == 0 or gm.sum() < 2000: continue
        # skip vertebrae at the face
        if any(np.take(gm, 0, axis=a).any() or np.take(gm, -1, axis=a).any() for a in range(3)): continue
        fp = pm & ~gm; fn = gm & ~pm
        dout = ndi.distance_transform_edt(~gm, sampling=sp)  # distance outside GT
        din = ndi.distance_transform_edt(gm, sampling=sp)
        fp_other = (fp & (g > 0)).sum()
        fp_near = (fp & (g == 0) & (dout <= 1.0)).sum(); fp_far = (fp & (g == 0) & (dout > 1.0)).sum()
        fn_near = (fn & (din <= 1.0)).sum(); fn_other = (fn & (p > 0)).sum()
        tot += [gm.sum(), fp_other, fp_near, fp_far, fn_near, fn.sum()]
print('G', tot[0], 'FP other-vert %.3f FP bg<=1mm %.3f FP bg>1mm %.3f | FN shell<=1mm %.3f FN total %.3f' % tuple(tot[1:] / tot[0]))

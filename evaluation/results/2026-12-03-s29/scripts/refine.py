import SimpleITK as sitk, numpy as np, sys, itertools
from scipy import ndimage as ndi
gt_dir, pred_dir = sys.argv[1], sys.argv[2]
import glob, os
cids = sorted(os.path.basename(f)[:-len('_ct_seg-vert_msk.nii.gz')] for f in glob.glob(f'{pred_dir}/*_seg-vert_msk.nii.gz'))
ADD = [None, 250, 350, 450, 600]
DROP = [None, 0, 100, 150, 200]
res = {}
for cid in cids:
    ct = sitk.GetArrayFromImage(sitk.ReadImage(f'{gt_dir}/{cid}_ct.nii.gz')).astype(np.float32)
    g = sitk.GetArrayFromImage(sitk.ReadImage(f'{gt_dir}/{cid}_seg-vert_msk.nii.gz'))
    p = sitk.GetArrayFromImage(sitk.ReadImage(f'{pred_dir}/{cid}_ct_seg-vert_msk.nii.gz'))
    fg = p > 0
    st = ndi.generate_binary_structure(3, 1)
    outer = ndi.binary_dilation(fg, st) & ~fg
    inner = fg & ~ndi.binary_erosion(fg, st)
    nb = ndi.maximum_filter(p, footprint=st)
    labs = [L for L in np.unique(g)[1:] if (p == L).any()]
    for a, d in itertools.product(ADD, DROP):
        q = p.copy()
        if a is not None:
            m = outer & (ct > a); q[m] = nb[m]
        if d is not None:
            q[inner & (ct < d)] = 0
        ds = [2 * ((g == L) & (q == L)).sum() / ((g == L).sum() + (q == L).sum()) for L in labs]
        res.setdefault((a, d), []).extend(ds)
for k, v in sorted(res.items(), key=lambda kv: -np.mean(kv[1]))[:8]:
    print(k, round(float(np.mean(v)), 4), len(v))
print('base', round(float(np.mean(res[(None, None)])), 4))

import sys, numpy as np
from pathlib import Path
from scipy.ndimage import distance_transform_edt as edt
from training.segmenter import load_roi
for f in sys.argv[1:]:
    ct, m, cut = load_roi(Path(f))
    if cut: continue
    idx = np.argwhere(m); jc = idx[:, 1].mean(); ic = idx[:, 2].mean()
    d = edt(m)
    j, i = idx[:, 1], idx[:, 2]
    hu = ct[m]
    body = j < jc - 5
    post = j > jc + 12
    lat = np.abs(i - ic) > 22  # transverse processes far from the midline
    thick = d[m]
    print(f"{Path(f).stem:32s} body med {np.median(hu[body]):5.0f} p90 {np.percentile(hu[body],90):5.0f} | post med {np.median(hu[post]):5.0f} | lateral med {np.median(hu[lat]) if lat.any() else 0:5.0f} n={lat.sum():5d} maxdepth {np.percentile(thick[lat],90) if lat.any() else 0:.1f} | post frac {post.mean():.2f} lat frac {lat.mean():.2f}")

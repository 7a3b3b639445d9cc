# segdiag.py NPZ...: segmenter on GT-centred ROIs; where the errors lie; a PNG of mid slices per ROI
import sys, numpy as np, onnxruntime as ort, matplotlib; matplotlib.use("Agg")
import matplotlib.pyplot as plt
from pathlib import Path
from scipy.ndimage import distance_transform_edt as edt
from training.segmenter import load_roi
from engine.modelio import segmenter_input
from engine.preprocess import crop_centered
from engine.models import read_manifest
pp = read_manifest()["models"]["segmenter"]["preprocess"]
so = ort.SessionOptions(); so.intra_op_num_threads = 2
s = ort.InferenceSession("spinert/models/segmenter.onnx", so, providers=["CPUExecutionProvider"])
files = [Path(f) for f in sys.argv[2:]]; out = Path(sys.argv[1]); out.mkdir(exist_ok=True, parents=True)
for p in files:
    ct, m, cut = load_roi(p)
    c = np.asarray(ct.shape) // 2
    x = segmenter_input(ct, c, pp)[None]
    pr = s.run(None, {"roi": x})[0][0, 0]
    y = crop_centered(m.astype(np.uint8), c, (128,) * 3, fill=0).astype(bool)
    hu = crop_centered(ct, c, (128,) * 3, fill=-1024)
    pb = pr > 0.5
    d_in = edt(y)
    fn, fp = y & ~pb, pb & ~y
    deep = fn & (d_in > 1.5)
    n = y.sum()
    # where the deep misses are: body (anterior of the centroid) vs posterior, along j (P)
    jj = np.nonzero(y)[1].mean()
    dj = np.nonzero(deep)[1] - jj if deep.any() else np.zeros(1)
    print(f"{p.stem:34s} cut={cut} V={n/1000:.1f}cc ratio={pb.sum()/n:.2f} dice={2*(y&pb).sum()/(y.sum()+pb.sum()):.3f} "
          f"FN={fn.sum()/n:.2f} deepFN={deep.sum()/n:.2f} FP={fp.sum()/n:.2f} deepFN_post={np.mean(dj>10):.2f} "
          f"HU(TP)={hu[y&pb].mean():.0f} HU(FN)={hu[fn].mean() if fn.any() else 0:.0f} HU(deepFN)={hu[deep].mean() if deep.any() else 0:.0f} "
          f"p(FN)med={np.median(pr[fn]) if fn.any() else 0:.2f}", flush=True)
    if cut: continue
    kk, jc, ic = [int(v) for v in np.round(np.argwhere(y).mean(0))]
    fig, ax = plt.subplots(1, 3, figsize=(13, 4.5))
    for a, (im, gy, gp, t) in zip(ax, [(hu[kk], y[kk], pb[kk], "axial"), (hu[:, :, ic], y[:, :, ic], pb[:, :, ic], "sagittal"),
                                       (hu[:, jc], y[:, jc], pb[:, jc], "coronal")]):
        a.imshow(im, cmap="gray", vmin=-300, vmax=1200); a.contour(gy, [0.5], colors="lime", linewidths=0.8)
        a.contour(gp, [0.5], colors="red", linewidths=0.8); a.set_title(t); a.axis("off")
    fig.suptitle(f"{p.stem}: green truth, red prediction"); fig.tight_layout(); fig.savefig(out / f"{p.stem}.png", dpi=70); plt.close(fig)

# ckreal.py CKPT NPZ...: a segmenter checkpoint on GT-centred ROIs: Dice, volume ratio, deep FN behind the body
import sys, numpy as np, torch
from pathlib import Path
from scipy.ndimage import distance_transform_edt as edt
from training.segmenter import load_roi
from training.nets import AttentionUNet3D, UNetConfig
from engine.modelio import segmenter_input
from engine.preprocess import crop_centered
from engine.models import read_manifest
torch.set_num_threads(1)
pp = read_manifest()["models"]["segmenter"]["preprocess"]
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
w = ck.get("extra", {}).get("widths") or [8, 16, 32, 64, 128]
m = AttentionUNet3D(UNetConfig(widths=w)); m.load_state_dict(ck["model"]); m.eval()
print("epoch", ck.get("epoch"))
ds, rs = [], []
for p in sys.argv[2:]:
    ct, msk, cut = load_roi(Path(p))
    c = np.asarray(ct.shape) // 2
    x = torch.from_numpy(segmenter_input(ct, c, pp)[None])
    with torch.no_grad():
        pr = m(x).numpy()[0, 0]
    y = crop_centered(msk.astype(np.uint8), c, (128,) * 3, fill=0).astype(bool)
    pb = pr > 0.5
    d = 2 * (y & pb).sum() / (y.sum() + pb.sum()); r = pb.sum() / y.sum()
    ds.append(d); rs.append(r)
    print(f"  {Path(p).stem:32s} cut={cut} dice={d:.3f} ratio={r:.2f}")
print(f"mean dice {np.mean(ds):.3f} median ratio {np.median(rs):.2f}")

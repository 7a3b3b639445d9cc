import sys, json, numpy as np, torch
from pathlib import Path
from training import segmenter, common, data
from training.nets import AttentionUNet3D, UNetConfig
from training.evaluate import _ort
torch.set_num_threads(2)
pp = segmenter.PREPROCESS
d = Path(sys.argv[1]); work = Path('/work/scratch/s29/roicache') / d.name
margin = int(np.ceil(segmenter.MAX_OFFSET_MM / pp["spacing_mm"])) + 1
ids = data.list_cases(d)[: int(sys.argv[2]) if len(sys.argv) > 2 else None]
files = segmenter.cache_rois(d, ids, work, pp, margin, 1)
m = AttentionUNet3D(UNetConfig(widths=[8, 16, 32, 64, 128]))
ck = torch.load('/work/scratch/s29/segtrain/ckpt/last.pt', map_location='cpu', weights_only=False)
m.load_state_dict(ck['model']); m.eval()
for name, pred in [('shipped', _ort(Path('/work/main/spinert/models/segmenter.onnx'))), ('last', common.torch_predictor(m, torch.device('cpu')))]:
    r = segmenter.evaluate(pred, files, pp, batch=1, anatomy=True)
    print(name, d.name, {k: round(v, 4) for k, v in r.items() if k in ('dice_mean', 'dice_mean_whole', 'volume_ratio_median', 'n_val_rois')}, flush=True)

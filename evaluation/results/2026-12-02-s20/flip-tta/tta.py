"""ROI Dice of the shipped segmenter on held-out ROIs: plain vs left-right flip averaged (TTA)."""
import sys, json, numpy as np
from pathlib import Path
sys.path.insert(0, '/work/main')
from engine.models import load_manifest
from training import segmenter
from training.evaluate import _ort
spec = load_manifest(None)['segmenter']
pp = spec.preprocess
files = sorted(Path(sys.argv[1]).glob('*.npz'))
if len(sys.argv) > 2: files = files[: int(sys.argv[2])]
f = _ort(spec.path('fp32'))
def tta(x):
    return 0.5 * (f(x) + f(x[..., ::-1].copy())[..., ::-1])
out = {}
for name, p in (('plain', f), ('flip_tta', tta)):
    out[name] = segmenter.evaluate(p, files, pp, batch=1)
    print(name, json.dumps(out[name]), flush=True)
json.dump(out, open('/work/scratch/s20/tta.json', 'w'), indent=1)

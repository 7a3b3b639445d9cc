# runpad.py MODE MODELS OUTDIR CT...: the cascade with the segmenter ROI padded beyond the scan by MODE
# (air = shipped; reflect = mirror the scan at its face)
import sys, os, numpy as np
import engine.modelio as M
from engine.pipeline import Cascade
from engine.io import read_volume
from engine.output import write_result
mode, models, out = sys.argv[1], sys.argv[2], sys.argv[3]
orig = M.crop_centered

def reflect_idx(start, size, n):
    i = np.arange(start, start + size)
    period = 2 * n
    i = np.mod(i, period)
    return np.where(i >= n, period - 1 - i, i)

def crop_reflect(arr, center_kji, size, fill, xp=np):
    size = np.asarray(size, dtype=int)
    start = np.round(np.asarray(center_kji, dtype=np.float64)).astype(int) - size // 2
    if np.all(start >= 0) and np.all(start + size <= arr.shape):
        return orig(arr, center_kji, size, fill, xp=xp)
    ix = [reflect_idx(int(s), int(z), int(n)) for s, z, n in zip(start, size, arr.shape)]
    return arr[np.ix_(*ix)]

if mode == 'reflect':
    M.crop_centered = crop_reflect
with Cascade(models_dir=models, threads=int(os.environ.get('OMP_NUM_THREADS', 2))) as c:
    for f in sys.argv[4:]:
        name = os.path.basename(f).replace('.nii.gz', '')
        res = c.run(read_volume(f))
        write_result(res, out, name, overwrite=True, source=f)
        print(name, [v.name for v in res.vertebrae], flush=True)

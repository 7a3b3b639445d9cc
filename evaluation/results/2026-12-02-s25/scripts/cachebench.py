import json, sys, time
from pathlib import Path
from training import data
from training.cascade_masks import SegmenterMasks
from training.labeller import PREPROCESS, cache_vertebrae
if __name__ == "__main__":
    ids = data.list_cases('/work/data/lab5')[:6]
    masks = SegmenterMasks('/work/scratch/s25/seg5')
    out = {}
    for w in (1, 2):
        t = time.perf_counter()
        files = cache_vertebrae(Path('/work/data/lab5'), ids, Path(f'/work/scratch/s25/cb{w}'), dict(PREPROCESS), masks, w)
        out[w] = time.perf_counter() - t
        print(w, len(files), round(out[w], 1), flush=True)
    print(json.dumps({"cases": len(ids), "seconds": out, "speedup": out[1] / out[2]}))

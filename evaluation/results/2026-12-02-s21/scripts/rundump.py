# rundump.py MODELS OUTDIR CT... : the cascade as `spinert run` (same files; Cascade overrides from env SPINERT_OVERRIDES, JSON), plus each case's decoder calls
# (inputs and labels) pickled into OUTDIR/decode/<case>.pkl, for replaying the decoder offline
import sys, os, pickle, numpy as np
import engine.sequence as S, engine.label as Lb
from engine.pipeline import Cascade
from engine.io import read_volume
from engine.output import write_result
models, out = sys.argv[1], sys.argv[2]
os.makedirs(f'{out}/decode', exist_ok=True)
calls = []
orig = S.decode_sequence
def spy(scores, classes, centers, params=None, **k):
    r = orig(scores, classes, centers, params, **k)
    calls.append(dict(scores=np.asarray(scores), classes=list(classes), centers=np.asarray(centers),
                      kw={a: (None if b is None else np.asarray(b)) for a, b in k.items()}, labels=list(r.labels)))
    return r
S.decode_sequence = spy
Lb.decode_sequence = spy
import json as _j
with Cascade(models_dir=models, threads=int(os.environ.get("OMP_NUM_THREADS", 2)), **_j.loads(os.environ.get("SPINERT_OVERRIDES", "{}"))) as c:
    for f in sys.argv[3:]:
        name = os.path.basename(f).replace('.nii.gz', '')
        calls.clear()
        res = c.run(read_volume(f))
        write_result(res, out, name, overwrite=True, source=f)
        pickle.dump(calls, open(f'{out}/decode/{name}.pkl', 'wb'))
        print(name, [v.name for v in res.vertebrae], flush=True)

# probs5.py CT...: with 5 recovery rounds and no confirmation, each final vertebra's labeller reading and
# near_level_p (its decoded level or a neighbouring one), the mask volume and the rib cue
import sys, os, numpy as np
import engine.sequence as S, engine.label as Lb
from engine.pipeline import Cascade
from engine import labels as L
from engine.chain import near_level_p
last = {}
orig = S.decode_sequence
def spy(scores, classes, centers, params=None, **k):
    r = orig(scores, classes, centers, params, **k)
    last.update(scores=np.asarray(scores), classes=list(classes), labels=list(r.labels), kw=k, centers=np.asarray(centers))
    return r
S.decode_sequence = spy; Lb.decode_sequence = spy
with Cascade(threads=2, recover_rounds=5, confirm_min_p=0.0) as c:
    for f in sys.argv[1:]:
        r = c.run(f)
        sc, cl = last['scores'], last['classes']
        print(os.path.basename(f))
        for i, lab in enumerate(last['labels']):
            top = np.argsort(sc[i])[::-1][:3]
            bg = sc[i][cl.index(0)] if 0 in cl else float('nan')
            near = near_level_p(sc[i], lab, cl)
            print(f'   near {near:.3f} {L.name(lab) if lab else "-":4s} vol {last["kw"]["volumes"][i]:8.0f} ribs {last["kw"]["ribs"][i]:2d} bg {bg:.2f} |', ' '.join(f'{L.name(cl[t]) if cl[t] else "bg"}:{sc[i][t]:.2f}' for t in top))

import sys, numpy as np
import engine.segment as S
from engine.pipeline import Cascade
lo_, be_ = S._lands_on_found, S._beyond
def lands(ow, above, take, sizes, m0, overlap, xp):
    r = lo_(ow, above, take, sizes, m0, overlap, xp)
    print(f'   extend proposal: above {int(above.sum())}, take {int(take.sum())}, unclaimed {int((above & (ow == 0)).sum())}, lands_on_found {r}')
    return r
def beyond(take, lo, centre, centers, seen, xp):
    r = be_(take, lo, centre, centers, seen, xp)
    print(f'      partial: unclaimed kept {int(take.sum())} beyond={r}')
    return r
S._lands_on_found, S._beyond = lands, beyond
with Cascade(threads=2) as c:
    for f in sys.argv[1:]:
        r = c.run(f)
        print(f.split('/')[-1], [v.name for v in r.vertebrae])

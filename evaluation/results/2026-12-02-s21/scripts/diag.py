# diag.py CASE...: the partial-path data of extend (window owner, ROI prob, centres) with the GT in the canonical frame
import sys, os, numpy as np
import engine.segment as S
from engine.pipeline import Cascade
from engine.io import read_volume
from engine.preprocess import to_canonical, labels_to_canonical
st = {}
orig_run, orig_lands, orig_beyond = S._run_rois, S._lands_on_found, S._beyond
def run_rois(session, iso, centers, preprocess, max_batch, paste, progress):
    def p2(i, prob, start):
        st['i'], st['prob'], st['start'], st['prop'] = i, np.asarray(prob).copy(), np.asarray(start), np.asarray(centers[i])
        return paste(i, prob, start)
    return orig_run(session, iso, centers, preprocess, max_batch, p2, progress)
def lands(ow, above, take, sizes, m0, overlap, xp):
    st['ow'], st['m0'] = ow.copy(), m0
    return orig_lands(ow, above, take, sizes, m0, overlap, xp)
def beyond(take, lo, centre, centers, seen, xp):
    r = orig_beyond(take, lo, centre, centers, seen, xp)
    st['n'] = st.get('n', 0) + 1
    np.savez_compressed(f"/work/scratch/s21/diag/{st['case']}_{st['n']}.npz", ow=st['ow'], prob=st['prob'], start=st['start'],
                        lo=np.asarray(lo), prop=np.asarray(centre), centers=np.asarray(centers), take=np.asarray(take), beyond=r)
    print('  beyond call', st['n'], 'take', int(take.sum()), 'beyond', r, 'prop', np.round(centre, 1), flush=True)
    return r
S._run_rois, S._lands_on_found, S._beyond = run_rois, lands, beyond
with Cascade(threads=int(os.environ.get('OMP_NUM_THREADS', 1))) as c:
    for case in sys.argv[1:]:
        st.clear(); st['case'] = case
        f = f'/work/data/test4/phantom-{case}_ct.nii.gz'
        vol = read_volume(f)
        canon = to_canonical(vol, spacing=1.0)
        gt = labels_to_canonical(read_volume(f.replace('_ct.', '_seg-vert_msk.')), canon)
        r = c.run(vol)
        np.save(f'/work/scratch/s21/diag/{case}_gt.npy', gt.astype(np.uint8))
        np.save(f'/work/scratch/s21/diag/{case}_iso.npy', np.asarray(canon.array if hasattr(canon, 'array') else canon.hu, np.int16))
        print(case, [v.name for v in r.vertebrae], flush=True)

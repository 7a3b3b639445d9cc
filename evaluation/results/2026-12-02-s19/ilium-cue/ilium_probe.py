# The ilium cue (engine.ribs.ilium_share) measured on ground-truth masks: bone touching each vertebra mask that
# no mask holds, in a window 150 mm to either side; share = rows of its levels holding such bone > 60 mm sideways
# usage: PYTHONPATH=. python ilium_probe.py CASE_ct.nii.gz... (the truth masks beside them)
import sys, glob, json, os
import numpy as np
from scipy import ndimage
from engine.io import read_volume
from engine.preprocess import to_canonical, labels_to_canonical
SP = 1.0; S = 2
def probe(ct, msk, half_mm=150, front=40, back=60, hu=200):
    vol = read_volume(ct); canon = to_canonical(vol, SP)
    lab = labels_to_canonical(read_volume(msk), canon)
    iso = canon.array
    ids = [int(i) for i in np.unique(lab) if i > 0]
    objs = ndimage.find_objects(lab)
    cube = np.ones((3, 3, 3), bool)
    rows = []
    for i in ids:
        box = objs[i - 1]
        m = lab[box] == i
        c = np.argwhere(lab == i).mean(0)
        _, cj, ci = np.round(c).astype(int)
        lo = np.array([box[0].start - S, cj - front, ci - half_mm]); hi = np.array([box[0].stop + S, cj + back + 1, ci + half_mm + 1])
        lo, hi = np.clip(lo, 0, lab.shape), np.clip(hi, 0, lab.shape)
        win = tuple(slice(int(a), int(b), S) for a, b in zip(lo, hi))
        ow = lab[win]; ctw = iso[win]
        near = ndimage.binary_dilation(ow == i, structure=cube)
        pieces, n = ndimage.label((ctw > hu) & (ow == 0), structure=cube)
        hit = np.unique(pieces[near & (pieces > 0)]); hit = hit[hit > 0]
        cnt = np.bincount(pieces.ravel(), minlength=n + 1)
        hit = hit[cnt[hit] >= 3]
        sel = np.isin(pieces, hit)
        cols = (lo[2] + np.flatnonzero(sel.any(axis=(0, 1))) * S - c[2]) * SP
        reach = float(np.abs(cols).max()) if cols.size else 0.0
        left = float(-cols.min()) if cols.size and cols.min() < 0 else 0.0
        right = float(cols.max()) if cols.size and cols.max() > 0 else 0.0
        volc = float(sel.sum()) * (S * SP) ** 3 / 1000
        # share of the window's k levels that hold touching bone beyond 60 mm sideways
        far = sel & (np.abs((lo[2] + np.arange(sel.shape[2]) * S - c[2]) * SP) > 60)[None, None, :]
        share = float(far.any(axis=(1, 2)).mean())
        room = min(c[2], lab.shape[2] - 1 - c[2]) * SP
        rows.append(dict(label=i, reach=reach, left=left, right=right, vol_cm3=volc, share=share, room=room,
                         mask_cm3=float((lab == i).sum()) * SP ** 3 / 1000))
    return rows
if __name__ == '__main__':
    out = {}
    for ct in sys.argv[1:]:
        cid = os.path.basename(ct)[:-10]
        rows = probe(ct, ct.replace('_ct.nii.gz', '_seg-vert_msk.nii.gz'))
        out[cid] = rows
        for r in rows:
            if r['label'] >= 17:
                print(f"{cid[-14:]:>14} {r['label']:3d} reach {r['reach']:5.0f} L {r['left']:4.0f} R {r['right']:4.0f} vol {r['vol_cm3']:6.1f} share {r['share']:.2f} room {r['room']:4.0f} mask {r['mask_cm3']:5.1f}", flush=True)
    json.dump(out, open(os.environ.get('OUTJ', 'pelvis.json'), 'w'))

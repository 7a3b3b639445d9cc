# The rib cue's codes on the cascade's candidates (last decoder call of each dumped case), per true level:
# how often ILIUM (2), RIBS (1), NO_RIBS (0), unknown (-1) -- the measured side of ILIUM_LIKELIHOOD.
# usage: python cascade_codes.py ROOT... where ROOT/<set>/pred/decode/*.pkl come from rundump.py (this folder)
import sys, json, collections, glob, os, pickle
import numpy as np
from engine.labels import NAMES
GT = {'heldout-generator4': '/work/data/test4', 'val-generator4': '/work/data/val4',
      'new-hard-300000': '/work/data/rib11', 'real': '/work/shared/data/real'}


def load(root):
    out = {}
    for s, gd in GT.items():
        for f in sorted(glob.glob(f'{root}/{s}/pred/decode/*.pkl')):
            cid = os.path.basename(f)[:-7]
            gt = [d for d in json.load(open(f'{gd}/{cid}_ctd.json')) if 'label' in d]
            calls = pickle.load(open(f, 'rb'))
            if calls:
                out[(s, cid)] = (calls, gt)
    return out


counts = collections.defaultdict(collections.Counter)
cases = collections.defaultdict(set)
for root in sys.argv[1:]:
    for (s, cid), (calls, gt) in load(root).items():
        c = calls[-1]
        g = np.array([[d['Y'], d['Z']] for d in gt]); gl = [d['label'] for d in gt]
        for code, x in zip(np.asarray(c['kw']['ribs']).tolist(), c['centers']):
            d = np.linalg.norm(g - x[1:], axis=1)
            lab = gl[int(d.argmin())] if d.min() < 20 else 0
            counts[lab][code] += 1
            if code == 2:
                cases[lab].add(f'{s}/{cid}')
def group(lab):
    return {0: 'no vertebra'}.get(lab) or ('C1-C7' if lab <= 7 else 'T1-T9' if lab <= 16 else
            'T10-T12, T13' if lab <= 19 or lab == 28 else 'L1-L4' if lab <= 23 else 'L5, L6' if lab <= 25 else NAMES[lab])
agg = collections.defaultdict(collections.Counter)
for lab, c in counts.items():
    agg[group(lab)].update(c)
rows = []
print('| true level | candidates | ilium | rib | no rib | unknown |')
print('| --- | --- | --- | --- | --- | --- |')
for g in ('C1-C7', 'T1-T9', 'T10-T12, T13', 'L1-L4', 'L5, L6', 'S', 'no vertebra'):
    c = agg.get(g, collections.Counter())
    n = sum(c.values())
    print(f'| {g} | {n} | {c[2]} | {c[1]} | {c[0]} | {c[-1]} |')
print()
for lab in sorted(cases):
    if lab != 26:
        print(NAMES.get(lab, lab), sorted(cases[lab]))

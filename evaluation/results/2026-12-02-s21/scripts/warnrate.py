# warnrate.py RUN_DIR SET...: how often the level warnings fire, and on which cases' labels were wrong
import sys, json, pickle, numpy as np
from engine.label import level_warnings
run = sys.argv[1]
tot = {}
for s in sys.argv[2:]:
    ev = json.load(open(f'{run}/{s}/report/evaluation.json'))
    rows = []
    for c in ev['cases']:
        name = c['case']
        calls = pickle.load(open(f'{run}/{s}/pred/decode/{name}_ct.pkl', 'rb'))
        last = calls[-1]
        w = level_warnings(np.asarray(last['labels']), last['kw'].get('ribs'))
        preds = c.get('predictions', [])
        wrong = sum(1 for p in preds if not p.get('correct'))
        kinds = ['rib' if 'rib cue' in x else 'anchor' for x in w]
        rows.append((name, kinds, wrong, len(preds)))
    n = len(rows)
    fired = [r for r in rows if r[1]]
    bad = [r for r in rows if r[2]]
    print(f'== {s}: {n} cases, warned {len(fired)} (rib {sum("rib" in r[1] for r in rows)}, anchor {sum("anchor" in r[1] for r in rows)}); '
          f'cases with a wrong label {len(bad)}, of them warned {sum(1 for r in bad if r[1])}')
    for r in rows:
        if r[1] or r[2]:
            print('   ', r)

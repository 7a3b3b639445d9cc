import json, sys, collections, numpy as np
a = json.load(open(sys.argv[1] + '/evaluation.json')); b = json.load(open(sys.argv[2] + '/evaluation.json'))
def per(r):
    return {(c['case'], v['label']): v for c in r['cases'] for v in c['vertebrae'] if v.get('dice') is not None}
A, B = per(a), per(b)
d = collections.defaultdict(list)
for k in A:
    if k in B:
        key = (A[k]['region'], 'cut' if A[k]['at_face'] else 'whole')
        d[key].append(B[k]['dice'] - A[k]['dice'])
for k in sorted(d): print(k, len(d[k]), 'mean %+.4f' % np.mean(d[k]), 'up', sum(x > 0.005 for x in d[k]), 'down', sum(x < -0.005 for x in d[k]))

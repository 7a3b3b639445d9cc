import sys, numpy as np
case, n, lab = sys.argv[1], sys.argv[2], int(sys.argv[3])
d = np.load(f'/work/scratch/s21/diag/{case}_{n}.npz'); gt = np.load(f'/work/scratch/s21/diag/{case}_gt.npy')
ow, prob, start, lo, prop, centers, take = d['ow'], d['prob'], d['start'], d['lo'], d['prop'], d['centers'], d['take']
hi = lo + np.array(ow.shape)
win = tuple(slice(a, b) for a, b in zip(lo, hi))
g = gt[win]; pr = prob[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))]
print('shape', gt.shape, 'lo', lo, 'hi', hi, 'prop', prop.round(1))
above = pr > 0.5
sl = g == lab
print('GT sliver vox', int((gt == lab).sum()), 'in window', int(sl.sum()), 'k range', np.nonzero((gt == lab).any((1, 2)))[0][[0, -1]])
labs = np.unique(ow[ow > 0])
for L in labs:
    c = centers[L - 1]
    m = ow == L
    print(f' owner {L} centre {c.round(1)} vox {int(m.sum())} holds sliver {int((m & sl).sum())}; gt labels of it:', np.unique(g[m], return_counts=True))
print('sliver: above', int((sl & above).sum()), 'unclaimed&above', int((sl & above & (ow == 0)).sum()), 'take', int((take & sl).sum()), 'take total', int(take.sum()))
# k profile: per k slice in window, gt sliver count, neighbour-owned count, above count, mean prob on sliver
ks = np.arange(lo[0], hi[0])
for kk in range(ow.shape[0]):
    a, b, c_, t = int(sl[kk].sum()), int((ow[kk] > 0).sum()), int(above[kk].sum()), int(take[kk].sum())
    gl = np.unique(g[kk][g[kk] > 0])
    if a or t or (b and abs(ks[kk] - prop[0]) < 30):
        print(f'k {ks[kk]} gt-sliver {a:4d} owned {b:5d} above {c_:5d} take {t:4d} gtlabels {gl} prob-on-sliver {pr[kk][sl[kk]].mean() if a else 0:.2f}')

"""How the labeller reads a part recovered beyond a chain end: alone, the end vertebra alone, and the two
as one mask. One JSON line per part (its LPS centre, the end's decoded label, the three probability rows)
for each CT; afterwards `piece_table.py` joins them with `spinert evaluate`'s verdict on the part.
python piece_reading.py OUT.jsonl CT..."""
import json
import sys

import numpy as np

import engine.pipeline as P
from engine.io import read_volume
from engine.segment import merge

rows, state = [], {}
_recover, _own = P.Cascade._recover, P.Cascade._own_parts


def recover(self, seg, iso, canon, probs, labs, info):
    state["iso"], state["canon"] = iso, canon
    return _recover(self, seg, iso, canon, probs, labs, info)


def own_parts(self, seg, labels, first, kind, side):
    iso, canon = state["iso"], state["canon"]
    k = seg.centers_kji[:first, 0]
    beyond = np.where(seg.centers_kji[first:, 0] < np.median(k), -1, 1)
    for n, i in enumerate(range(first, len(seg.voxels))):
        if kind[n] == 0:
            continue
        e = int(np.argmin(k) if beyond[n] < 0 else np.argmax(k))
        alone = self._classify(seg, iso)
        union = merge(seg, [(e, i)])
        e_u = e if e < i else e - 1
        rows.append({"case": state["case"], "xyz": canon.index_to_lps(seg.centers_kji[i:i + 1])[0].tolist(),
                     "end_label": int(labels[e]), "kind": int(kind[n]), "side": int(beyond[n]),
                     "classes": [int(c) for c in self.classes], "piece": alone[i].tolist(), "end": alone[e].tolist(),
                     "union": self._classify(union, iso)[e_u].tolist(),
                     "voxels": [int(seg.voxels[e]), int(seg.voxels[i])]})
    return _own(self, seg, labels, first, kind, side)


P.Cascade._recover, P.Cascade._own_parts = recover, own_parts
with P.Cascade(threads=2) as c, open(sys.argv[1], "w") as out:
    for path in sys.argv[2:]:
        state["case"] = path.split("/")[-1].removesuffix("_ct.nii.gz")
        rows.clear()
        c.run(read_volume(path))
        for r in rows:
            out.write(json.dumps(r) + "\n")
        out.flush()
        print(state["case"], len(rows), flush=True)

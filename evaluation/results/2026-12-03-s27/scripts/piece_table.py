"""Join piece_reading.py's rows with `spinert evaluate`'s verdict on the recovered prediction at the part
(the nearest one in its case, within 25 mm), and print how the labeller reads end, part and both:
p(end) / p(union): the probability of the end's decoded label or a level next to it (engine.chain.near_level_p).
python piece_table.py PIECES.jsonl EVALUATION.json..."""
import json
import sys

import numpy as np

from engine.chain import near_level_p

preds = {}
for f in sys.argv[2:]:
    for c in json.load(open(f))["cases"]:
        preds[c["case"]] = [p for p in c["predictions"] if p.get("recovered")]
print("case                      kind side end  part_mm3  p(end) p(union) gain  part_reads verdict")
for line in open(sys.argv[1]):
    r = json.loads(line)
    near = sorted(preds.get(r["case"], []), key=lambda p: np.linalg.norm(np.subtract(p["xyz"], r["xyz"])))
    d = np.linalg.norm(np.subtract(near[0]["xyz"], r["xyz"])) if near else np.inf
    verdict = "-" if d > 25 else ("right" if near[0]["correct"] else "wrong")
    pe = near_level_p(np.array(r["end"]), r["end_label"], r["classes"])
    pu = near_level_p(np.array(r["union"]), r["end_label"], r["classes"])
    reads = r["classes"][int(np.argmax(r["piece"]))]
    print(f"{r['case']:25s} {r['kind']:4d} {r['side']:4d} {r['end_label']:3d} {r['voxels'][1]:9d} {pe:7.3f} {pu:8.3f}"
          f" {pu - pe:+5.2f} {reads:10d} {verdict}")

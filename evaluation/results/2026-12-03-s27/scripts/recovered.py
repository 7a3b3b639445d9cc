"""Each prediction the chain logic found (ctd "recovered"), beside the nearest one the detector found:
its offset in LPS mm (Y: posterior, Z: up) and whether it matched a GT vertebra with its label.
python recovered.py [evaluation.json ...] (default: ../shipped/*/evaluation.json)"""
import glob
import json
import sys
from pathlib import Path

import numpy as np

files = sys.argv[1:] or sorted(glob.glob(str(Path(__file__).parent.parent / "shipped" / "*" / "evaluation.json")))
print("set                 case                      label right  posterior_mm  up_mm  dist_mm")
for f in files:
    name = Path(f).parent.name
    for c in json.load(open(f))["cases"]:
        found = [q for q in c["predictions"] if not q.get("recovered")]
        for p in (q for q in c["predictions"] if q.get("recovered")):
            q = min(found, key=lambda q: np.linalg.norm(np.subtract(q["xyz"], p["xyz"])))
            off = np.subtract(p["xyz"], q["xyz"])
            print(f"{name:19s} {c['case']:25s} {p['label']:5d} {str(p['correct']):5s} {off[1]:12.1f} {off[2]:6.1f}"
                  f" {np.linalg.norm(off):8.1f}")

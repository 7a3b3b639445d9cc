"""Ship a candidate's models into spinert/models: its FP32/FP16 files and manifest entries, each with the
former file as `previous`, the former stages kept and STAGE appended, the machine recorded. The former
INT8 file goes (it was calibrated for the former model); the candidate's INT8 file and calibration come
if `spinert calibrate --models CANDIDATE --guard` made them, and so does a centre offset fitted there
(`spinert calibrate-centres --models CANDIDATE`: tied to the segmenter's sha256). Held-out figures go.

python ship.py CANDIDATE_MODELS_DIR NAME "STAGE LINE" [NAME "STAGE LINE" ...]"""
import importlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
sys.path.insert(0, str(ROOT))
from engine.models import read_manifest, write_manifest  # noqa: E402
from training import export  # noqa: E402
from training.cards import TITLES  # noqa: E402

src, pairs = Path(sys.argv[1]), sys.argv[2:]
dst = ROOT / "spinert" / "models"
cand, shipped = read_manifest(src)["models"], read_manifest(dst)["models"]
for name, stage in zip(pairs[::2], pairs[1::2]):
    old, new = shipped[name], json.loads(json.dumps(cand[name]))
    new.pop("heldout", None)
    before = {k: v for k, v in old["trained"].items() if k not in ("previous", "stages")}
    new["trained"]["machine"] = old["trained"]["machine"]
    new["trained"]["previous"] = {"sha256": old["sha256"]["fp32"], "trained": before}
    new["trained"]["stages"] = [s.replace("(this file, ", "(") for s in old["trained"]["stages"]] + [stage]
    (dst / f"{name}_int8.onnx").unlink(missing_ok=True)
    for f in new["files"].values():
        shutil.copy2(src / f, dst / f)
    for f, h in new["sha256"].items():
        assert export.sha256_file(dst / new["files"][f]) == h, (name, f)
    write_manifest(dst, {name: new})  # the whole entry: the old int8/calibration/heldout keys go
    body = importlib.import_module(f"training.{name}").CARD_BODY
    (dst / f"{name}.md").write_text(export.card_text(name, TITLES[name], new, body))
    print(f"shipped {name} {new['sha256']['fp32'][:8]} (previous {old['sha256']['fp32'][:8]})")

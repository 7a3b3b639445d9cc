"""A models folder for a candidate: the shipped models with <name>… taken from SRC (their ONNX files and
manifest entries; SRC holds a manifest.json, or <name>'s manifest-entry.json as committed in
candidate-segmenter-gen5/). INT8 files of replaced models are dropped: they were calibrated for the old ones.

python mkfolder.py DST SRC segmenter [labeller]"""
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[4]
dst, src, names = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
if not dst.exists():
    shutil.copytree(ROOT / 'spinert' / 'models', dst)
man = json.loads((dst / 'manifest.json').read_text())
for n in names:
    entry = (json.loads((src / 'manifest.json').read_text())['models'][n] if (src / 'manifest.json').is_file()
             else json.loads((src / 'manifest-entry.json').read_text()))
    for f in src.glob(f'{n}*.onnx'):
        shutil.copy2(f, dst / f.name)
    (dst / f'{n}_int8.onnx').unlink(missing_ok=True)
    man['models'][n] = entry
(dst / 'manifest.json').write_text(json.dumps(man, indent=2))
print(dst, 'with', names, 'from', src)

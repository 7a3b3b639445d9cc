"""Test helper: make a models folder's copy hold the case of an INT8 file the calibration guard refused."""
from __future__ import annotations

import json
from pathlib import Path


def refuse_int8(models_dir: Path, name: str) -> None:
    """Drop ``name``'s accepted INT8 file from the copy's manifest and record a refusal for its FP32 file,
    as `spinert calibrate --guard` does (no-op when the entry has no INT8 file)."""
    path = Path(models_dir) / "manifest.json"
    m = json.loads(path.read_text())
    entry = m["models"][name]
    if "int8" not in entry["files"]:
        return
    for key in ("files", "sha256", "size_bytes"):
        entry[key].pop("int8", None)
    entry["int8_refused"] = {"reasons": ["test"], "source_sha256": entry["sha256"]["fp32"]}
    path.write_text(json.dumps(m))

"""Where INT8 models live and how they enter the models manifest.

``<name>_int8.onnx`` sits beside the FP32/FP16 files; the model's manifest entry gets "int8" in files /
sha256 / size_bytes (what engine.models reads, so Cascade(precision="int8") and `spinert export --precision
int8` find it) and a "calibration" record. A model the accuracy guard refuses is kept as
``<name>_int8.rejected.onnx`` and never registered; its entry records the refusal ("int8_refused"). For the
guard itself, a staging folder holds links to the FP32/FP16 files and the candidate INT8 files with a
manifest naming them, so the cascade runs the candidates without the real manifest being touched first.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from engine.models import ModelSpec, read_manifest, sha256_file, write_manifest

INT8_SUFFIX = "_int8.onnx"
REJECTED_SUFFIX = "_int8.rejected.onnx"


def int8_path(spec: ModelSpec) -> Path:
    return spec.root / f"{spec.name}{INT8_SUFFIX}"


def rejected_path(spec: ModelSpec) -> Path:
    return spec.root / f"{spec.name}{REJECTED_SUFFIX}"


def register_int8(models_dir: str | Path, name: str, path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Add/replace the "int8" file of ``name`` in manifest.json with its sha256, size and calibration record."""
    root = Path(models_dir)
    entry = dict(read_manifest(root)["models"][name])
    for key, val in (("files", path.name), ("sha256", sha256_file(path)), ("size_bytes", path.stat().st_size)):
        entry[key] = {**dict(entry.get(key, {})), "int8": val}
    entry["calibration"] = record
    entry.pop("int8_refused", None)
    write_manifest(root, {name: entry})
    return entry


def register_refusal(models_dir: str | Path, name: str, record: dict[str, Any]) -> dict[str, Any]:
    """Record in ``name``'s manifest entry that the guard refused its INT8 file (``int8_refused``, tied to
    the fp32 file's sha256): asked for INT8, the cascade then runs this model at FP16
    (engine.models.run_precision) instead of failing for want of a file that must not ship."""
    root = Path(models_dir)
    entry = dict(read_manifest(root)["models"][name])
    entry["int8_refused"] = {**record, "source_sha256": entry.get("sha256", {}).get("fp32", "")}
    write_manifest(root, {name: entry})
    return entry


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(src.resolve(), dst)
    except OSError:  # no symlinks (some file systems): a copy does the same job
        shutil.copy2(src, dst)


def staging_dir(specs: dict[str, ModelSpec], int8_files: dict[str, Path], dest: Path) -> tuple[Path, list[str]]:
    """A models folder in ``dest`` whose int8 files are ``int8_files`` (the candidates); models without a
    candidate keep their registered INT8 file, else their FP32 file stands in (returned as notes)."""
    dest.mkdir(parents=True, exist_ok=True)
    raw = read_manifest(next(iter(specs.values())).root)["models"]
    entries, notes = {}, []
    for name, spec in specs.items():
        e = dict(raw[name])
        files, sha = dict(e["files"]), dict(e.get("sha256", {}))
        src = {prec: spec.path(prec) for prec in files}
        if name in int8_files:
            src["int8"] = Path(int8_files[name])
        elif "int8" not in files or not spec.path("int8").is_file():
            src["int8"] = spec.path("fp32")
            notes.append(f"{name}: no INT8 model, its FP32 file stands in for it")
        for prec, p in src.items():
            link = dest / f"{name}.{prec}.onnx"
            _link(p, link)
            files[prec], sha[prec] = link.name, sha256_file(p)
        e["files"], e["sha256"] = files, sha
        e.pop("size_bytes", None)
        entries[name] = e
    write_manifest(dest, entries)
    return dest, notes

"""The shipped-model manifest (spinert/models/manifest.json): what each ONNX file is and how to feed it.

No torch here: the runtime reads this to find files, check their sha256 and build inputs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ModelError

SCHEMA = "spinert.models/1"
MODEL_NAMES = ("detector", "segmenter", "labeller")
PRECISIONS = ("fp32", "fp16", "int8")  # int8: the Q/DQ ONNX of `spinert calibrate`


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ModelSpec:
    """One model's manifest entry, with its folder so file paths resolve."""

    name: str
    root: Path
    files: dict[str, str]
    sha256: dict[str, str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    preprocess: dict[str, Any]
    classes: Any = None
    version: str = ""
    trained: Any = False
    metrics: dict[str, Any] = field(default_factory=dict)
    params: int = 0
    flops: int = 0
    raw: dict[str, Any] = field(default_factory=dict)

    def path(self, precision: str = "fp32") -> Path:
        if precision not in self.files:
            raise ModelError(f"model {self.name!r} has no {precision!r} file (has: {', '.join(self.files)})")
        return self.root / self.files[precision]

    def verify(self, precision: str | None = None) -> None:
        """Check that the file(s) exist and match the manifest's sha256; ModelError otherwise."""
        for prec in ([precision] if precision else list(self.files)):
            p = self.path(prec)
            if not p.is_file():
                raise ModelError(f"model file missing: {p}")
            want = self.sha256.get(prec)
            if not want:
                raise ModelError(f"manifest has no sha256 for {self.name} {prec}")
            got = sha256_file(p)
            if got != want:
                raise ModelError(f"model file {p} does not match the manifest (sha256 {got[:12]}... != {want[:12]}...)")
            if prec == "int8":
                # A Q/DQ file quantises one fp32 model: after a retrain it belongs to weights that are gone.
                src = (self.raw.get("calibration") or {}).get("source_sha256")
                if src and src != self.sha256.get("fp32"):
                    raise ModelError(f"{self.name} INT8 file {p.name} was calibrated from another fp32 model "
                                     f"(sha256 {src[:12]}... != {self.sha256.get('fp32', '')[:12]}...): "
                                     f"rerun spinert calibrate")

    @property
    def is_trained(self) -> bool:
        # "trained": false marks an untrained (random-weight) export; a trained one has a dict of provenance.
        return isinstance(self.trained, dict)


def run_precision(spec: ModelSpec, precision: str) -> str:
    """The precision ``spec`` runs at when ``precision`` is asked for the cascade: INT8 falls back to FP16
    for a model whose INT8 file ``spinert calibrate --guard`` refused (``int8_refused`` recorded for this
    very fp32 file: quantising it cost accuracy), as a TensorRT build keeps such layers in FP16. A model
    never calibrated still fails to load at INT8, with an error that names ``spinert calibrate``."""
    refused = (spec.raw.get("int8_refused") or {}).get("source_sha256")
    if (precision == "int8" and "int8" not in spec.files and "fp16" in spec.files
            and refused and refused == spec.sha256.get("fp32")):
        return "fp16"
    return precision


def default_models_dir() -> Path:
    import spinert

    return Path(str(spinert.asset_path("models")))


def read_manifest(models_dir: str | Path | None = None) -> dict[str, Any]:
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    mpath = root / "manifest.json"
    if not mpath.is_file():
        raise ModelError(f"no model manifest at {mpath}")
    try:
        data = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"model manifest {mpath} is unreadable: {exc}") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("models"), dict):
        raise ModelError(f"model manifest {mpath} is not a {SCHEMA} manifest")
    return data


def load_manifest(models_dir: str | Path | None = None) -> dict[str, ModelSpec]:
    """Parse manifest.json of ``models_dir`` (default: the shipped spinert/models) into ModelSpecs."""
    root = Path(models_dir) if models_dir is not None else default_models_dir()
    data = read_manifest(root)
    out: dict[str, ModelSpec] = {}
    for name, m in data["models"].items():
        try:
            out[name] = ModelSpec(
                name=name, root=root, files=dict(m["files"]), sha256=dict(m.get("sha256", {})),
                inputs=list(m["inputs"]), outputs=list(m["outputs"]), preprocess=dict(m.get("preprocess", {})),
                classes=m.get("classes"), version=str(m.get("version", "")), trained=m.get("trained", False),
                metrics=dict(m.get("metrics", {})), params=int(m.get("params", 0)), flops=int(m.get("flops", 0)),
                raw=m)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model manifest entry {name!r} in {root / 'manifest.json'} is malformed: {exc}") from exc
    return out


def write_manifest(models_dir: str | Path, models: dict[str, dict[str, Any]]) -> Path:
    """Write manifest.json (used by training/export); keeps entries of models not given."""
    root = Path(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    mpath = root / "manifest.json"
    current = {"schema": SCHEMA, "models": {}}
    if mpath.is_file():
        try:
            current = read_manifest(root)
        except ModelError:
            pass
    current["models"].update(models)
    current["models"] = {k: current["models"][k] for k in sorted(current["models"], key=_order)}
    tmp = mpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(current, indent=2) + "\n")
    tmp.replace(mpath)
    return mpath


def _order(name: str) -> int:
    return MODEL_NAMES.index(name) if name in MODEL_NAMES else len(MODEL_NAMES)

"""The JSON manifest written beside every engine: what it was built from, with what, for which GPUs.

Layout of an engine folder: ``<model>.<precision>.<rtx|trt>.engine`` + ``.json`` (this manifest) +
``<model>.<precision>.slim.onnx`` (the simplified ONNX the engine was built from).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import ModelError

SCHEMA = "spinert.engine/1"


@dataclass
class TensorBinding:
    name: str
    mode: str            # "input" | "output"
    shape: list[int]     # -1 = dynamic (the batch axis)
    dtype: str           # numpy name: "float32", "float16"...


@dataclass
class EngineManifest:
    model: str
    precision: str
    flavour: str                   # "tensorrt" | "tensorrt_rtx"
    trt_version: str
    engine_file: str
    engine_sha256: str
    engine_bytes: int
    source_file: str               # the model file in the models folder (ONNX fp32/fp16/int8)
    source_sha256: str             # what makes an engine stale after retraining
    slim_onnx_file: str
    slim_onnx_sha256: str
    opset: int
    target_cc: list[str]           # compute capabilities the engine runs on ("8.9", ...)
    gpu: dict[str, Any] | None     # the GPU present at build ({"name", "cc"}) or None (CPU-only build)
    strongly_typed: bool
    profiles: dict[str, dict[str, list[int]]]   # input -> {"min", "opt", "max"}
    io: list[TensorBinding]
    build_seconds: float
    built_at: str
    builder: str                   # "polygraphy X.Y" or "tensorrt API"
    timing_cache: str              # path, or why none was used
    parity: dict[str, Any] | str   # figures measured at export, or "not measured: <why>"
    onnx_parser_version: str = ""
    schema: str = SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def max_batch(self) -> int:
        return min(int(p["max"][0]) for p in self.profiles.values()) if self.profiles else 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineManifest":
        d = dict(d)
        if d.get("schema") != SCHEMA:
            raise ModelError(f"not a {SCHEMA} manifest (schema {d.get('schema')!r})")
        d["io"] = [TensorBinding(**t) for t in d.get("io", [])]
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def engine_stem(model: str, precision: str, flavour_short: str) -> str:
    return f"{model}.{precision}.{flavour_short}"


def engine_path(out_dir: str | Path, model: str, precision: str, flavour_short: str) -> Path:
    return Path(out_dir) / f"{engine_stem(model, precision, flavour_short)}.engine"


def manifest_path(engine: str | Path) -> Path:
    return Path(engine).with_suffix(".json")


def read(engine: str | Path) -> EngineManifest:
    """The manifest of ``engine``; ModelError if missing or unreadable."""
    mp = manifest_path(engine)
    if not mp.is_file():
        raise ModelError(f"engine manifest missing: {mp}")
    try:
        return EngineManifest.from_dict(json.loads(mp.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as exc:
        raise ModelError(f"engine manifest {mp} is unreadable: {exc}") from exc


def write(m: EngineManifest, engine: str | Path) -> Path:
    mp = manifest_path(engine)
    tmp = mp.with_suffix(".json.tmp")
    tmp.write_text(m.to_json())
    tmp.replace(mp)
    return mp

"""The calibration cache: input tensors (npz) and computed ranges (ONNX Runtime's JSON), reused on reruns.

Layout under the cache folder (default $SPINERT_CALIB_CACHE, else ~/.cache/spinert/calib):
    inputs/<model>-<set key>.npz         the calibration tensors of one model (+ where each came from)
    ranges/<model>-<method>-<key>.json   the tensor ranges, keyed by (model sha256, method, calibration set,
                                          quantisation settings); written and read by quantize_static itself
                                          (its calibration_cache_path), with a .meta.json saying what the key is.
A file that cannot be read is treated as absent (and rewritten), never trusted.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calibration.data import CalibInputs

CACHE_VERSION = 1


def default_cache_dir() -> Path:
    from spinert.paths import user_cache_dir

    return user_cache_dir("calib", "SPINERT_CALIB_CACHE")


def ranges_key(model_sha256: str, method: str, set_key: str, settings: dict) -> str:
    blob = json.dumps({"model": model_sha256, "method": method, "set": set_key, "settings": settings,
                       "version": CACHE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CalibCache:
    root: Path

    def inputs_path(self, model: str, set_key: str) -> Path:
        return self.root / "inputs" / f"{model}-{set_key[:24]}.npz"

    def ranges_path(self, model: str, method: str, key: str) -> Path:
        return self.root / "ranges" / f"{model}-{method}-{key[:24]}.json"

    def load_inputs(self, model: str, set_key: str) -> CalibInputs | None:
        path = self.inputs_path(model, set_key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["set_key"]) != set_key:
                    return None
                x = np.asarray(z["x"], dtype=np.float32)
                keys = [(str(c), int(k)) for c, k in zip(z["case"], z["key"])]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            return None
        return CalibInputs(model, x, keys)

    def save_inputs(self, inputs: CalibInputs, set_key: str) -> Path:
        path = self.inputs_path(inputs.model, set_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        # uncompressed: zlib on hundreds of MB of float ROIs costs more than it saves in a cache
        np.savez(tmp, x=inputs.x, case=np.asarray([c for c, _ in inputs.keys]),
                 key=np.asarray([k for _, k in inputs.keys], dtype=np.int64), set_key=np.asarray(set_key))
        tmp.replace(path)
        return path

    def write_meta(self, ranges: Path, meta: dict) -> None:
        ranges.parent.mkdir(parents=True, exist_ok=True)
        ranges.with_name(ranges.stem + ".meta.json").write_text(json.dumps(meta, indent=1, default=str))

"""Calibration inputs: real CT volumes -> the very tensors each model sees at runtime.

Every tensor is built by the runtime's own builders (engine.modelio) from the canonical isotropic frame
(engine.preprocess), with each model's manifest ``preprocess`` parameters, so INT8 ranges are measured on
the input distribution the cascade produces:
- detector: sagittal slices of the spine band (engine.detect.spine_band, as the cascade selects them);
- segmenter: 128^3 ROIs centred on the label map's vertebra centres (+ centre-weight channel);
- labeller: each vertebra's mask (and CT) from the label map, as after segmentation.

A data folder is VerSe-style: ``<id>_ct.nii.gz`` + ``<id>_seg-vert_msk.nii.gz`` (a ctd file is not needed:
centres are the label map's centres of mass in the canonical frame, which is how ctd files are defined).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from engine.errors import DatasetError, ModelError
from engine.models import ModelSpec, sha256_file
from engine.verse import SUFFIX, CanonicalCase, list_cases, load_canonical

BUILDER_VERSION = 1  # bump when what a sample is changes (invalidates cached inputs)
KINDS = ("detector", "segmenter", "labeller")


CalibCase = CanonicalCase  # one case in the canonical frame (engine.verse)


@dataclass
class CalibInputs:
    """A model's calibration tensors ``x`` [n, ...] and where each came from: (case id, slice or label)."""

    model: str
    x: np.ndarray
    keys: list[tuple[str, int]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


def select_cases(folder: str | Path, max_cases: int | None,
                 require: tuple[str, ...] = ("ct", "msk")) -> list[str]:
    """Up to ``max_cases`` (None: all) case ids spread evenly over the (sorted) cases of a VerSe-style
    folder, each with the ``require``d files."""
    ids = list_cases(folder, require=require)
    if max_cases is None or len(ids) <= max_cases:
        return ids
    pick = np.unique(np.round(np.linspace(0, len(ids) - 1, max_cases)).astype(int))
    return [ids[i] for i in pick]


def data_fingerprint(folder: str | Path, ids: Iterable[str]) -> str:
    """sha256 over the case ids and the sha256 of their CT and label files (contents, not names or dates)."""
    root = Path(folder)
    h = hashlib.sha256()
    for cid in ids:
        h.update(cid.encode())
        for kind in ("ct", "msk"):
            h.update(sha256_file(root / f"{cid}{SUFFIX[kind]}").encode())
    return h.hexdigest()


def set_fingerprint(data_fp: str, spec: ModelSpec, samples: int) -> str:
    """What one model's calibration set depends on: the data, the model's input preprocessing, the count."""
    blob = json.dumps({"data": data_fp, "model": spec.name, "preprocess": spec.preprocess, "samples": int(samples),
                       "inputs": spec.inputs, "builder": BUILDER_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_case(folder: str | Path, case_id: str, spacing: float) -> CalibCase:
    """Read a case with engine.io and bring CT and labels to the canonical frame (as training does)."""
    return load_canonical(folder, case_id, spacing)


def kind_of(spec: ModelSpec) -> str:
    if spec.name not in KINDS:
        raise ModelError(f"no calibration input builder for model {spec.name!r} (known: {', '.join(KINDS)})")
    if len(spec.inputs) != 1:
        raise ModelError(f"model {spec.name!r} has {len(spec.inputs)} inputs; calibration feeds exactly one")
    return spec.name


def candidates(kind: str, case: CalibCase) -> np.ndarray:
    """Sample keys of a case: sagittal slice indices (detector) or VerSe labels top to bottom (others)."""
    if kind == "detector":
        from engine.detect import spine_band

        band = spine_band(case.iso, case.spacing).slices
        if band.size == 0:  # no bone above threshold: the slices through the labelled vertebrae
            band = np.nonzero(case.labels.any(axis=(0, 1)))[0]
        return band.astype(np.int64)
    labs = sorted(case.centers, key=lambda lab: case.centers[lab][0])
    return np.asarray(labs, dtype=np.int64)


def build(kind: str, case: CalibCase, keys: np.ndarray, preprocess: dict) -> np.ndarray:
    """The model inputs for ``keys`` of ``case``: float32 [len(keys), ...], straight from engine.modelio."""
    from engine.modelio import detector_batch, labeller_input, segmenter_input

    if kind == "detector":
        return detector_batch(case.iso, [int(k) for k in keys], preprocess)[0]
    if kind == "segmenter":
        return np.stack([segmenter_input(case.iso, case.centers[int(k)], preprocess) for k in keys])
    return np.stack([labeller_input(case.labels == int(k), case.iso, case.centers[int(k)], preprocess)
                     for k in keys])


def _evenly(cands: np.ndarray, q: int) -> np.ndarray:
    """``q`` of ``cands`` spread evenly, both ends and the middle included. The middle of the spine band
    (the mid-sagittal slice) is where the detector fires hardest: calibrated without it, INT8 saturates
    exactly the activations that find the vertebrae."""
    if q >= cands.size:
        return cands
    pos = np.round(np.linspace(0, cands.size - 1, q)).astype(int)
    mid = (cands.size - 1) // 2
    if q >= 3:
        inner = np.arange(1, q - 1)
        pos[inner[np.argmin(np.abs(pos[inner] - mid))]] = mid
    return cands[np.unique(pos)]


def build_inputs(specs: dict[str, ModelSpec], folder: str | Path, ids: list[str], samples: int,
                 progress: Callable[[str], None] | None = None) -> dict[str, CalibInputs]:
    """``samples`` inputs per model, spread evenly over the cases (and within a case over its slices or
    vertebrae); each case is read once for all models. A case with too few candidates passes its share
    on to the next ones. DatasetError when a model gets no sample at all."""
    kinds = {name: kind_of(spec) for name, spec in specs.items()}
    sp = {float(s.preprocess.get("spacing_mm", 1.0)) for s in specs.values()}
    if len(sp) != 1:
        raise ModelError(f"models disagree on the canonical spacing: {sorted(sp)}")
    spacing = sp.pop()
    parts: dict[str, list[np.ndarray]] = {n: [] for n in specs}
    keys: dict[str, list[tuple[str, int]]] = {n: [] for n in specs}
    for c, cid in enumerate(ids):
        if progress:
            progress(cid)
        case = load_case(folder, cid, spacing)
        for name, spec in specs.items():
            left = samples - len(keys[name])
            if left <= 0:
                continue
            # an even share of what is still missing over the cases still to come
            share = -(-left // (len(ids) - c))
            pick = _evenly(candidates(kinds[name], case), share)
            if pick.size:
                parts[name].append(build(kinds[name], case, pick, spec.preprocess))
                keys[name].extend((cid, int(k)) for k in pick)
    out = {}
    for name in specs:
        if not keys[name]:
            raise DatasetError(f"{folder}: no calibration input for the {name} (no labelled vertebra / spine "
                               f"slice in {len(ids)} case(s))")
        out[name] = CalibInputs(name, np.ascontiguousarray(np.concatenate(parts[name]).astype(np.float32)),
                                keys[name])
    return out

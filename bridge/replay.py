"""SpineResults built from stored label maps: for robot-side integration tests without models or a GPU.

`spinert serve --replay DIR` answers every "run" request with the label map DIR/<id>_seg-vert_msk.nii.gz
(id = the CT's name without a trailing "_ct") instead of running the cascade, so a controller team can
exercise its client against a live server and a known answer.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import ndimage

from engine import labels as verse
from engine.errors import InputError
from engine.types import SpineResult, Vertebra, Volume

LABEL_SUFFIX = "_seg-vert_msk.nii.gz"


def result_from_label_map(lab: Volume, volume_id: str | None = None, confidence: float = 1.0) -> SpineResult:
    """A uint8 VerSe label map (input geometry) -> SpineResult with cropped masks and LPS centres.

    Centres are the LPS point of each label's mean voxel index, the convention of the VerSe-style
    `_ctd.json` files in this project.
    """
    arr = np.asarray(lab.array)
    present = [int(x) for x in np.unique(arr) if x != 0 and int(x) in verse.NAMES]
    boxes = ndimage.find_objects(arr.astype(np.int32, copy=False)) if present else []
    centres_kji = ndimage.center_of_mass(np.ones(arr.shape, dtype=np.uint8), arr, present) if present else []
    verts = []
    for label, c_kji in zip(present, centres_kji):
        box = boxes[label - 1]
        mask = arr[box] == label
        offset = tuple(int(s.start) for s in reversed(box))  # (i, j, k)
        centre = lab.index_to_lps(np.asarray(c_kji, dtype=np.float64)[::-1])
        verts.append(Vertebra(label=label, name=verse.name(label), center_lps=tuple(float(x) for x in centre),
                              confidence=float(confidence), mask=mask, offset_ijk=offset))
    verts.sort(key=lambda v: verse.ORDER_INDEX[v.label])
    return SpineResult(volume_id=volume_id or lab.name, geometry=lab.geometry(), vertebrae=verts,
                       backend="replay", precision="-", models={"replay": "label-map"})


def replay_runner(folder: str | os.PathLike) -> Callable:
    """A server runner that looks the answer up in `folder` (see module docstring)."""
    from engine.io import read_volume, volume_name

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"{root}: replay folder does not exist")

    def run(source, progress=None) -> SpineResult:
        name = source.name if isinstance(source, Volume) else volume_name(source)
        case = name[:-3] if name.endswith("_ct") else name
        path = root / f"{case}{LABEL_SUFFIX}"
        if progress:
            progress("replay", "started")
        if not path.is_file():
            raise InputError(f"replay: no label map {path.name} in {root}")
        result = result_from_label_map(read_volume(path, name=case), volume_id=case)
        if progress:
            progress("replay", "finished")
        return result

    return run

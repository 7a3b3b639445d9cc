"""Array-module dispatch: the same pre/post-processing code runs on numpy (CPU) and CuPy (GPU).

CuPy is optional and imported lazily, only to recognise a CuPy array; nothing here requires it.
"""
from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np


def _cupy_if_loaded() -> ModuleType | None:
    # A CuPy array can only exist if cupy was already imported by someone, so never import it here:
    # that keeps the CPU path free of CuPy's (slow, CUDA-initialising) import.
    return sys.modules.get("cupy")


def is_cupy(array: Any) -> bool:
    cp = _cupy_if_loaded()
    return cp is not None and isinstance(array, cp.ndarray)


def get_xp(*arrays: Any) -> ModuleType:
    """``numpy`` or ``cupy``, chosen by where the arrays live (CuPy if any of them is a CuPy array).

    Anything that is not a CuPy array (numpy arrays, lists, scalars, None) counts as host data.
    """
    for a in arrays:
        if is_cupy(a):
            return _cupy_if_loaded()  # type: ignore[return-value]
    return np


def to_numpy(array: Any) -> np.ndarray:
    """Host copy of an array from either module (no copy for numpy input)."""
    if is_cupy(array):
        return array.get()
    return np.asarray(array)


def is_numpy(xp: ModuleType) -> bool:
    return xp is np

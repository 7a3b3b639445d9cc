"""The GPU this machine has, through the CUDA driver library alone (no torch/CuPy/cuda-python import)."""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

from engine.backends.base import cuda_device_count

_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    cc: str  # "8.9"


@functools.lru_cache(maxsize=8)
def gpu_info(index: int = 0) -> GpuInfo | None:
    """Name and compute capability of CUDA device ``index``; None without a driver or GPU."""
    if cuda_device_count() <= index:
        return None
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    dev = ctypes.c_int()
    if cuda.cuDeviceGet(ctypes.byref(dev), index) != 0:
        return None
    major, minor = ctypes.c_int(), ctypes.c_int()
    cuda.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev)
    cuda.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev)
    buf = ctypes.create_string_buffer(256)
    cuda.cuDeviceGetName(buf, 256, dev)
    return GpuInfo(index, buf.value.decode(errors="replace"), f"{major.value}.{minor.value}")

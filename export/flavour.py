"""Which TensorRT is installed: `tensorrt` (TensorRT 10+) or TensorRT for RTX, behind one name.

TensorRT for RTX ships as the wheel `tensorrt-rtx-cu13-bindings`, whose module is `tensorrt_rtx_bindings`;
Polygraphy (>= 0.53) drives it when POLYGRAPHY_USE_TENSORRT_RTX=1 but imports it as `tensorrt_rtx`. We
register the bindings under that name too, so Polygraphy (and our code) import one module whichever wheel
provided it. Both flavours expose the same Python API subset we use (Builder, OnnxParser, Runtime,
ICudaEngine, IExecutionContext.set_tensor_address/execute_async_v3).
"""
from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from types import ModuleType

from engine.errors import BackendError

FLAVOURS = ("tensorrt", "tensorrt_rtx")
# CLI --target values and backend names -> flavour
TARGETS = {"trt": "tensorrt", "tensorrt": "tensorrt", "rtx": "tensorrt_rtx", "tensorrt_rtx": "tensorrt_rtx",
           "trt-rtx": "tensorrt_rtx", "tensorrt-rtx": "tensorrt_rtx"}
SHORT = {"tensorrt": "trt", "tensorrt_rtx": "rtx"}
INSTALL_HINT = {"tensorrt": "pip install tensorrt (needs a CUDA GPU to build)",
                "tensorrt_rtx": "pip install tensorrt-rtx-cu13-bindings tensorrt-rtx-cu13-libs"}


@dataclass(frozen=True)
class Flavour:
    name: str          # "tensorrt" | "tensorrt_rtx"
    module: ModuleType
    version: str

    @property
    def short(self) -> str:
        return SHORT[self.name]

    @property
    def is_rtx(self) -> bool:
        return self.name == "tensorrt_rtx"


def canonical(target: str) -> str:
    try:
        return TARGETS[target]
    except KeyError:
        raise BackendError(f"unknown TensorRT target {target!r} (choose rtx or trt)") from None


def _import(name: str) -> ModuleType | None:
    if name == "tensorrt_rtx":
        mod = sys.modules.get("tensorrt_rtx")
        if mod is not None:
            return mod
        for cand in ("tensorrt_rtx", "tensorrt_rtx_bindings"):
            try:
                mod = importlib.import_module(cand)
            except ImportError:
                continue
            # The bindings wheel has a sub-module called tensorrt_rtx; the package itself is the API.
            if not hasattr(mod, "Builder") and hasattr(mod, "tensorrt_rtx"):
                mod = getattr(mod, "tensorrt_rtx")
            sys.modules.setdefault("tensorrt_rtx", mod)
            return mod
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def installed(name: str) -> bool:
    return _import(name) is not None


def load(target: str) -> Flavour:
    """The flavour for ``target`` ("rtx", "trt", or a flavour name); BackendError if not installed."""
    name = canonical(target)
    mod = _import(name)
    if mod is None:
        raise BackendError(f"{name} is not installed ({INSTALL_HINT[name]})")
    version = str(getattr(mod, "__version__", "") or "")
    if not version and name == "tensorrt_rtx":
        version = str(getattr(sys.modules.get("tensorrt_rtx_bindings"), "__version__", "") or "")
    return Flavour(name, mod, version)


def default_target(gpu_present: bool) -> str:
    """Full TensorRT where it can build (it needs a GPU), else TensorRT for RTX (builds on a CPU)."""
    if gpu_present and installed("tensorrt"):
        return "tensorrt"
    if installed("tensorrt_rtx"):
        return "tensorrt_rtx"
    if installed("tensorrt"):
        return "tensorrt"
    raise BackendError("no TensorRT is installed (" + "; or ".join(INSTALL_HINT.values()) + ")")


def polygraphy_for(flavour: Flavour) -> None:
    """Point Polygraphy at ``flavour`` (its TensorRT loaders import the module lazily, by name)."""
    want = flavour.is_rtx
    os.environ["POLYGRAPHY_USE_TENSORRT_RTX"] = "1" if want else "0"
    try:
        from polygraphy import config as pg_config
    except ImportError:
        raise BackendError("polygraphy is not installed (pip install polygraphy)") from None
    if pg_config.USE_TENSORRT_RTX != want and "polygraphy.backend.trt" in sys.modules:
        # Polygraphy binds its lazy `trt` module when its backends are first imported: one flavour a process.
        raise BackendError(f"this process already drives Polygraphy with the other TensorRT flavour; "
                           f"run the {flavour.name} export in its own process")
    pg_config.USE_TENSORRT_RTX = want

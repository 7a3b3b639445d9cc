"""Optimisation profiles sized for the cascade: how many samples each stage sends in one call.

detector: sagittal slices of the spine band, a batch at a time (a 512-slice band goes in chunks of max);
segmenter: one 128^3 ROI per vertebra; at 24 ROIs the fp32 input alone is 24*2*128^3*4 B = 400 MB and the
first-level activations (8 ch at 128^3, fp16) ~800 MB each, so 24 is the ceiling for 8-12 GB RTX cards;
labeller: one 48x96x96 crop per vertebra (17 = C7..L5 + sacrum, the typical thoraco-lumbar scan; 32 covers
a whole spine with transitional vertebrae).
The runtime chunks larger batches by the profile's max, so a profile bounds memory, not what a caller may send.
"""
from __future__ import annotations

import re
from typing import Any

from engine.errors import SpinertError

# model -> (min, opt, max) batch
BATCH = {"detector": (1, 32, 64), "segmenter": (1, 8, 24), "labeller": (1, 17, 32)}
DEFAULT_BATCH = (1, 4, 8)


class ProfileError(SpinertError):
    """A --profile option that cannot be parsed or does not fit the model."""


def parse_overrides(items: list[str] | None) -> dict[str, tuple[int, int, int]]:
    """``["segmenter=1/2/4", ...]`` -> {"segmenter": (1, 2, 4)}; min <= opt <= max, all >= 1."""
    out: dict[str, tuple[int, int, int]] = {}
    for it in items or []:
        m = re.fullmatch(r"\s*([A-Za-z0-9_-]+)\s*=\s*(\d+)/(\d+)/(\d+)\s*", it)
        if not m:
            raise ProfileError(f"bad --profile {it!r} (expected MODEL=MIN/OPT/MAX, e.g. segmenter=1/8/24)")
        b = tuple(int(x) for x in m.groups()[1:])
        if not (1 <= b[0] <= b[1] <= b[2]):
            raise ProfileError(f"bad --profile {it!r}: need 1 <= MIN <= OPT <= MAX")
        out[m.group(1)] = b  # type: ignore[assignment]
    return out


def batch_for(model: str, overrides: dict[str, tuple[int, int, int]] | None = None) -> tuple[int, int, int]:
    if overrides and model in overrides:
        return overrides[model]
    return BATCH.get(model, DEFAULT_BATCH)


def profiles_for(model: str, inputs: list[dict[str, Any]], batch: tuple[int, int, int]) -> dict[str, dict[str, list[int]]]:
    """Per input {"min","opt","max"} shapes: the batch axis from ``batch``, the rest from the manifest's shape.

    Only the batch axis may be dynamic: a symbolic non-batch axis has no size the cascade could choose.
    """
    prof: dict[str, dict[str, list[int]]] = {}
    for inp in inputs:
        shape = list(inp["shape"])
        if not shape or isinstance(shape[0], int) and shape[0] > 0:
            raise ProfileError(f"{model}: input {inp['name']!r} has no dynamic batch axis (shape {shape})")
        rest = shape[1:]
        if any(not isinstance(d, int) or d <= 0 for d in rest):
            raise ProfileError(f"{model}: input {inp['name']!r} has a dynamic non-batch axis (shape {shape})")
        prof[inp["name"]] = {k: [b, *rest] for k, b in zip(("min", "opt", "max"), batch)}
    return prof

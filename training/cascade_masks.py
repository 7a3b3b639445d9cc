"""The segmenter's own masks for training the labeller (`spinert train labeller --masks-from MODELS`).

At run time the labeller reads the segmenter's mask, never the ground truth. A labeller trained on
ground-truth masks learns their style, and a better segmenter then costs labels: session 10's segmenter
candidate drew masks 9 % larger than the truth and the held-out labelling fell from 95.6 % to 93.9 %
(evaluation/results/2026-12-01-s10). So the labeller can train on what the cascade would hand it: every
vertebra of a case segmented by ``engine.segment.segment`` (the runtime's own function: fused owner map,
overlaps resolved by probability, largest component, size floor) from its ground-truth centre moved by a
detector-sized error, with the mask's centroid as its centre. The ground-truth label stays the target.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.segment import SegmentParams, segment
from training.segmenter import VAL_OFFSET_MM, random_offset


@dataclass
class CascadeMasks:
    """A case's vertebrae as the segmenter sees them: ``owner`` (canonical [k, j, i], 0 = background,
    n + 1 = vertebra n) and, per ground-truth label kept, its owner index and mask centroid (kji)."""

    owner: np.ndarray
    index: dict[int, int]
    centers: dict[int, np.ndarray]
    dropped: list[int]


class SegmenterMasks:
    """Callable ``(case) -> CascadeMasks`` with the segmenter of a models folder (ONNX Runtime, CPU).

    ``offset_mm``: each centre moves by exactly this much in a random direction (seeded by the case id,
    so a cache is reproducible), the detector's typical error (the segmenter's validation offset)."""

    def __init__(self, models_dir: str | Path, offset_mm: float = VAL_OFFSET_MM, threads: int = 1):
        from engine.backends import load_session
        from engine.models import load_manifest

        self.models_dir, self.threads = models_dir, threads
        self.spec = load_manifest(models_dir)["segmenter"]
        self.spec.verify("fp32")
        self.session = load_session(self.spec, "onnxruntime", "fp32", threads=threads)
        self.offset_mm = float(offset_mm)

    def __reduce__(self):
        # A cache worker process opens its own session (an ONNX Runtime session does not pickle).
        return SegmenterMasks, (self.models_dir, self.offset_mm, self.threads)

    @property
    def tag(self) -> str:
        """Names the cache and the card's record: which segmenter file drew the masks."""
        return f"segmenter-{self.spec.sha256['fp32'][:16]}"

    def __call__(self, case) -> CascadeMasks:
        labels = sorted(case.centers)
        rng = np.random.default_rng(zlib.crc32(case.case_id.encode()))
        sp = float(case.spacing)
        gt = np.stack([case.centers[lab] for lab in labels]) if labels else np.zeros((0, 3))
        off = np.stack([random_offset(rng, self.offset_mm / sp, exact=True) for _ in labels]) if labels else gt
        seg = segment(self.session, case.iso.astype(np.float32), gt + off, self.spec.preprocess, sp,
                      SegmentParams())
        index = {labels[int(src)]: n for n, src in enumerate(seg.source)}
        centers = {lab: seg.centers_kji[n] for lab, n in index.items()}
        return CascadeMasks(np.asarray(seg.owner), index, centers, [lab for lab in labels if lab not in index])

"""Untrained-but-real exports of the three models (true architectures, I/O and preprocessing; random weights).

They let the runtime integrate before training finishes; the manifest marks them ``"trained": false``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from training import detector, labeller, segmenter
from training.nets import AttentionUNet3D, LabellerConfig, ResNetTransformer3D, UNetConfig

PLACEHOLDER_CLASSES = list(range(1, 25))  # C1..L5


def export_placeholders(out: Path, work: Path, version: str = "0.0.0-untrained") -> dict:
    torch.manual_seed(0)
    work.mkdir(parents=True, exist_ok=True)
    res = {}
    seg = AttentionUNet3D(UNetConfig(widths=[8, 16, 32, 64])).eval()
    res["segmenter"] = segmenter.ship(seg, dict(segmenter.PREPROCESS), seg.cfg.widths, {}, False, out,
                                      work, version)["parity"]
    pp = dict(labeller.PREPROCESS)
    lab = ResNetTransformer3D(LabellerConfig(in_channels=len(pp["channels"]), num_classes=len(PLACEHOLDER_CLASSES),
                                             input_shape=list(pp["shape"]))).eval()
    res["labeller"] = labeller.ship(lab, pp, PLACEHOLDER_CLASSES, {}, False, out, work, version)["parity"]
    detector.offline_env()
    from ultralytics import YOLO

    det = YOLO(str(detector.one_class_yaml("yolo11n.yaml", work)))
    res["detector"] = detector.ship(det, dict(detector.PREPROCESS), {}, False, out, work, version,
                                    "yolo11n.yaml")["parity"]
    return res

"""Model cards: re-render a shipped model's card from its manifest entry (after recording held-out figures)."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from engine.models import read_manifest, write_manifest
from training import export

TITLES = {"detector": "Detector: YOLO on sagittal slices", "segmenter": "Segmenter: attention 3-D U-Net",
          "labeller": "Labeller: 3-D ResNet34-style + Transformer"}


def record_heldout(models_dir: str | Path, name: str, key: str, figures: dict[str, Any]) -> Path:
    """Store ``figures`` under the entry's ``heldout[key]`` (e.g. key = the data folder's name) and
    rewrite the card, so the card always shows every held-out evaluation of exactly this file."""
    root = Path(models_dir)
    entry = dict(read_manifest(root)["models"][name])
    entry["heldout"] = {**entry.get("heldout", {}), key: figures}
    write_manifest(root, {name: entry})
    body = importlib.import_module(f"training.{name}").CARD_BODY
    (root / f"{name}.md").write_text(export.card_text(name, TITLES[name], entry, body))
    return root / f"{name}.md"

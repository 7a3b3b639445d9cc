"""Detector: ultralytics YOLO (built from its yaml, no hub weights) on letterboxed sagittal slices, one class.

Dataset: every ``slice_step``-th sagittal slice ``iso[:, :, i]`` of the spine band of each case, written with
engine.modelio (the runtime's own windowing + letterbox) as S x S PNGs with YOLO labels. Box = the vertebra's
minimal bounding rectangle on that slice. Rule for unreliable boxes (the paper drops slices where the
vertebra is only a thin polygon at its edge): a vertebra is boxed on a slice only if its cross-section there
is >= MIN_AREA_FRAC of its largest sagittal cross-section and the box is >= MIN_SIDE_MM on both sides;
otherwise it is left unlabelled (a weak edge section, neither a positive nor a required negative).
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from engine.modelio import letterbox, sagittal_uint8
from training import common, data, export

PREPROCESS = {"spacing_mm": 1.0, "imgsz": 256, "hu_window": [-400.0, 1400.0], "plane": "sagittal",
              "slice_axis": 2, "channels": "gray x3", "letterbox_fill": 114, "conf": 0.25, "iou": 0.5}
MIN_AREA_FRAC = 0.3
MIN_SIDE_MM = 6.0
BAND_MARGIN_MM = 10.0  # slices beyond the outermost boxed one (negatives)


def offline_env() -> None:
    """No network: no hub weights, no font downloads, no settings sync, no AMP check model."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_VERBOSE", "False")
    from ultralytics.utils import SETTINGS

    try:
        SETTINGS.update({"sync": False, "hub": False} if "hub" in SETTINGS else {"sync": False})
    except Exception:  # noqa: BLE001 - settings are a nicety
        pass


def slice_boxes(labels: np.ndarray, spacing: float) -> dict[int, list[tuple[int, float, float, float, float]]]:
    """{slice i: [(label, x1, y1, x2, y2) in slice pixels (x = column j, y = row k)]} under the rule above."""
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if ids.size == 0:
        return {}
    nmax = int(ids.max()) + 1
    # areas[i, lab]: cross-section of each label on each sagittal slice
    areas = np.stack([np.bincount(labels[:, :, i].ravel(), minlength=nmax) for i in range(labels.shape[2])])
    best = areas.max(axis=0)
    out: dict[int, list] = {}
    min_side = MIN_SIDE_MM / spacing
    for i in range(labels.shape[2]):
        keep = [int(l) for l in ids if areas[i, l] > 0 and areas[i, l] >= MIN_AREA_FRAC * best[l]]
        if not keep:
            continue
        objs = ndimage.find_objects(labels[:, :, i], max_label=nmax - 1)
        boxes = []
        for lab in keep:
            sl = objs[lab - 1]
            if sl is None:
                continue
            y1, y2, x1, x2 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
            if (y2 - y1) >= min_side and (x2 - x1) >= min_side:
                boxes.append((lab, float(x1), float(y1), float(x2), float(y2)))
        if boxes:
            out[i] = boxes
    return out


def build_dataset(splits: dict[str, tuple[Path, list[str]]], root: Path, pp: dict, slice_step: int) -> Path:
    """Write images/<split>/*.png + labels/<split>/*.txt + data.yaml for ``splits`` (split -> (folder, case
    ids)); cached per case (a .done marker)."""
    import cv2

    size, sp = int(pp["imgsz"]), float(pp["spacing_mm"])
    for split, (data_dir, ids) in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for cid in tqdm(ids, desc=f"detector slices ({split})", leave=False):
            marker = root / "labels" / split / f".{cid}.done"
            if marker.is_file():
                continue
            case = data.load_case(data_dir, cid, sp)
            boxes = slice_boxes(case.labels, sp)
            if not boxes:
                marker.touch()
                continue
            band = int(round(BAND_MARGIN_MM / sp))
            lo, hi = max(0, min(boxes) - band), min(case.iso.shape[2] - 1, max(boxes) + band)
            for i in range(lo, hi + 1, slice_step):
                img, lb = letterbox(sagittal_uint8(case.iso, i, pp["hu_window"]), size)
                stem = f"{cid}__{i:04d}"
                cv2.imwrite(str(root / "images" / split / f"{stem}.png"), img)
                rows = []
                for _lab, *xyxy in boxes.get(i, []):
                    x1, y1, x2, y2 = lb.boxes_to_lb(np.asarray(xyxy))
                    rows.append(f"0 {(x1 + x2) / 2 / size:.6f} {(y1 + y2) / 2 / size:.6f} "
                                f"{(x2 - x1) / size:.6f} {(y2 - y1) / size:.6f}")
                (root / "labels" / split / f"{stem}.txt").write_text("\n".join(rows) + ("\n" if rows else ""))
            marker.touch()
    yaml = root / "data.yaml"
    images = {"train": "images/train", "val": "images/val"}
    images.update({s: f"images/{s}" for s in splits if s not in images})
    yaml.write_text(f"path: {root.resolve()}\n" + "".join(f"{k}: {v}\n" for k, v in images.items())
                    + "names:\n  0: vertebra\n")
    return yaml


def train(args, log=print) -> dict:
    offline_env()
    from ultralytics import YOLO

    device = common.pick_device(args.device)
    pp = dict(PREPROCESS)
    if args.imgsz:
        pp["imgsz"] = int(args.imgsz)
    if args.tiny:
        pp["imgsz"] = 128
    epochs = args.epochs or (1 if args.tiny else 30)
    batch = args.batch or (4 if args.tiny else 16)
    step = args.slice_step or (8 if args.tiny else 2)
    arch = args.arch or "yolo11n.yaml"
    split = data.training_split(args)
    tr_ids, va_ids = split.train, split.val
    work = Path(args.work)
    yaml = build_dataset({"train": (split.train_dir, tr_ids), "val": (split.val_dir, va_ids)}, work / "dataset", pp,
                         step)
    n_img = {s: len(list((work / "dataset" / "images" / s).glob("*.png"))) for s in ("train", "val")}
    log(f"detector: {arch}, imgsz {pp['imgsz']}, {n_img['train']} train / {n_img['val']} val slices "
        f"(every {step} mm), {epochs} epochs, batch {batch} on {device}")
    runs = work / "runs"
    last = runs / "train" / "weights" / "last.pt"
    common.set_threads(device, 2)
    t0 = time.time()
    train_kw = dict(data=str(yaml), epochs=epochs, imgsz=pp["imgsz"], batch=batch, device=
                    ("0" if device.type == "cuda" else "cpu"), workers=0 if device.type == "cpu" else 4,
                    amp=device.type == "cuda", plots=False, project=str(runs), name="train", exist_ok=True,
                    pretrained=False, seed=args.seed, deterministic=False, single_cls=True, verbose=False,
                    fliplr=0.0, hsv_h=0.0, hsv_s=0.0, mosaic=0.0 if args.tiny else 1.0,
                    close_mosaic=max(1, epochs // 5), cos_lr=True, patience=max(10, epochs),
                    warmup_epochs=0 if args.tiny else min(3.0, epochs / 10))
    if args.resume and last.is_file():
        log(f"resuming ultralytics run from {last}")
        model = YOLO(str(last))
        model.train(resume=True)
    else:
        if args.resume:
            log(f"--resume: no checkpoint at {last}, starting fresh")
        init = common.init_path(args)
        model = YOLO(str(init) if init else str(one_class_yaml(arch, work)))
        if init:
            train_kw.update(pretrained=True, warmup_epochs=0)
        model.train(**train_kw)
    best = runs / "train" / "weights" / "best.pt"
    model = YOLO(str(best if best.is_file() else last))
    m = model.val(data=str(yaml), split="val", imgsz=pp["imgsz"], batch=batch, device=train_kw["device"],
                  plots=False, verbose=False, single_cls=True, workers=0)
    metrics = {"mAP50": float(m.box.map50), "mAP50_95": float(m.box.map), "precision": float(m.box.mp),
               "recall": float(m.box.mr), "n_val_slices": n_img["val"]}
    log(f"detector final (best epoch, val slices): {metrics}")
    trained = {"data": str(args.data), "val_data": str(split.val_dir), "cases_train": tr_ids, "cases_val": va_ids,
               "seed": args.seed,
               "schedule": {"arch": arch, "init": common.init_label(args), "epochs": epochs, "batch": batch,
                            "imgsz": pp["imgsz"],
                            "slice_step_mm": step, "optimizer": "ultralytics auto", "cos_lr": True,
                            "augment": "mosaic, scale, translate; no flips/hsv", "box_rule":
                            f"area >= {MIN_AREA_FRAC} x max sagittal area and sides >= {MIN_SIDE_MM} mm"},
               "device": str(device), "date": export.now_iso(), "wall_time_s": round(time.time() - t0, 1),
               "tiny": bool(args.tiny)}
    return ship(model, pp, metrics, trained, Path(args.out), work, args.version, arch)


def one_class_yaml(arch: str, work: Path) -> Path:
    """The ultralytics architecture yaml with nc = 1 (file name keeps the scale letter, e.g. yolo11n)."""
    import yaml as _yaml
    from ultralytics.nn.tasks import yaml_model_load

    cfg = dict(yaml_model_load(arch))
    cfg["nc"] = 1
    cfg.pop("yaml_file", None)
    dst = work / f"{Path(arch).stem}-1c.yaml"
    work.mkdir(parents=True, exist_ok=True)
    dst.write_text(_yaml.safe_dump(cfg, sort_keys=False))
    return dst


def export_yolo(model, work: Path, imgsz: int) -> Path:
    """ultralytics' own ONNX export: input "images" [N,3,S,S], output "output0" [N,5,A] raw (no NMS).

    Exported with dynamic axes, then the spatial dims are pinned to S (and A) and the batch dim named "N".
    """
    import onnx

    offline_env()
    f = model.export(format="onnx", imgsz=imgsz, dynamic=True, simplify=True, opset=17, nms=False,
                     half=False, device="cpu", verbose=False)
    m = onnx.load(f)
    n_anchors = sum((imgsz // s) ** 2 for s in (8, 16, 32))
    fixed = {"batch": None, "height": imgsz, "width": imgsz, "anchors": n_anchors}
    for v in list(m.graph.input) + list(m.graph.output):
        for d in v.type.tensor_type.shape.dim:
            if d.dim_param in fixed:
                if fixed[d.dim_param] is None:
                    d.dim_param = "N"
                else:
                    d.dim_value = fixed[d.dim_param]
    dst = work / "detector.onnx"
    onnx.save(m, str(dst))
    if Path(f).resolve() != dst.resolve():
        Path(f).unlink(missing_ok=True)  # ultralytics writes beside the weights (the cwd for a yaml model)
    return dst


def ship(model, pp, metrics, trained, out: Path, work: Path, version: str, arch: str) -> dict:
    import torch

    work.mkdir(parents=True, exist_ok=True)
    fp32 = export_yolo(model, work, int(pp["imgsz"]))
    fp16 = export.to_fp16(fp32, work / "detector_fp16.onnx")
    size = int(pp["imgsz"])
    x = np.random.default_rng(0).random((2, 3, size, size), dtype=np.float32)
    net = model.model.float().eval()
    for mod in net.modules():  # the export graph: raw head output, as in ultralytics' exporter
        if hasattr(mod, "export"):
            mod.export = True
        if hasattr(mod, "format"):
            mod.format = "onnx"

    class Raw(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, t):
            y = self.m(t)
            return y[0] if isinstance(y, (list, tuple)) else y

    raw = Raw(net)
    par = {"fp32_max_abs": export.parity(raw, fp32, x), "fp16_max_abs": export.parity(raw, fp16, x),
           "input": f"uniform [0,1) {list(x.shape)}",
           "note": "outputs are letterboxed pixels (boxes) and [0,1] scores: fp16 error is in pixels"}
    from training.nets import count_params

    flops = 0
    try:
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            raw(torch.zeros(1, 3, size, size))
        flops = int(fc.get_total_flops())
    except Exception:  # noqa: BLE001 - cost figures are informative only
        pass
    entry = {"preprocess": pp, "classes": ["vertebra"], "version": version,
             "arch": {"name": f"ultralytics {arch}"}, "trained": trained, "metrics": metrics,
             "params": count_params(net), "flops": flops, "parity": par}
    card = export.card_text("detector", "Detector: YOLO on sagittal slices", entry, CARD_BODY)
    return {"manifest": str(export.ship("detector", fp32, fp16, out, entry, card)), "metrics": metrics,
            "parity": par}


CARD_BODY = """
Finds every vertebra on one sagittal slice of the canonical isotropic frame (seed 000, stage 1); the runtime
clusters the boxes of all slices into vertebra centres (two-stage DBSCAN).

- input `images` float32 [N, 3, S, S] in [0, 1], S = `preprocess.imgsz`: `iso[:, :, i]` (rows = k head->feet,
  cols = j anterior->posterior) windowed with `hu_window` to uint8 (`engine.modelio.sagittal_uint8`), gray
  replicated to 3 channels, letterboxed ultralytics-style (`engine.modelio.letterbox`: scale = S / max(H, W),
  bilinear, centred, pad 114), divided by 255 (`engine.modelio.detector_batch`).
- output `output0` float32 [N, 5, A]: ultralytics' raw head: (cx, cy, w, h) in letterboxed pixels and the
  score of the single class "vertebra", no NMS (apply `conf` / `iou` of `preprocess`).
- training boxes: the vertebra's minimal axis-aligned bounding rectangle on the slice; edge sections are not
  boxed (rule in `trained.schedule.box_rule`).
- image size: the paper uses 640; on a 2-core CPU one 640 training image costs ~6x a 256 one. A 420 mm
  field of view at 256 px still draws a vertebral body ~15 px tall, enough for YOLO's stride-8 head, and
  the box centres are only used to place the segmenter's ROI (final centres come from the masks). The
  runtime reads `imgsz` from here, so a 640 model needs no engine change.
"""

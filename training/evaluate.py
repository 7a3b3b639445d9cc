"""Acceptance figures of a SHIPPED model (its ONNX file, through onnxruntime) on a held-out VerSe-style folder.

`spinert train <model> --evaluate DIR [--out MODELS] [--work W]`: detector mAP50 on sagittal slices,
segmenter Dice per vertebra on ROIs offset by a realistic detector error, labeller single-vertebra accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.models import load_manifest
from training import common, data


def _ort(path: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return lambda x: sess.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})[0]


def evaluate(args, log=print) -> dict:
    spec = load_manifest(args.out)[args.model]
    spec.verify()
    prec = getattr(args, "precision", None) or "fp32"
    ids = data.list_cases(args.evaluate)
    if args.max_cases:
        ids = ids[: args.max_cases]
    work = Path(args.work)
    pp = spec.preprocess
    if args.model == "segmenter":
        from training import segmenter

        margin = int(np.ceil(segmenter.MAX_OFFSET_MM / pp["spacing_mm"])) + 1
        files = segmenter.cache_rois(Path(args.evaluate), ids, work / "eval_cache", pp, margin,
                                     common.cache_workers(args))
        res = segmenter.evaluate(_ort(spec.path(prec)), files, pp, batch=1, anatomy=True)
    elif args.model == "labeller":
        from training import labeller

        masks = labeller.mask_source(args)
        cache = labeller.cache_folder(work / "eval_cache", masks)
        samples = labeller.Samples(labeller.cache_vertebrae(Path(args.evaluate), ids, cache, pp, masks,
                                                            common.cache_workers(args)), pp)
        res = labeller.evaluate(_ort(spec.path(prec)), samples, [int(c) for c in spec.classes])
        res["n_unknown_label"] = sum(1 for lab in samples.labels() if lab not in spec.classes)
    else:
        from training import detector

        detector.offline_env()
        from ultralytics import YOLO

        step = args.slice_step or 2
        yaml = detector.build_dataset({"val": (Path(args.evaluate), ids)}, work / "eval_dataset", pp, step)
        m = YOLO(str(spec.path(prec)), task="detect").val(data=str(yaml), split="val", imgsz=int(pp["imgsz"]),
                                                           batch=1, device="cpu", plots=False, verbose=False,
                                                           single_cls=True, workers=0, rect=False)
        res = {"mAP50": float(m.box.map50), "mAP50_95": float(m.box.map), "precision": float(m.box.mp),
               "recall": float(m.box.mr)}
    res.update({"data": str(args.evaluate), "cases": len(ids), "precision_file": prec,
                "model_sha256": spec.sha256.get(prec)})
    log(f"{args.model} held-out evaluation: {res}")
    return res

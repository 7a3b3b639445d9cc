"""Labeller: one vertebra's mask (optionally + CT) resampled to 48x96x96 -> scores over VerSe labels.

Inputs are built by engine.modelio.labeller_input, the very function the runtime calls, from per-vertebra
crops cached once (mask bits + int16 CT), with the centre jittered by a few mm at training time.
"""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.label import decode_labels, softmax
from engine.modelio import labeller_input
from engine.preprocess import AIR_HU, crop_centered
from training import common, data, export
from training.lowres import COARSE_VOXEL, coarse_voxel, simulate_resolution
from training.nets import LabellerConfig, ResNetTransformer3D

PREPROCESS = {"spacing_mm": 1.0, "shape": [48, 96, 96], "crop": "fixed", "extent_mm": [128.0, 128.0, 128.0],
              "margin_mm": 2.0, "hu_window": [-400.0, 1400.0], "channels": ["mask", "ct"]}
JITTER_MM = 3.0
# Tight fields of view (a 110 mm crop around one level, a 90 mm slab): with this probability a training
# sample loses everything beyond a random 30-80 mm of its centre along some axes, CT and mask alike,
# exactly as the runtime pads a small scan with air.
FOV_CUT_P = 0.3
FOV_CUT_MM = (30.0, 80.0)
# The runtime's mask is the segmenter's, not the ground truth: a voxel more or less at the boundary
# (erosion/dilation with this probability, half each). The CT gets the segmenter's scanner spread
# (training.segmenter.AUGMENT: thick-slice and in-plane blur, noise), and the patient's mirror image.
MASK_MORPH_P = 0.3
FLIP_I_P = 0.5
# Patients differ in size by more than neighbouring levels do (~4 % a level in the lumbar spine): with
# this probability a sample is zoomed by a random factor (and each axis by a few % more), so the level is
# read from shape rather than absolute size alone. Real vertebrae (../shared/data/real) read one level
# too high at their own size and best at x1.1. Zoom = a larger or smaller fixed crop: no resampling cost.
SCALE_P = 0.0  # off: the shipped schedule (a run with 0.5 did not help on real vertebrae; see the card)
SCALE = (0.87, 1.15)
SCALE_AXIS = 0.04
# Coarse scanners (training.lowres: 1-3.2 mm pixels, 1-5 mm slices), with this probability per sample. Off:
# the shipped schedule. Session 8 fine-tuned the shipped labeller with 0.35 for 16 epochs: on the real
# vertebrae with their ground-truth masks 8/15 against 4/15 (+-1 level 14/15 against 11/15), held-out
# phantoms 82.6 % against 81.5 %; but in the cascade the real CTs fell from 73 % identified to 0 % and the
# held-out phantoms from 90.8 to 89.8 % (its L5 scores got weaker, and they anchor the real abdomen's chain).
COARSE_P = 0.0


def cache_vertebrae(data_dir: Path, ids: list[str], work: Path, pp: dict, masks=None, workers: int = 1) -> list[Path]:
    """One .npz per vertebra: mask bits and CT (int16) of a box large enough for both crop modes + jitter.

    ``masks``: None = the ground-truth masks and centres; a ``training.cascade_masks.SegmenterMasks`` = the
    segmenter's masks and their centroids (vertebrae it drops are left out, as the cascade leaves them).
    Cases already cached (``<id>.done``) are kept; the rest are cached in ``workers`` processes."""
    work.mkdir(parents=True, exist_ok=True)
    todo = [cid for cid in ids if not (work / f"{cid}.done").is_file()]
    common.each_case(partial(_cache_case, data_dir, work, pp, masks), todo, workers,
                     "labeller cache" if masks is None else f"labeller cache ({masks.tag})")
    return [p for cid in ids for p in sorted(work.glob(f"{cid}__*.npz"))]


def _cache_case(data_dir: Path, work: Path, pp: dict, masks, cid: str) -> None:
    sp = float(pp["spacing_mm"])
    # The fixed crop + jitter (the bbox mode uses the mask's box inside it; larger parts are cut).
    size = np.ceil((np.asarray(pp["extent_mm"]) + 2 * JITTER_MM + 2) / sp).astype(int)
    case = data.load_case(data_dir, cid, sp)
    cut = data.border_touching(case.labels)
    owner, index, centers = case.labels, {lab: lab - 1 for lab in case.centers}, case.centers
    if masks is not None:
        drawn = masks(case)
        owner, index, centers = drawn.owner, drawn.index, drawn.centers
    for lab, c in centers.items():
        ct = crop_centered(case.iso, c, size, fill=AIR_HU)
        m = crop_centered(owner, c, size, fill=0) == index[lab] + 1
        start = np.round(c).astype(int) - size // 2
        np.savez_compressed(work / f"{cid}__{lab:02d}.npz", ct=np.clip(ct, -32768, 32767).astype(np.int16),
                            mask=np.packbits(m), shape=np.asarray(m.shape), label=lab, center=c - start,
                            cut=lab in cut, origin=start, voxels=int(m.sum()))
    (work / f"{cid}.done").touch()


def load_vert(p: Path):
    """(CT int16 - kept so in RAM, mask, label, centre in the crop, cut-by-the-FOV flag) of one cached vertebra."""
    return load_entry(p)[0]


def load_entry(p: Path):
    """``load_vert``'s tuple and the vertebra's chain facts: (case id, centre in the case's canonical grid,
    mask voxels), None for caches written before the crop's origin was kept."""
    with np.load(p) as z:
        c = np.asarray(z["center"], dtype=np.float64)
        item = (z["ct"], data.unpack_mask(z), int(z["label"]), c, data.cut_flag(z))
        fact = (p.name.split("__")[0], np.asarray(z["origin"], dtype=np.float64) + c, int(z["voxels"])) \
            if "origin" in z else None
    return item, fact


class Samples:
    """All cached vertebrae in memory (small: a few MB each), inputs built on demand."""

    def __init__(self, files: list[Path], pp: dict, augment: bool = True, coarse_p: float = COARSE_P):
        self.augment = augment
        self.coarse_p = coarse_p
        entries = [load_entry(p) for p in tqdm(files, desc="load", leave=False)]
        self.items = [it for it, _ in entries]
        self.cut = [it[4] for it in self.items]  # None: cached before the flag existed
        self.pp = pp
        # What the sequence decoder needs per vertebra (chain_accuracy); None for older caches.
        facts = [f for _, f in entries]
        self.chain = facts if all(f is not None for f in facts) else None

    def labels(self) -> list[int]:
        return [it[2] for it in self.items]

    def x(self, idx: int, rng: np.random.Generator | None = None) -> np.ndarray:
        ct, m, _, c, _ = self.items[idx]
        ct = ct.astype(np.float32)
        if rng is not None:
            c = c + rng.uniform(-JITTER_MM, JITTER_MM, size=3) / float(self.pp["spacing_mm"])
            ct = ct * rng.uniform(0.95, 1.05) + rng.normal(0, 15)
            if rng.uniform() < FOV_CUT_P:
                ct, m = fov_cut(ct, m, c, rng, float(self.pp["spacing_mm"]))
            if self.augment:
                ct, m, c = scanner_and_mask(ct, m, c, rng)
                if self.coarse_p > 0 and rng.uniform() < self.coarse_p:  # 0: no draw (the shipped stream)
                    ct, m = simulate_resolution(ct, coarse_voxel(rng), float(self.pp["spacing_mm"]), mask=m)
                if SCALE_P > 0 and rng.uniform() < SCALE_P:  # off: no draw, the shipped schedule's stream
                    return labeller_input(m, ct, c, zoomed(self.pp, rng))
        return labeller_input(m, ct, c, self.pp)


def init_classes(args) -> list[int]:
    """The output columns of a shipped labeller that --init starts from: a fine-tune keeps them all, also a
    label its training masks lack (an L6 cut by the field of view that the segmenter dropped)."""
    path = common.init_path(args)
    if path is None or path.suffix != ".onnx" or not (path.parent / "manifest.json").is_file():
        return []
    from engine.models import load_manifest

    spec = load_manifest(path.parent).get("labeller")
    if spec is None or "fp32" not in spec.files or spec.path("fp32").resolve() != path.resolve():
        return []
    return [int(c) for c in spec.classes]


def mask_source(args):
    """``--masks-from MODELS``: the masks that folder's segmenter draws (training.cascade_masks); else None
    (the ground truth)."""
    folder = getattr(args, "masks_from", None)
    if not folder:
        return None
    from training.cascade_masks import SegmenterMasks

    try:
        return SegmenterMasks(folder)
    except (common.SpinertError, KeyError, OSError) as exc:
        raise common.SpinertError(f"--masks-from {folder}: no usable segmenter ({exc})") from None


def cache_folder(base: Path, masks) -> Path:
    """Where vertebrae with these masks are cached: one folder per mask source (``SegmenterMasks.tag``)."""
    return base if masks is None else base.with_name(f"{base.name}-{masks.tag}")


def mask_record(masks) -> str:
    if masks is None:
        return "ground truth"
    return (f"segmenter {masks.spec.path('fp32')} (sha256 {masks.spec.sha256['fp32'][:16]}), ground-truth centres "
            f"moved {masks.offset_mm:g} mm in a random direction (training.cascade_masks)")


def chain_accuracy(probs: np.ndarray, labels: list[int], chain, cut, classes: list[int], spacing: float) -> dict:
    """Labelling accuracy after the runtime's sequence decoding (engine.label.decode_labels) of each case's
    chain of vertebrae, and the share of cases labelled entirely right. Single-vertebra accuracy did not
    predict the cascade: session-10/11 fine-tunes gained it and lost labels in the cascade, because a short
    chain is placed by its scores together and a bias of one level moves all of them."""
    cases: dict[str, list[int]] = {}
    for i, (cid, _, _) in enumerate(chain):
        cases.setdefault(cid, []).append(i)
    right, whole_cases = 0, 0
    for idx in cases.values():
        kji = np.stack([chain[i][1] for i in idx]) * spacing
        # Canonical k runs inferior; the decoder sorts by LPS z (superior first): distances are unchanged.
        lps = np.stack([kji[:, 2], kji[:, 1], -kji[:, 0]], axis=1)
        got, _, _ = decode_labels(probs[idx], classes, lps, None, [chain[i][2] for i in idx],
                                  [bool(cut[i]) for i in idx])
        ok = got == np.asarray([labels[i] for i in idx])
        right += int(ok.sum())
        whole_cases += int(ok.all())
    n = sum(len(v) for v in cases.values())
    return {"chain_acc": right / max(1, n), "chain_cases": whole_cases / max(1, len(cases)), "n_chains": len(cases)}


def zoomed(pp: dict, rng: np.random.Generator) -> dict:
    """``pp`` with a fixed crop whose extent shows the vertebra zoomed by a random factor (SCALE, SCALE_AXIS).
    Beyond the cached box the crop is air, as at a scan's edge."""
    z = rng.uniform(*SCALE) * rng.uniform(1.0 - SCALE_AXIS, 1.0 + SCALE_AXIS, size=3)
    return {**pp, "extent_mm": [float(e) for e in np.asarray(pp["extent_mm"], dtype=np.float64) / z]}


def scanner_and_mask(ct: np.ndarray, m: np.ndarray, c: np.ndarray, rng: np.random.Generator):
    """Mirror (i), scanner spread and a segmenter-like boundary for one sample (see MASK_MORPH_P)."""
    from scipy.ndimage import binary_dilation, binary_erosion

    from training.segmenter import AUGMENT, augment

    if rng.uniform() < FLIP_I_P:
        ct, m = ct[:, :, ::-1], m[:, :, ::-1]
        c = np.array([c[0], c[1], ct.shape[2] - 1 - c[2]], dtype=np.float64)
    ct, m = augment(ct, m, rng, {**AUGMENT, "flip_i_p": 0.0})
    r = rng.uniform()
    if r < MASK_MORPH_P:
        m = (binary_erosion if r < MASK_MORPH_P / 2 else binary_dilation)(m)
    return ct, m, c


def fov_cut(ct: np.ndarray, m: np.ndarray, c: np.ndarray, rng: np.random.Generator, spacing: float):
    """CT and mask as a scan with a tight field of view would show them: outside a box of random
    half-widths FOV_CUT_MM (mm) around ``c``, on each axis with probability 1/2 (at least one), the CT
    is air and the mask empty."""
    axes = rng.uniform(size=3) < 0.5
    axes[rng.integers(3)] = True
    keep = np.ones(ct.shape, dtype=bool)
    for a in np.nonzero(axes)[0]:
        lo, hi = (c[a] + sgn * rng.uniform(*FOV_CUT_MM) / spacing for sgn in (-1.0, 1.0))
        ii = np.arange(ct.shape[a])
        sel = (ii >= lo) & (ii <= hi)
        keep &= sel.reshape([-1 if k == a else 1 for k in range(3)])
    return np.where(keep, ct, np.float32(AIR_HU)), m & keep


def evaluate(predict, samples: Samples, classes: list[int], batch: int = 16) -> dict:
    """Single-vertebra top-1 accuracy (no sequence logic), plus +-1 level accuracy; with the chain facts of
    the cache, also the accuracy after sequence decoding (``chain_accuracy``)."""
    col = {c: i for i, c in enumerate(classes)}
    keep = [i for i, lab in enumerate(samples.labels()) if lab in col]
    correct, near, n = 0, 0, 0
    whole_ok = [] if all(c is not None for c in samples.cut) else None
    probs = np.zeros((len(samples.items), len(classes)))
    for s in range(0, len(keep), batch):
        idx = keep[s:s + batch]
        logits = predict(np.stack([samples.x(i) for i in idx]))
        probs[idx] = softmax(logits)
        pred = logits.argmax(1)
        for i, pcol in zip(idx, pred):
            y = col[samples.labels()[i]]
            correct += int(pcol == y)
            if whole_ok is not None and not samples.cut[i]:
                whole_ok.append(int(pcol == y))
            near += int(abs(int(pcol) - y) <= 1)
            n += 1
    out = {"acc": correct / max(1, n), "acc_pm1": near / max(1, n), "n_val": n}
    if whole_ok is not None:  # vertebrae cut by the field of view are partial: reported apart as well
        out.update({"acc_whole": float(np.mean(whole_ok)) if whole_ok else None, "n_whole": len(whole_ok)})
    if chain_ready(samples):  # over the vertebrae whose label the model has a column for
        labels = samples.labels()
        out.update(chain_accuracy(probs[keep], [labels[i] for i in keep], [samples.chain[i] for i in keep],
                                  [samples.cut[i] for i in keep], classes, float(samples.pp["spacing_mm"])))
    return out


def chain_ready(samples: Samples) -> bool:
    """Whether the cache holds what ``chain_accuracy`` needs (caches of older versions do not)."""
    return samples.chain is not None and all(c is not None for c in samples.cut)


def train(args, log=print) -> dict:
    device = common.pick_device(args.device)
    common.set_threads(device)
    common.seed_all(args.seed)
    pp = dict(PREPROCESS)
    if args.channels:
        pp["channels"] = args.channels.split(",")
    if args.crop:
        pp["crop"] = args.crop
    if args.tiny:
        pp["shape"] = [16, 32, 32]
    widths = [int(w) for w in args.widths.split(",")] if args.widths else ([4, 8, 8, 16] if args.tiny else [16, 32, 48, 64])
    epochs = args.epochs or (1 if args.tiny else 30)
    batch = args.batch or (4 if args.tiny else 16)
    split = data.training_split(args)
    tr_ids, va_ids = split.train, split.val
    work = Path(args.work)
    coarse_p = common.probability_arg(args, "coarse_p", COARSE_P)
    masks = mask_source(args)
    cache = cache_folder(work / "cache", masks)
    workers = common.cache_workers(args)
    tr = Samples(cache_vertebrae(split.train_dir, tr_ids, cache, pp, masks, workers), pp, augment=not args.tiny,
                 coarse_p=coarse_p)
    va = Samples(cache_vertebrae(split.val_dir, va_ids, cache, pp, masks, workers), pp)
    init_cols = init_classes(args)
    extra = sorted(set(tr.labels()) - set(init_cols)) if init_cols else []
    if extra:  # the head's rows are the file's classes: a new one has no weights to start from
        raise common.SpinertError(f"--init {args.init} scores VerSe labels {init_cols[0]}-{init_cols[-1]}; the "
                                  f"training cases add {', '.join(map(str, extra))}: leave those cases out or train "
                                  f"from scratch")
    classes = sorted(set(tr.labels()) | set(init_cols))
    if not classes:
        raise common.SpinertError(f"no labelled vertebrae in {args.data}")
    col = {c: i for i, c in enumerate(classes)}
    steps = args.steps or (2 if args.tiny else max(1, len(tr.items) // batch))
    log(f"labeller: {len(tr.items)} train / {len(va.items)} val vertebrae, {len(classes)} classes {classes}, "
        f"channels {pp['channels']}, crop {pp['crop']}, {epochs}x{steps} steps of {batch} on {device}")
    cfg = LabellerConfig(in_channels=len(pp["channels"]), num_classes=len(classes), widths=widths,
                         input_shape=list(pp["shape"]), layers=1 if args.tiny else 2)
    model = ResNetTransformer3D(cfg)
    common.init_weights(model, args, log, lambda: init_batches(tr, args.seed, batch))
    model = common.train_layout(model, device)
    lr = args.lr or 3e-4
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=lr * 0.05)
    rng = np.random.default_rng(args.seed)
    y_all = np.asarray([col[lab] for lab in tr.labels()])
    # Class-balanced sampling: thoracic levels outnumber cervical ones in most scans.
    freq = np.bincount(y_all, minlength=len(classes)).astype(np.float64)
    w = 1.0 / np.sqrt(freq[y_all])
    w /= w.sum()

    def step(_i: int) -> float:
        idx = rng.choice(len(tr.items), size=batch, p=w)
        x = common.train_layout(torch.from_numpy(np.stack([tr.x(i, rng) for i in idx])), device)
        y = torch.from_numpy(y_all[idx]).to(device)
        loss = F.cross_entropy(model(x), y, label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    # Epochs are chosen by the labelling the cascade would get from them (see chain_accuracy). On a small
    # validation set it saturates (session 24: epochs 2-7 all 0.995); single-vertebra accuracy, which
    # rose from 0.89 to 0.93 over them, breaks the tie: the decoder then leans less on its sequence prior.
    key = ("chain_acc", "acc") if chain_ready(va) else "acc"
    t0 = time.time()
    res = common.fit(model, opt, sched, step, lambda: evaluate(common.torch_predictor(model, device), va, classes),
                     common.Schedule(epochs, steps, batch, lr), work / "ckpt", args.resume, key=key, log=log,
                     validate_init=bool(getattr(args, "init", None)))
    common.load_ckpt(res["best_path"], model)
    model = common.export_layout(model).eval()
    final = evaluate(common.torch_predictor(model, torch.device("cpu")), va, classes)
    log(f"labeller final (best epoch): {final}")
    trained = {"data": str(args.data), "val_data": str(split.val_dir), "cases_train": tr_ids, "cases_val": va_ids,
               "seed": args.seed,
               "schedule": {"init": common.init_label(args), "epochs": epochs,
                            "steps_per_epoch": steps, "batch": batch, "optimizer": "AdamW",
                            "lr": lr, "lr_schedule": "cosine to 5%", "jitter_mm": JITTER_MM,
                            "fov_cut": {"p": FOV_CUT_P, "half_width_mm": list(FOV_CUT_MM)},
                            "augment": None if args.tiny else {
                                "flip_i_p": FLIP_I_P, "mask_morph_p": MASK_MORPH_P, "scanner": "training.segmenter.AUGMENT",
                                "zoom": {"p": SCALE_P, "factor": list(SCALE), "per_axis": SCALE_AXIS},
                                "coarse_scanner": {"p": coarse_p, **COARSE_VOXEL}},
                            "loss": "cross-entropy (label smoothing 0.05), class-balanced sampling",
                            "masks": mask_record(masks), "selection": [key] if isinstance(key, str) else list(key)},
               "device": str(device), "date": export.now_iso(), "wall_time_s": round(time.time() - t0, 1),
               "tiny": bool(args.tiny)}
    return ship(model, pp, classes, final, trained, Path(args.out), work, args.version)


def init_batches(samples: Samples, seed: int, batch: int, n: int = 64) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Training inputs (augmented as in training, at its batch size) for unfolding an ONNX model's BatchNorm;
    the labeller's input shape is fixed, so they also serve the parity check."""
    rng = np.random.default_rng(seed + 1)  # its own stream: the training samples stay those of the seed
    idx = rng.choice(len(samples.items), size=n)
    xs = [samples.x(i, rng) for i in idx]
    train = [torch.from_numpy(np.stack(xs[i:i + batch])) for i in range(0, len(xs), batch)]
    return train, train[:1]


def ship(model, pp, classes, metrics, trained, out: Path, work: Path, version: str) -> dict:
    entry = {"preprocess": pp, "classes": [int(c) for c in classes], "version": version, "trained": trained,
             "metrics": metrics}
    return export.export_and_ship("labeller", "Labeller: 3-D ResNet34-style + Transformer", model,
                                  (model.cfg.in_channels, *pp["shape"]), ("x", "logits"), entry, CARD_BODY,
                                  out, work)


CARD_BODY = """
Scores one vertebra over the VerSe labels of `classes` (column order = `classes`, VerSe IDs), before any
sequence logic (seed 000, stage 3).

- input `x` float32 [N, C, 48, 96, 96] (48 along k = cranio-caudal, 96 x 96 axial), built by
  `engine.modelio.labeller_input(mask_kji_bool_iso, iso_hu, center_kji, preprocess)`: channel "mask" = the
  vertebra's binary mask, channel "ct" = the CT windowed with `hu_window`; crop "fixed" = a box of
  `extent_mm` centred on the vertebra (absolute size kept), "bbox" = the mask's bounding box stretched to 48x96x96.
- output `logits` float32 [N, K]; softmax gives per-label probabilities.
- architecture: 3-D ResNet34 stage layout ([3, 4, 6, 3] basic blocks, reduced widths in `arch`), stride-2 3^3
  stem + max-pool; the last feature map's voxels are tokens (+ a class token, learned positions) for a
  pre-norm Transformer encoder; linear head on the class token.
"""

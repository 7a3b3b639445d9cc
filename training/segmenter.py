"""Segmenter: attention 3-D U-Net on 2x128^3 ROIs (CT + centre weight) -> one vertebra's probability map.

Training samples: ROIs centred on the ground-truth centre plus a random offset (the detector's error), cut
to random P^3 sub-crops (both channels and the target identically: the net is fully convolutional), so a
CPU step costs a fraction of a full ROI. Validation: full 128^3 ROIs with a fixed realistic offset.
"""
from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.modelio import segmenter_input
from engine.preprocess import AIR_HU, crop_centered
from training import common, data, density, export, lowres, widen
from training.nets import AttentionUNet3D, UNetConfig

PREPROCESS = {"spacing_mm": 1.0, "roi": 128, "hu_window": [-400.0, 1400.0], "weight_sigma_mm": 24.0,
              "threshold": 0.5}
MAX_OFFSET_MM = 6.0  # training jitter of the ROI centre
# Scanner spread the phantoms alone under-sample (real 3 mm abdominal CTs are far blurrier along k than a
# 1 mm phantom): thick-slice blur along the axial axis k, in-plane blur (soft kernels), noise; and the
# patient's mirror image (left-right flip of i: the anatomy is near-symmetric, the task exactly so).
AUGMENT = {"flip_i_p": 0.5, "thick_slice_p": 0.3, "thick_slice_sigma_vox": [0.5, 1.3],
           "inplane_blur_p": 0.2, "inplane_sigma_vox": [0.3, 0.8], "noise_p": 0.3, "noise_hu": [5.0, 35.0]}
# Which ROIs and which parts of them a step sees: ``cut_p`` draws from the ROIs cut by the FOV border (a third
# of the phantom ROIs, most only by a process tip) that often, besides their natural share; ``patch_on_mask_p``
# centres that share of sub-crops on a random target voxel instead of near the ROI centre (an end vertebra's
# visible part is often a body slab plus a spinous process 30-60 mm away). Off for the shipped schedule:
# session 5 tried cut_p 0.25 / patch_on_mask_p 0.4 for 40 epochs from stage 5 (segmenter8) - held-out cut ROIs
# Dice 0.754 -> 0.775 but whole ones 0.879 -> 0.874, and in the cascade 7 false vertebrae instead of 1
# (identification 94.0 -> 91.5 %), so it was not shipped.
SAMPLING = {"cut_p": 0.0, "patch_on_mask_p": 0.0}
# Real-scan spread (off by default; the shipped stage 10 ran --density-p 0.4 --coarse-p 0.15): fainter bone
# (training.density) and coarse scanners (training.lowres; the target stays the 1 mm truth).
REAL_SPREAD = {"density_p": 0.0, "coarse_p": 0.0}
VAL_OFFSET_MM = 3.0  # "a realistic detector error": a fixed offset of this length in a random direction


def cache_rois(data_dir: Path, ids: list[str], work: Path, pp: dict, margin: int, workers: int = 1) -> list[Path]:
    """One compressed .npz per vertebra: CT (int16) and target mask, (roi + 2*margin)^3 around its GT centre.
    Cases already cached (``<id>.done``) are kept; the rest are cached in ``workers`` processes."""
    work.mkdir(parents=True, exist_ok=True)
    todo = [cid for cid in ids if not (work / f"{cid}.done").is_file()]
    common.each_case(partial(_cache_case, data_dir, work, pp, margin), todo, workers, "segmenter cache")
    return [p for cid in ids for p in sorted(work.glob(f"{cid}__*.npz"))]


def _cache_case(data_dir: Path, work: Path, pp: dict, margin: int, cid: str) -> None:
    size = int(pp["roi"]) + 2 * margin
    case = data.load_case(data_dir, cid, float(pp["spacing_mm"]))
    cut = data.border_touching(case.labels)
    for lab, c in case.centers.items():
        ct = crop_centered(case.iso, c, (size,) * 3, fill=AIR_HU)
        m = crop_centered(case.labels, c, (size,) * 3, fill=0) == lab
        np.savez_compressed(work / f"{cid}__{lab:02d}.npz", ct=np.clip(ct, -32768, 32767).astype(np.int16),
                            mask=np.packbits(m), shape=np.asarray(m.shape), label=lab, cut=lab in cut)
    (work / f"{cid}.done").touch()


def load_roi(p: Path) -> tuple[np.ndarray, np.ndarray, bool | None]:
    """CT (float32), mask and cut-by-the-FOV flag of one cached ROI."""
    z = np.load(p)
    return z["ct"].astype(np.float32), data.unpack_mask(z), data.cut_flag(z)


def random_offset(rng: np.random.Generator, radius_vox: float, exact: bool = False) -> np.ndarray:
    v = rng.normal(size=3)
    v /= np.linalg.norm(v) + 1e-9
    r = radius_vox if exact else radius_vox * rng.uniform() ** (1 / 3)
    return np.round(v * r).astype(int)


def augment(ct: np.ndarray, mask: np.ndarray, rng: np.random.Generator, aug: dict = AUGMENT):
    """Random scanner/patient variation of one cached ROI (CT float32 HU [k, j, i], mask); see AUGMENT."""
    from scipy.ndimage import gaussian_filter
    if rng.uniform() < aug["flip_i_p"]:
        ct, mask = ct[:, :, ::-1], mask[:, :, ::-1]
    sk = rng.uniform(*aug["thick_slice_sigma_vox"]) if rng.uniform() < aug["thick_slice_p"] else 0.0
    sp = rng.uniform(*aug["inplane_sigma_vox"]) if rng.uniform() < aug["inplane_blur_p"] else 0.0
    if sk or sp:
        ct = gaussian_filter(ct, (sk, sp, sp), mode="nearest")
    if rng.uniform() < aug["noise_p"]:
        ct = ct + rng.normal(0.0, rng.uniform(*aug["noise_hu"]), ct.shape).astype(np.float32)
    return np.ascontiguousarray(ct), np.ascontiguousarray(mask)


def make_sample(ct, mask, pp, off, patch: int, rng: np.random.Generator, on_mask_p: float = 0.0):
    """(x [2,P,P,P], y [1,P,P,P]) exactly as the runtime builds the ROI, then a sub-crop: biased to the
    centre, or (probability ``on_mask_p``) centred on a random voxel of the target."""
    r = int(pp["roi"])
    c = np.asarray(ct.shape) // 2 + off
    x = segmenter_input(ct, c, pp)
    y = crop_centered(mask.astype(np.uint8), c, (r, r, r), fill=0)
    if patch < r:
        centre = rng.normal(r / 2, r / 6, size=3)
        if on_mask_p and rng.uniform() < on_mask_p:
            on = np.flatnonzero(y)
            if on.size:
                centre = np.asarray(np.unravel_index(on[rng.integers(on.size)], y.shape), dtype=np.float64)
        lo = np.clip(np.round(centre - patch / 2), 0, r - patch).astype(int)
        sl = tuple(slice(a, a + patch) for a in lo)
        x = x[(slice(None),) + sl]
        y = y[sl]
    return x, y[None].astype(np.float32)


def init_batches(files: list[Path], pp: dict, seed: int, patch: int, sampling: dict, batch: int,
                 n_train: int = 32) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """For unfolding an ONNX model's BatchNorm: training batches (sub-crops sampled as training samples
    them) and two full ROIs for the parity check."""
    rng = np.random.default_rng(seed + 1)  # its own stream: the training samples stay those of the seed
    r, max_off = int(pp["roi"]), MAX_OFFSET_MM / pp["spacing_mm"]
    xs, full = [], []
    for i in rng.permutation(len(files))[:n_train]:
        ct, m, _ = load_roi(files[i])
        off = random_offset(rng, max_off)
        xs.append(make_sample(ct, m, pp, off, patch, rng, sampling["patch_on_mask_p"])[0])
        if len(full) < 2:
            full.append(make_sample(ct, m, pp, off, r, rng)[0])
    train = [torch.from_numpy(np.stack(xs[i:i + batch])) for i in range(0, len(xs), batch)]
    return train, [torch.from_numpy(np.stack(full))]


def loss_fn(logits: torch.Tensor, y: torch.Tensor, pos_weight: float = 1.5) -> torch.Tensor:
    """Weighted BCE (vertebra voxels weighted up: a navigation robot prefers over- to under-segmentation) + Dice."""
    bce = F.binary_cross_entropy_with_logits(logits, y, pos_weight=torch.tensor(pos_weight, device=y.device))
    p = torch.sigmoid(logits)
    inter = (p * y).sum(dim=(1, 2, 3, 4))
    dice = (2 * inter + 1.0) / (p.sum(dim=(1, 2, 3, 4)) + y.sum(dim=(1, 2, 3, 4)) + 1.0)
    return bce + (1 - dice).mean()


def dice_np(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * np.logical_and(a, b).sum() / s)


def error_anatomy(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(share of the wrong voxels lying within one voxel of the target's surface, predicted / true volume).
    A share near 1 with a ratio near 1 says the mask is right but its boundary wanders by a voxel: the
    network, not the threshold, needs work."""
    from scipy.ndimage import distance_transform_edt

    wrong = pred ^ target
    n_wrong = int(wrong.sum())
    if n_wrong == 0 or not target.any():
        return 1.0, float(pred.sum()) / max(1, int(target.sum()))
    near = np.where(target, distance_transform_edt(target), distance_transform_edt(~target)) <= 1.0
    return float((wrong & near).sum()) / n_wrong, float(pred.sum()) / float(target.sum())


def evaluate(predict, files: list[Path], pp: dict, seed: int = 1234, offset_mm: float = VAL_OFFSET_MM,
             batch: int = 2, anatomy: bool = False) -> dict:
    """Dice per vertebra on full ROIs centred at GT + a fixed-length random offset. ``predict(x) -> prob``.
    ``anatomy``: also where the errors lie (``error_anatomy``; a distance transform per ROI)."""
    rng = np.random.default_rng(seed)
    r = int(pp["roi"])
    dices, cut, near, ratio = [], [], [], []
    for i in range(0, len(files), batch):
        xs, ys = [], []
        for p in files[i:i + batch]:
            ct, m, is_cut = load_roi(p)
            cut.append(is_cut)
            off = random_offset(rng, offset_mm / float(pp["spacing_mm"]), exact=True)
            c = np.asarray(ct.shape) // 2 + off
            xs.append(segmenter_input(ct, c, pp))
            ys.append(crop_centered(m.astype(np.uint8), c, (r, r, r), fill=0).astype(bool))
        prob = predict(np.stack(xs))
        for pr, y in zip(prob, ys):
            pb = pr[0] > float(pp.get("threshold", 0.5))
            dices.append(dice_np(pb, y))
            if anatomy:
                a, b = error_anatomy(pb, y)
                near.append(a)
                ratio.append(b)
    d = np.asarray(dices) if dices else np.zeros(1)
    out = {"dice_mean": float(d.mean()), "dice_median": float(np.median(d)), "dice_min": float(d.min()),
           "frac_dice_ge_0.95": float((d >= 0.95).mean()), "n_val_rois": len(dices),
           "val_offset_mm": offset_mm}
    if near:
        out.update({"errors_within_1_voxel_of_surface": float(np.mean(near)),
                    "volume_ratio_median": float(np.median(ratio))})
    if dices and all(c is not None for c in cut):
        # A vertebra cut by the field of view is a partial target (a few slices of bone at the edge):
        # its Dice says little about the model, so whole vertebrae are reported on their own as well.
        whole = d[~np.asarray(cut, dtype=bool)]
        out.update({"dice_mean_whole": float(whole.mean()) if whole.size else None,
                    "dice_median_whole": float(np.median(whole)) if whole.size else None,
                    "frac_dice_ge_0.95_whole": float((whole >= 0.95).mean()) if whole.size else None,
                    "n_whole": int(whole.size)})
    return out


def train(args, log=print) -> dict:
    device = common.pick_device(args.device)
    common.set_threads(device)
    common.seed_all(args.seed)
    pp = dict(PREPROCESS)
    init = common.init_path(args)
    old = widen.init_widths(init) if init is not None else None
    # Without --widths a run continues at its --init's widths (the shipped file's, for a fine-tune).
    widths = ([int(w) for w in args.widths.split(",")] if args.widths else
              old or ([4, 8, 16] if args.tiny else [4, 8, 16, 32, 64]))
    if old and (len(old) != len(widths) or any(n < o for n, o in zip(widths, old))):
        raise common.SpinertError(f"--widths {widths} cannot start from --init {init} ({old}): a network can "
                                  "only grow, level by level")
    if args.tiny:
        pp["roi"] = 32  # the graph is fully convolutional; tiny runs only prove the pipeline end to end
    patch = args.patch or (16 if args.tiny else 64)
    epochs = args.epochs or (1 if args.tiny else 40)
    steps = args.steps or (2 if args.tiny else 100)
    batch = args.batch or (1 if args.tiny else 2)
    margin = int(np.ceil(MAX_OFFSET_MM / pp["spacing_mm"])) + 1
    spread = {k: common.probability_arg(args, k, v) for k, v in REAL_SPREAD.items()}
    split = data.training_split(args)
    tr_ids, va_ids = split.train, split.val
    work = Path(args.work)
    workers = common.cache_workers(args)
    tr_files = cache_rois(split.train_dir, tr_ids, work / "cache", pp, margin, workers)
    va_files = cache_rois(split.val_dir, va_ids, work / "cache", pp, margin, workers)
    if not tr_files:
        raise common.SpinertError(f"no labelled vertebrae in {args.data}")
    n_val = args.val_rois or (2 if args.tiny else 48)
    va_eval = [va_files[i] for i in np.random.default_rng(0).permutation(len(va_files))[:n_val]]
    cut_files = [p for p in tr_files if data.cut_flag(np.load(p))]  # none if cached before the flag existed
    log(f"segmenter: {len(tr_files)} train ROIs ({len(tr_ids)} cases, {len(cut_files)} cut by the FOV), "
        f"{len(va_files)} val ROIs ({len(va_ids)} cases, {len(va_eval)} evaluated), widths {widths}, patch "
        f"{patch}^3, batch {batch}, {epochs}x{steps} steps on {device}")

    sampling = {"cut_p": 0.0, "patch_on_mask_p": 0.0} if args.tiny else dict(SAMPLING)
    # --init weights (a checkpoint or a shipped ONNX file) narrower than --widths are read back at their own
    # widths, then widened (same outputs).
    model = AttentionUNet3D(UNetConfig(widths=old or widths))
    common.init_weights(model, args, log, lambda: init_batches(tr_files, pp, args.seed, patch, sampling, batch))
    if model.cfg.widths != widths:
        log(f"widened {model.cfg.widths} -> {widths} channels (same outputs)")
        model = widen.widen(model, widths)
    model = common.train_layout(model, device)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr or 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs), eta_min=(args.lr or 1e-3) * 0.05)
    rng = np.random.default_rng(args.seed)
    max_off = MAX_OFFSET_MM / pp["spacing_mm"]

    def step(_i: int) -> float:
        xs, ys = [], []
        for _ in range(batch):
            pool = cut_files if cut_files and rng.uniform() < sampling["cut_p"] else tr_files
            ct, m, _ = load_roi(pool[rng.integers(len(pool))])
            ct = ct * rng.uniform(0.95, 1.05) + rng.normal(0, 15)  # scanner calibration spread
            if not args.tiny:
                ct, m = augment(ct, m, rng)
            if spread["density_p"] and rng.uniform() < spread["density_p"]:
                ct = density.random_density(ct, rng)
            if spread["coarse_p"] and rng.uniform() < spread["coarse_p"]:
                ct = lowres.simulate_resolution(ct, lowres.coarse_voxel(rng), float(pp["spacing_mm"]))
            x, y = make_sample(ct, m, pp, random_offset(rng, max_off), patch, rng, sampling["patch_on_mask_p"])
            xs.append(x)
            ys.append(y)
        x = common.train_layout(torch.from_numpy(np.stack(xs)), device)
        y = common.train_layout(torch.from_numpy(np.stack(ys)), device)
        loss = loss_fn(model.logits(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    t0 = time.time()
    res = common.fit(model, opt, sched, step, lambda: evaluate(common.torch_predictor(model, device), va_eval, pp),
                     common.Schedule(epochs, steps, batch, args.lr or 1e-3), work / "ckpt", args.resume,
                     key="dice_mean", log=log,
                     validate_init=bool(getattr(args, "init", None)))
    common.load_ckpt(res["best_path"], model)
    model = common.export_layout(model).eval()
    final = evaluate(common.torch_predictor(model, torch.device("cpu")), va_files if not args.tiny else va_eval, pp,
                     anatomy=True)
    log(f"segmenter final (best epoch, all val ROIs): {final}")
    sched_info = {"init": common.init_label(args), "epochs": epochs,
                  "steps_per_epoch": steps, "batch": batch, "patch": patch,
                  "optimizer": "Adam", "lr": args.lr or 1e-3, "lr_schedule": "cosine to 5%",
                  "train_offset_mm": MAX_OFFSET_MM,
                  "augment": None if args.tiny else AUGMENT, "sampling": sampling,
                  "cut_rois": len(cut_files),
                  "real_spread": {**spread, "density": density.DENSITY, "coarse_voxel": lowres.COARSE_VOXEL}, "loss": "BCE(pos_weight=1.5) + soft Dice"}
    trained = {"data": str(args.data), "val_data": str(split.val_dir), "cases_train": tr_ids, "cases_val": va_ids,
               "seed": args.seed,
               "schedule": sched_info, "device": str(device), "date": export.now_iso(),
               "wall_time_s": round(time.time() - t0, 1), "tiny": bool(args.tiny)}
    return ship(model, pp, widths, final, trained, Path(args.out), work, args.version)


def ship(model, pp, widths, metrics, trained, out: Path, work: Path, version: str) -> dict:
    r = int(pp["roi"])
    entry = {"preprocess": pp, "classes": ["vertebra"], "version": version, "trained": trained, "metrics": metrics}
    return export.export_and_ship("segmenter", "Segmenter: attention 3-D U-Net", model, (2, r, r, r),
                                  ("roi", "prob"), entry, CARD_BODY, out, work)


CARD_BODY = """
Segments ONE vertebra in a 128^3 ROI of the canonical isotropic frame (engine.preprocess, 1 mm, LPI) centred on
the vertebra's estimated centre (seed 000, stage 2).

- input `roi` float32 [N, 2, 128, 128, 128]: channel 0 = `window(crop_centered(iso_hu, centre_kji, 128,
  fill=-1024 HU), hu_window)`; channel 1 = `center_weight(128, weight_sigma_mm / spacing_mm)`; built by
  `engine.modelio.segmenter_input`.
- output `prob` float32 [N, 1, 128, 128, 128]: sigmoid probability that a voxel belongs to the centred
  vertebra (sigmoid inside the graph); threshold `preprocess.threshold`.
- architecture: 3-D U-Net (widths in `arch`), two conv+BN+ReLU per level except the full-resolution one
  (`light_levels`: one conv each side - it holds 8x the voxels of the next level, so a thin single conv keeps
  1 mm boundaries at ~1/5 of the FLOPs of a classic 8-16-32-64 U-Net), max-pool down, transposed conv up,
  additive attention gates (Oktay et al.) on every skip connection, 1x1x1 conv + sigmoid head.
- training: ROIs centred at the ground-truth centre + a random offset (uniform in a ball of
  `train_offset_mm`), random sub-crops of both channels and the target (the net is fully convolutional),
  loss = weighted BCE + soft Dice. Validation: full 128^3 ROIs of held-out cases, centre offset by exactly
  `val_offset_mm` in a random direction, Dice of `prob > 0.5` against the vertebra's label.
"""

"""Model-input builders shared by training and the runtime (numpy only; pass ``xp=cupy`` on a GPU).

Every tensor a model sees is built here, from the canonical isotropic frame of engine.preprocess
([k, j, i] = [inferior, posterior, left]), so training images and runtime inputs cannot drift apart.

- detector: ``sagittal_uint8`` (a windowed sagittal slice) -> ``letterbox`` (ultralytics-style) ->
  ``detector_batch``; boxes map between slice pixels and letterboxed pixels with ``Letterbox``.
- segmenter: ``segmenter_input`` (windowed 128^3 CT ROI + centre-weight channel).
- labeller: ``labeller_input`` (the vertebra's mask, optionally the CT, resampled to 48x96x96).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.preprocess import AIR_HU, center_weight, crop_centered, window

LETTERBOX_FILL = 114  # ultralytics' pad value


# ----------------------------------------------------------------------------------------------------- detector
def sagittal_uint8(iso_hu, i: int, hu_window, xp=np):
    """Sagittal slice ``iso[:, :, i]`` (rows = k head->feet, cols = j anterior->posterior), windowed to uint8."""
    lo, hi = hu_window
    w = window(iso_hu[:, :, int(i)], float(lo), float(hi), xp=xp)
    return (w * 255.0 + 0.5).astype(xp.uint8)


@dataclass(frozen=True)
class Letterbox:
    """Geometry of one letterbox: out = in * scale + (pad_x, pad_y), as ultralytics' LetterBox(center=True)."""

    scale: float
    pad_x: int  # left pad, pixels
    pad_y: int  # top pad, pixels
    new_w: int
    new_h: int
    size: int

    @classmethod
    def for_shape(cls, h: int, w: int, size: int) -> "Letterbox":
        r = size / max(h, w)
        new_w, new_h = int(round(w * r)), int(round(h * r))
        dw, dh = (size - new_w) / 2, (size - new_h) / 2
        # ultralytics rounds with -0.1 / +0.1 so an odd remainder goes to the bottom/right.
        return cls(r, int(round(dw - 0.1)), int(round(dh - 0.1)), new_w, new_h, size)

    def boxes_to_lb(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes (..., 4) x1 y1 x2 y2 in slice pixels -> letterboxed pixels."""
        b = np.asarray(xyxy, dtype=np.float64).copy()
        b[..., [0, 2]] = b[..., [0, 2]] * self.scale + self.pad_x
        b[..., [1, 3]] = b[..., [1, 3]] * self.scale + self.pad_y
        return b

    def boxes_from_lb(self, xyxy: np.ndarray) -> np.ndarray:
        """Boxes (..., 4) x1 y1 x2 y2 in letterboxed pixels -> slice pixels."""
        b = np.asarray(xyxy, dtype=np.float64).copy()
        b[..., [0, 2]] = (b[..., [0, 2]] - self.pad_x) / self.scale
        b[..., [1, 3]] = (b[..., [1, 3]] - self.pad_y) / self.scale
        return b


def resize_bilinear(img, new_h: int, new_w: int, xp=np):
    """2-D bilinear resize with half-pixel centres (as cv2.INTER_LINEAR when upscaling), float32 out."""
    h, w = img.shape
    a = img.astype(xp.float32)

    def axis(n_out, n_in):
        src = (xp.arange(n_out, dtype=xp.float32) + 0.5) * (n_in / n_out) - 0.5
        src = xp.clip(src, 0, n_in - 1)
        i0 = xp.floor(src).astype(xp.int64)
        i1 = xp.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(xp.float32)

    y0, y1, wy = axis(new_h, h)
    x0, x1, wx = axis(new_w, w)
    top = a[y0][:, x0] * (1 - wx) + a[y0][:, x1] * wx
    bot = a[y1][:, x0] * (1 - wx) + a[y1][:, x1] * wx
    return top * (1 - wy)[:, None] + bot * wy[:, None]


def letterbox(img_u8, size: int, xp=np):
    """Gray uint8 [H, W] -> (uint8 [size, size] letterboxed, Letterbox geometry)."""
    h, w = img_u8.shape
    lb = Letterbox.for_shape(h, w, size)
    out = xp.full((size, size), LETTERBOX_FILL, dtype=xp.uint8)
    if (lb.new_h, lb.new_w) != (h, w):
        res = xp.clip(resize_bilinear(img_u8, lb.new_h, lb.new_w, xp=xp) + 0.5, 0, 255).astype(xp.uint8)
    else:
        res = img_u8
    out[lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w] = res
    return out, lb


def detector_batch(iso_hu, slice_idx, preprocess: dict, xp=np):
    """Stack of detector inputs float32 [N, 3, S, S] in [0, 1] for sagittal slices ``slice_idx``.

    All slices of one volume share one Letterbox (same H, W), returned alongside.
    """
    size = int(preprocess["imgsz"])
    imgs, lb = [], None
    for i in slice_idx:
        u8, lb = letterbox(sagittal_uint8(iso_hu, i, preprocess["hu_window"], xp=xp), size, xp=xp)
        imgs.append(u8)
    if lb is None:
        lb = Letterbox.for_shape(iso_hu.shape[0], iso_hu.shape[1], size)
        return xp.zeros((0, 3, size, size), dtype=xp.float32), lb
    x = xp.stack(imgs).astype(xp.float32) / 255.0
    return xp.ascontiguousarray(xp.broadcast_to(x[:, None], (x.shape[0], 3, size, size))), lb


# ---------------------------------------------------------------------------------------------------- segmenter
def segmenter_input(iso_hu, center_kji, preprocess: dict, xp=np):
    """float32 [2, R, R, R]: windowed CT ROI centred on ``center_kji`` (air outside) + centre-weight channel."""
    r = int(preprocess["roi"])
    lo, hi = preprocess["hu_window"]
    ct = window(crop_centered(iso_hu, center_kji, (r, r, r), fill=AIR_HU, xp=xp), lo, hi, xp=xp)
    sigma = float(preprocess["weight_sigma_mm"]) / float(preprocess["spacing_mm"])
    return xp.stack([ct, center_weight(r, sigma, xp=xp)]).astype(xp.float32)


# ----------------------------------------------------------------------------------------------------- labeller
def _zoom(xp):
    if xp is np:
        from scipy.ndimage import zoom
    else:  # cupy
        from cupyx.scipy.ndimage import zoom
    return zoom


def _resample(arr, shape, order: int, xp=np):
    """Resample a 3-D array to exactly ``shape`` (grid_mode: voxel areas map onto each other)."""
    shape = tuple(int(s) for s in shape)
    if tuple(arr.shape) == shape:
        return arr.astype(xp.float32)
    f = [s / a for s, a in zip(shape, arr.shape)]
    out = _zoom(xp)(arr.astype(xp.float32), f, order=order, mode="grid-constant", grid_mode=True, cval=0.0)
    if tuple(out.shape) != shape:  # zoom rounds; pad/cut the last voxel
        fixed = xp.zeros(shape, dtype=xp.float32)
        s = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, shape))
        fixed[s] = out[s]
        out = fixed
    return out


def labeller_input(mask_kji, iso_hu, center_kji, preprocess: dict, xp=np):
    """float32 [C, D, H, W] (D along k, H x W axial) for one vertebra.

    preprocess["crop"] = "fixed": a box of ``extent_mm`` centred on ``center_kji``, resampled to ``shape`` -
        absolute size is kept (the vertebra's size is a cue of its level);
    preprocess["crop"] = "bbox": the mask's bounding box (+ margin_mm), stretched to ``shape``.
    Channels: preprocess["channels"] is ["mask"] or ["mask", "ct"] (CT windowed with ``hu_window``).
    ``mask_kji`` is a bool array on the same grid (same indices) as ``iso_hu``.
    """
    shape = tuple(int(s) for s in preprocess["shape"])
    sp = float(preprocess["spacing_mm"])
    if preprocess.get("crop", "fixed") == "fixed":
        size = np.maximum(1, np.round(np.asarray(preprocess["extent_mm"], dtype=np.float64) / sp)).astype(int)
        center = np.asarray(center_kji, dtype=np.float64)
    else:
        nz = xp.nonzero(mask_kji)
        if nz[0].size == 0:
            lo_ = np.round(np.asarray(center_kji)).astype(int)
            hi_ = lo_ + 1
        else:
            lo_ = np.array([int(a.min()) for a in nz])
            hi_ = np.array([int(a.max()) + 1 for a in nz])
        m = int(round(float(preprocess.get("margin_mm", 2.0)) / sp))
        size = (hi_ - lo_) + 2 * m
        center = lo_ - m + size // 2  # crop_centered then starts exactly at lo_ - m
    chans = []
    for ch in preprocess.get("channels", ["mask"]):
        if ch == "mask":
            crop = crop_centered(mask_kji.astype(xp.uint8), center, size, fill=0, xp=xp)
            chans.append(_resample(crop, shape, order=1, xp=xp))
        elif ch == "ct":
            lo, hi = preprocess["hu_window"]
            crop = window(crop_centered(iso_hu, center, size, fill=AIR_HU, xp=xp), lo, hi, xp=xp)
            chans.append(_resample(crop, shape, order=1, xp=xp))
        else:
            raise ValueError(f"unknown labeller channel {ch!r}")
    return xp.stack(chans).astype(xp.float32)

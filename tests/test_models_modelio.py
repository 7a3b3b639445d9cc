"""engine.modelio: the shared model-input builders (letterbox geometry, slice windowing, ROI/labeller inputs)."""
import numpy as np
import pytest

from engine.modelio import (LETTERBOX_FILL, Letterbox, detector_batch, labeller_input, letterbox,
                            resize_bilinear, sagittal_uint8, segmenter_input)


@pytest.mark.parametrize("h,w,size", [(300, 200, 384), (200, 300, 640), (511, 97, 384), (384, 384, 384)])
def test_letterbox_roundtrips_boxes(h, w, size):
    img = np.random.default_rng(0).integers(0, 255, size=(h, w), dtype=np.uint8)
    out, lb = letterbox(img, size)
    assert out.shape == (size, size) and out.dtype == np.uint8
    boxes = np.array([[0, 0, w, h], [10.5, 20.25, 50, 80]])
    there = lb.boxes_to_lb(boxes)
    np.testing.assert_allclose(lb.boxes_from_lb(there), boxes, atol=1e-9)
    # The full image maps onto the un-padded region, centred.
    np.testing.assert_allclose(there[0], [lb.pad_x, lb.pad_y, lb.pad_x + w * lb.scale, lb.pad_y + h * lb.scale])
    assert abs(lb.new_w - w * lb.scale) < 1 and abs(lb.new_h - h * lb.scale) < 1
    if lb.pad_x > 0:
        assert (out[:, : lb.pad_x] == LETTERBOX_FILL).all()
    if lb.pad_y > 0:
        assert (out[: lb.pad_y] == LETTERBOX_FILL).all()


def test_letterbox_matches_ultralytics_geometry():
    ul = pytest.importorskip("ultralytics.data.augment")
    img = np.random.default_rng(1).integers(0, 255, size=(301, 177), dtype=np.uint8)
    ref = ul.LetterBox((384, 384), auto=False, scale_fill=False, scaleup=True, center=True)(
        image=np.repeat(img[..., None], 3, axis=2))
    ours, _ = letterbox(img, 384)
    # Same padding layout (ultralytics' cv2 resize may differ by 1 grey level on interpolated pixels).
    assert ((ref[..., 0] == 114) == (ours == 114)).mean() > 0.995
    assert np.abs(ref[..., 0].astype(int) - ours.astype(int)).max() <= 2


def test_resize_bilinear_preserves_constant_and_ramp():
    img = np.full((10, 20), 7, np.uint8)
    assert np.allclose(resize_bilinear(img, 33, 41), 7)
    ramp = np.tile(np.arange(20, dtype=np.float32), (5, 1))
    up = resize_bilinear(ramp, 5, 40)
    assert np.all(np.diff(up[0]) >= 0)


def test_sagittal_slice_and_detector_batch():
    iso = np.full((50, 40, 30), -1024.0, np.float32)
    iso[10:20, 5:15, 7] = 1400.0
    u8 = sagittal_uint8(iso, 7, (-400.0, 1400.0))
    assert u8.shape == (50, 40) and u8.dtype == np.uint8
    assert u8[15, 10] == 255 and u8[0, 0] == 0
    x, lb = detector_batch(iso, [6, 7], {"imgsz": 64, "hu_window": [-400.0, 1400.0]})
    assert x.shape == (2, 3, 64, 64) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert np.array_equal(x[:, 0], x[:, 2])
    assert lb == Letterbox.for_shape(50, 40, 64)


def test_segmenter_input_channels():
    iso = np.full((60, 60, 60), 0.0, np.float32)
    pp = {"roi": 32, "hu_window": [-400.0, 1400.0], "weight_sigma_mm": 8.0, "spacing_mm": 1.0}
    x = segmenter_input(iso, (5, 30, 30), pp)  # near the top: padded with air
    assert x.shape == (2, 32, 32, 32) and x.dtype == np.float32
    assert x[0, 0, 0, 0] == 0.0  # air -> 0 after windowing
    assert np.isclose(x[0, 20, 16, 16], 400 / 1800)
    assert x[1, 16, 16, 16] == pytest.approx(1.0) and x[1, 0, 0, 0] < 0.01


@pytest.mark.parametrize("crop", ["fixed", "bbox"])
def test_labeller_input_modes(crop):
    iso = np.zeros((80, 80, 80), np.float32)
    mask = np.zeros(iso.shape, bool)
    mask[30:50, 25:55, 20:60] = True
    pp = {"spacing_mm": 1.0, "shape": [12, 24, 24], "crop": crop, "extent_mm": [48, 96, 96], "margin_mm": 0.0,
          "hu_window": [-400.0, 1400.0], "channels": ["mask", "ct"]}
    x = labeller_input(mask, iso, (40, 40, 40), pp)
    assert x.shape == (2, 12, 24, 24) and x.dtype == np.float32
    frac = (x[0] > 0.5).mean()
    if crop == "bbox":
        assert frac > 0.9  # the box is (almost) all mask
    else:
        expect = (20 * 30 * 40) / (48 * 96 * 96)  # the absolute size is kept
        assert abs(frac - expect) < 0.05

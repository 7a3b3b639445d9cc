"""The canonical grid's geometry comes from the header alone and must equal SimpleITK's DICOMOrient."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from engine.preprocess import CANONICAL, oriented_geometry, to_canonical
from engine.types import Volume


def _image(direction: np.ndarray, size=(7, 5, 3), spacing=(0.7, 1.1, 2.5), origin=(10.0, -20.0, 30.0)):
    img = sitk.Image(list(size), sitk.sitkUInt8)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(tuple(float(x) for x in direction.ravel()))
    return img


def _signed_permutations():
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            d = np.zeros((3, 3))
            d[list(perm), range(3)] = signs
            yield d


def _assert_same(img: sitk.Image):
    o = sitk.DICOMOrient(img, CANONICAL)
    size, spacing, origin, direction = oriented_geometry(img)
    assert tuple(int(s) for s in size) == o.GetSize()
    np.testing.assert_allclose(spacing, o.GetSpacing(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(origin, o.GetOrigin(), rtol=0, atol=1e-9)
    np.testing.assert_allclose(direction.ravel(), o.GetDirection(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("direction", list(_signed_permutations()), ids=lambda d: "".join(
    f"{'-' if d[np.abs(d[:, c]).argmax(), c] < 0 else '+'}{'xyz'[np.abs(d[:, c]).argmax()]}" for c in range(3)))
def test_every_axis_permutation_and_flip_matches_dicomorient(direction):
    _assert_same(_image(direction))


def test_oblique_directions_match_dicomorient():
    rng = np.random.default_rng(0)
    perms = list(_signed_permutations())
    for _ in range(200):
        tilt = Rotation.from_rotvec(rng.normal(size=3) * rng.uniform(0.0, 0.6)).as_matrix()
        _assert_same(_image(tilt @ perms[rng.integers(len(perms))]))


def test_to_canonical_equals_resampling_onto_the_dicomorient_grid():
    rng = np.random.default_rng(1)
    arr = rng.normal(0, 300, (12, 10, 9)).astype(np.float32)
    d = np.array([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # a sagittal acquisition, flipped
    vol = Volume(arr, (0.8, 1.2, 2.0), (5.0, -3.0, 40.0), tuple(d.ravel()), "ct")
    got = to_canonical(vol, 1.0)

    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(vol.direction)
    oriented = sitk.DICOMOrient(img, CANONICAL)
    sp, sz = np.asarray(oriented.GetSpacing()), np.asarray(oriented.GetSize())
    dd = np.asarray(oriented.GetDirection()).reshape(3, 3)
    ref = sitk.Image([int(s) for s in np.maximum(1, np.round(sz * sp))], sitk.sitkUInt8)
    ref.SetSpacing((1.0,) * 3)
    ref.SetDirection(oriented.GetDirection())
    ref.SetOrigin(tuple(np.asarray(oriented.GetOrigin()) - dd @ (sp / 2) + dd @ np.full(3, 0.5)))
    want = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1024.0,
                                                sitk.sitkFloat32))
    np.testing.assert_array_equal(got.array, want)
    np.testing.assert_allclose(got.origin, ref.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(got.direction, ref.GetDirection(), atol=1e-12)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32, np.float32])
def test_integer_cts_resample_as_if_cast_to_float_first(dtype):
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 255, (14, 11, 9)) if dtype == np.uint8 else rng.normal(0, 400, (14, 11, 9))
    d = (0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    vol = Volume(arr.astype(dtype), (0.7, 0.9, 2.0), (1.0, 2.0, 3.0), d, "ct")
    got = to_canonical(vol, 1.0)
    assert got.array.dtype == np.float32

    img = sitk.Cast(sitk.GetImageFromArray(vol.array), sitk.sitkFloat32)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(d)
    ref = sitk.Image([int(s) for s in got.array.shape[::-1]], sitk.sitkUInt8)
    ref.SetSpacing((1.0,) * 3)
    ref.SetOrigin(got.origin)
    ref.SetDirection(got.direction)
    want = sitk.GetArrayFromImage(sitk.Resample(img, ref, sitk.Transform(), sitk.sitkLinear, -1024.0, sitk.sitkFloat32))
    np.testing.assert_array_equal(got.array, want)

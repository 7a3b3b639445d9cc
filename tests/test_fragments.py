"""Loose bone at the scan's faces beyond the chain's ends (engine.fragments) on crafted volumes."""
from __future__ import annotations

import numpy as np
import pytest

from engine.fragments import FragmentParams, border_fragments
from engine.labels import IDS


def _spine(top_k: float = 12.0, step: float = 22.0, n: int = 4):
    """A canonical 1 mm volume with n box vertebrae down k (T6 first), their masks and centres."""
    K = int(top_k + step * (n - 1) + 20)
    iso = np.full((K, 120, 60), -50.0, dtype=np.float32)  # soft tissue
    owner = np.zeros(iso.shape, dtype=np.uint8)
    centres = []
    for v in range(n):
        k = top_k + v * step
        lo = max(0, int(k - 8))
        iso[lo:int(k + 9), 40:75, 20:41] = 400.0  # body and arch as one block
        owner[lo:int(k + 9), 40:75, 20:41] = v + 1
        centres.append([k, 57.0, 30.0])
    labels = [IDS["T6"] + v for v in range(n)]
    return iso, owner, np.asarray(centres), labels


def _piece(iso, k0=0, k1=5, j0=95, j1=101):
    iso[k0:k1, j0:j1, 27:34] = 500.0  # a spinous tip: 5 x 6 x 7 mm, 40 mm behind the body centre


def test_a_loose_tip_at_the_top_face_is_proposed():
    iso, owner, c, labels = _spine()
    _piece(iso)
    out = border_fragments(iso, owner, c, labels, 1.0)
    np.testing.assert_allclose(out, [[2.0, 97.5, 30.0]])
    # Any order of the centres; a bottom piece too, at the bottom face.
    _piece(iso, iso.shape[0] - 5, iso.shape[0])
    iso[-20:, 40:75, 20:41] = 400.0  # the last vertebra reaches the bottom face region
    out = border_fragments(iso, owner, c[::-1], labels[::-1], 1.0)
    assert out.shape == (2, 3) and out[0, 0] == pytest.approx(2.0)


def test_pieces_that_are_not_a_next_vertebra_are_not_proposed():
    iso, owner, c, labels = _spine()
    # Touching the end vertebra's mask over its face: the rest of that vertebra.
    iso[0:10, 75:80, 27:34] = 500.0
    assert border_fragments(iso, owner, c, labels, 1.0).shape == (0, 3)
    iso, owner, c, labels = _spine()
    _piece(iso, 3, 8)  # not at the face: the detector would have seen a whole vertebra there
    assert border_fragments(iso, owner, c, labels, 1.0).shape == (0, 3)
    iso, owner, c, labels = _spine()
    iso[0:2, 95:97, 29:31] = 500.0  # 8 mm^3: noise, not bone of a vertebra
    assert border_fragments(iso, owner, c, labels, 1.0).shape == (0, 3)
    iso, owner, c, labels = _spine()
    iso[0:5, 95:101, 5:12] = 500.0  # 22 mm to the side: a rib, outside the midline corridor
    assert border_fragments(iso, owner, c, labels, 1.0).shape == (0, 3)


def test_where_the_end_vertebra_sits_decides_whether_to_look():
    # The end's centre 3 mm from the face: that vertebra is itself cut, a piece there is its own arch.
    iso, owner, c, labels = _spine(top_k=3.0)
    _piece(iso)
    assert border_fragments(iso, owner, c, labels, 1.0).shape == (0, 3)
    # 30 mm from the face (more than a step): nothing of the next vertebra is in view.
    iso, owner, c, labels = _spine(top_k=30.0)
    _piece(iso)
    assert border_fragments(iso, owner, c, labels, 1.0).shape == (0, 3)
    # Nothing is looked for above C1.
    iso, owner, c, labels = _spine()
    _piece(iso)
    assert border_fragments(iso, owner, c, [IDS["C1"] + v for v in range(4)], 1.0).shape == (0, 3)
    assert border_fragments(iso, owner, c[:1], labels[:1], 1.0).shape == (0, 3)


def test_params_are_checked():
    with pytest.raises(ValueError):
        FragmentParams(lateral_mm=0)
    with pytest.raises(ValueError):
        FragmentParams(max_contact=1.5)

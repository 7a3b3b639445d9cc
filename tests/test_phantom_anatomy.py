"""Phantom anatomy: the sacrum's curve and the per-patient proportions that real scans showed we lacked."""
from __future__ import annotations

import numpy as np

from phantom.anatomy import build_levels, patient_shape, place_spine
from phantom.vertebra import sacral_segments, sacral_tip


def _patient(seed: int):
    rng = np.random.default_rng(seed)
    levels = build_levels(rng, t13=False, l6=False, t11_last_rib=False)
    place_spine(levels, rng, 1.0, (1.0, 1.0, 1.0), None)
    return levels


def test_sacrum_is_concave_forwards():
    # Real sacra turn forwards going down (the pelvic surface is hollow); the tip points more downwards
    # than S1's axis. The first generator turned them backwards into a horizontal plate.
    for seed in range(20):
        sac = _patient(seed)[-1]
        segs = sacral_segments(sac)
        tilts = np.array([t for _, _, t, _ in segs])
        assert np.all(np.diff(tilts) < 0), tilts
        tip, tip_tilt = sacral_tip(sac)
        tip_w = sac.R @ tip  # LPS offset of the tip from S1's centre
        assert tip_w[2] < -45.0  # well below S1 (LPS z is superior)
        # The tangent at the tip points less backwards (+y = posterior) than S1's own downward axis.
        down_s1 = -sac.R[:, 2]
        down_tip = sac.R @ np.array([0.0, np.sin(tip_tilt), -np.cos(tip_tilt)])
        assert down_tip[1] < down_s1[1]


def test_sacral_slope_varies_between_patients():
    tilt = [np.degrees(np.arccos(_patient(s)[-1].R[2, 2])) for s in range(30)]
    assert 25.0 < min(tilt) and max(tilt) < 60.0
    assert max(tilt) - min(tilt) > 10.0


def test_patient_shape_reaches_every_level():
    levels = _patient(4)
    shape = patient_shape(np.random.default_rng(0))
    assert set(shape) <= set(levels[0].dims) | {"D", "W", "ped", "spL"}
    # One draw per patient: every level carries the same proportion factors.
    for key in ("nexp", "waist", "lam", "spT", "sacK"):
        assert len({lv.dims[key] for lv in levels}) == 1
    # Different patients differ.
    assert {lv.dims["nexp"] for lv in _patient(5)} != {lv.dims["nexp"] for lv in levels}

"""Phantom generator: determinism, label contract, centroid definition, orientation invariance, files, CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from engine.errors import OutputExistsError
from engine.labels import NAMES
from phantom import generate, write_case
from phantom.generator import label_centroids

SEED = 3
PROFILE = "tiny"  # small FOV, coarse voxels: quick to generate


@pytest.fixture(scope="module")
def case():
    return generate(SEED, PROFILE)


@pytest.fixture(scope="module")
def lps_case():
    return generate(SEED, PROFILE, orientation="LPS")


def test_deterministic_for_seed(case):
    again = generate(SEED, PROFILE)
    assert again.case_id == case.case_id
    np.testing.assert_array_equal(again.ct.array, case.ct.array)
    np.testing.assert_array_equal(again.labels.array, case.labels.array)
    assert again.ct.spacing == case.ct.spacing and again.ct.direction == case.ct.direction
    assert again.centroids == case.centroids


def test_different_seeds_differ(case):
    other = generate(SEED + 1, PROFILE)
    assert other.ct.array.shape != case.ct.array.shape or not np.array_equal(other.ct.array, case.ct.array)


def test_types_and_label_contract(case):
    assert case.ct.array.dtype == np.int16
    assert case.labels.array.dtype == np.uint8
    assert case.ct.array.shape == case.labels.array.shape
    assert case.ct.spacing == case.labels.spacing and case.ct.origin == case.labels.origin
    assert case.ct.direction == case.labels.direction
    ids = set(np.unique(case.labels.array).tolist()) - {0}
    assert ids, "a phantom must contain vertebrae"
    assert ids <= set(NAMES), f"labels outside the VerSe contract: {ids - set(NAMES)}"
    assert [c["label"] for c in case.centroids] == sorted(ids, key=lambda lb: case.meta["labels"].index(lb))
    # Realistic HU: air outside, bone inside the labels.
    a, lab = case.ct.array, case.labels.array
    assert a.min() >= -1024 and a.max() <= 3071
    assert np.median(a[lab > 0]) > 100
    assert np.percentile(a, 1) < -900


def _centroids_from_files(ct_path, seg_path):
    img = sitk.ReadImage(str(seg_path))
    arr = sitk.GetArrayFromImage(img)
    out = {}
    for lb in np.unique(arr):
        if lb == 0:
            continue
        k, j, i = np.nonzero(arr == lb)
        out[int(lb)] = np.array(img.TransformContinuousIndexToPhysicalPoint((i.mean(), j.mean(), k.mean())))
    return out


def test_written_centroids_are_physical_mean_index(case, tmp_path):
    paths = write_case(case, tmp_path)
    ctd = json.loads(paths["ctd"].read_text())
    ref = _centroids_from_files(paths["ct"], paths["seg"])
    assert sorted(c["label"] for c in ctd) == sorted(ref)
    for c in ctd:
        np.testing.assert_allclose([c["X"], c["Y"], c["Z"]], ref[c["label"]], atol=0.01)
    # The files hold exactly the case's arrays and geometry.
    ct = sitk.ReadImage(str(paths["ct"]))
    assert ct.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ct), case.ct.array)
    np.testing.assert_allclose(ct.GetDirection(), case.ct.direction)
    seg = sitk.ReadImage(str(paths["seg"]))
    assert seg.GetPixelID() == sitk.sitkUInt8


@pytest.mark.parametrize("code", ["RAS", "LPI", "PIR", "SLA"])
def test_storage_orientation_keeps_lps_centroids(code, lps_case):
    lps = lps_case
    other = generate(SEED, PROFILE, orientation=code)
    assert other.meta["orientation"] == code
    expected = np.asarray(sitk.DICOMOrientImageFilter.GetDirectionCosinesFromOrientation(code))
    np.testing.assert_allclose(other.ct.direction, expected)
    a = {c["label"]: np.array([c["X"], c["Y"], c["Z"]]) for c in lps.centroids}
    b = {c["label"]: np.array([c["X"], c["Y"], c["Z"]]) for c in other.centroids}
    assert a.keys() == b.keys()
    for lb in a:
        assert np.linalg.norm(a[lb] - b[lb]) < 0.5, (code, lb, a[lb], b[lb])
    # The stored image really is reoriented: the same physical voxel holds the same HU.
    ijk = np.array([3, 5, 7])
    p = lps.ct.index_to_lps(ijk)
    q = np.rint(other.ct.lps_to_index(p)).astype(int)
    assert other.ct.array[q[2], q[1], q[0]] == lps.ct.array[ijk[2], ijk[1], ijk[0]]


def test_label_centroids_on_known_image():
    arr = np.zeros((10, 12, 14), np.uint8)
    arr[2:4, 3:5, 4:8] = 22
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 1.0, 2.0))
    img.SetOrigin((10.0, -5.0, 3.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    (c,) = label_centroids(img)
    assert c["label"] == 22
    # mean index i = 5.5, j = 3.5, k = 2.5
    np.testing.assert_allclose([c["X"], c["Y"], c["Z"]], [10 - 5.5 * 0.5, -5 - 3.5, 3 + 2.5 * 2.0])


def test_write_refuses_overwrite(case, tmp_path):
    write_case(case, tmp_path)
    before = (tmp_path / f"{case.case_id}_ct.nii.gz").stat().st_mtime_ns
    with pytest.raises(OutputExistsError):
        write_case(case, tmp_path)
    assert (tmp_path / f"{case.case_id}_ct.nii.gz").stat().st_mtime_ns == before
    write_case(case, tmp_path, overwrite=True)


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run([sys.executable, "-m", "spinert", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_writes_n_cases(tmp_path):
    r = _cli("phantom", "--out", str(tmp_path / "out"), "--n", "2", "--seed", str(SEED), "--profile", PROFILE)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    for s in (SEED, SEED + 1):
        for suffix in ("_ct.nii.gz", "_seg-vert_msk.nii.gz", "_ctd.json"):
            assert f"phantom-{PROFILE}-{s:06d}{suffix}" in names
    # A second run without --overwrite refuses, with one line.
    r2 = _cli("phantom", "--out", str(tmp_path / "out"), "--n", "1", "--seed", str(SEED), "--profile", PROFILE)
    assert r2.returncode != 0 and len(r2.stderr.strip().splitlines()) == 1 and "overwrite" in r2.stderr


@pytest.mark.parametrize("args", [
    ["--n", "0"],
    ["--n", "-3"],
    ["--seed", "-1"],
    ["--orientation", "XYZ"],
])
def test_cli_bad_args_one_line(tmp_path, args):
    r = _cli("phantom", "--out", str(tmp_path / "o"), *args)
    assert r.returncode != 0
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_cli_unwritable_out(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    r = _cli("phantom", "--out", str(f / "sub"), "--n", "1", "--profile", PROFILE)
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    r = _cli("phantom", "--out", str(f), "--n", "1")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1


def _coarse_profile(monkeypatch, p: float) -> str:
    from dataclasses import replace

    from phantom.profiles import PROFILES

    # Same name: the name seeds the streams, so the seed keeps its patient.
    monkeypatch.setitem(PROFILES, PROFILE, replace(PROFILES[PROFILE], p_coarse=p, coarse_inplane_mm=(2.5, 3.0),
                                                   coarse_slice_mm=(4.0, 5.0)))
    return PROFILE


def test_coarse_scans_change_spacing_only(monkeypatch, case):
    # p_coarse draws from its own stream: with it off the image is the same as before; with it on the
    # same seed keeps its anatomy (labels in view, centroids) on a coarse grid.
    off = generate(SEED, _coarse_profile(monkeypatch, 0.0))
    np.testing.assert_array_equal(off.ct.array, case.ct.array)
    on = generate(SEED, _coarse_profile(monkeypatch, 1.0))
    sx, sy, sz = on.ct.spacing
    assert 2.5 <= sx == sy <= 3.0 and 4.0 <= sz <= 5.0
    assert on.meta["generator"] == case.meta["generator"] >= 3
    assert [c["label"] for c in on.centroids] == [c["label"] for c in case.centroids]
    for a, b in zip(on.centroids, case.centroids):  # centroids of coarser voxels move by < a voxel
        assert abs(a["X"] - b["X"]) < 3 and abs(a["Y"] - b["Y"]) < 3 and abs(a["Z"] - b["Z"]) < 5


def test_realism_report_real_against_phantoms(monkeypatch, tmp_path, case):
    # Two folders of phantoms (fine and coarse) measured against a reference folder: distinct groups,
    # the coarse one's pixels and bone edges show it, the report files are written and not overwritten.
    fine, coarse = tmp_path / "fine", tmp_path / "coarse"
    write_case(case, fine)
    write_case(generate(SEED + 1, PROFILE), tmp_path / "ref")
    write_case(generate(SEED, _coarse_profile(monkeypatch, 1.0)), coarse)
    out = tmp_path / "rep"
    r = _cli("realism", "--ref", str(tmp_path / "ref"), "--cases", str(fine), str(coarse), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "realism.json").read_text())
    by = {c["group"]: c for c in rep["cases"]}
    assert set(by) == {"ref", "fine", "coarse"}
    assert by["coarse"]["inplane_mm"] >= 2.5 > by["fine"]["inplane_mm"]
    assert by["coarse"]["surface_gradient_hu_mm"] < by["fine"]["surface_gradient_hu_mm"]  # blurrier bone edges
    assert 0 < by["fine"]["noise_hu"] < 200 and by["fine"]["vertebra_hu_p50"] > by["fine"]["ring_hu_p50"]
    assert set(rep["coverage"]) == {"fine", "coarse"}
    assert (out / "realism.png").read_bytes()[:4] == b"\x89PNG" and "| inplane_mm |" in (out / "realism.md").read_text()
    again = _cli("realism", "--ref", str(tmp_path / "ref"), "--cases", str(fine), "--out", str(out))
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1 and "--overwrite" in again.stderr
    bad = _cli("realism", "--ref", str(tmp_path / "nope"), "--cases", str(fine), "--out", str(tmp_path / "r2"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_spinal_canal_holds_csf_cord_and_epidural_fat():
    """Generator 4: the canal is CSF (cord above the conus) wrapped in epidural fat, not muscle."""
    from phantom.generator import _sample_patient, _seeded
    from phantom.grid import WorkGrid
    from phantom.neuraxis import CONUS_POS, canal_axis, paint_canal
    from phantom.profiles import get_profile

    pat = _sample_patient(_seeded(SEED, "default", 0), get_profile("default"))
    axis = canal_axis(pat)
    pts = np.array([c for c, *_ in axis])
    lo, hi = pts.min(0) - 20.0, pts.max(0) + 20.0
    grid = WorkGrid(origin=lo, h=1.0, shape=tuple(int(v) for v in np.ceil(hi - lo)[::-1]))
    muscle = 45.0
    hu = np.full(grid.shape, muscle, dtype=np.float32)
    paint_canal(grid, hu, pat, np.random.default_rng(0))
    rng = np.random.default_rng(0)  # the same draws paint_canal made
    fat, csf, cord = rng.uniform(-115.0, -80.0), rng.uniform(0.0, 15.0), rng.uniform(28.0, 40.0)

    def at(p):
        k = np.rint((np.asarray(p) - grid.origin) / grid.h).astype(int)
        return float(hu[k[2], k[1], k[0]])

    checked = 0
    for (a, up, cw, cd, pos), (b, *_rest) in zip(axis[:-1], axis[1:]):
        mid = 0.5 * (a + b)
        side = np.cross(b - a, up)
        side /= np.linalg.norm(side)
        if 21.0 <= pos <= 23.5:  # lumbar: CSF in the middle, fat between the sac and the canal wall
            assert at(mid) == pytest.approx(csf, abs=1.0)
            assert at(mid + side * 0.85 * cw) == pytest.approx(fat, abs=1.0)
            checked += 1
        elif 9.0 <= pos < CONUS_POS - 1:  # thoracic: the cord in the middle
            assert at(mid) == pytest.approx(cord, abs=1.0)
            checked += 1
    assert checked >= 10
    assert at(lo + 2.0) == muscle  # nothing painted outside the canal


def test_process_excess_reads_transverse_processes_against_the_body():
    """Known image: body 100 HU, transverse processes 150, a bright midline arch 600 that must not count."""
    from phantom.realism import process_excess

    lab = np.zeros((20, 90, 100), np.uint8)
    iso = np.zeros(lab.shape, np.float32)
    lab[:, 5:35, 35:65], iso[:, 5:35, 35:65] = 20, 100.0           # body, in front
    lab[:, 45:50, 5:20], iso[:, 45:50, 5:20] = 20, 150.0           # right process
    lab[:, 45:50, 80:95], iso[:, 45:50, 80:95] = 20, 150.0         # left process
    lab[:, 40:80, 46:54], iso[:, 40:80, 46:54] = 20, 600.0         # laminae and spinous process
    assert process_excess(iso, lab) == 50.0
    assert process_excess(iso, np.where(iso == 150.0, 0, lab).astype(np.uint8)) is None  # no processes


def test_generator5_draws_how_bright_the_processes_read(monkeypatch):
    """Generator 5: the transverse processes' density and cortex are per-patient draws (meta records them);
    faint ones read near the body's HU as in real scans, generator 4's were ~300 HU above it."""
    import phantom.generator as G
    from engine.preprocess import volume_to_image
    from phantom.realism import process_excess

    drawn = [generate(s, "default", span=(20, 21), spacing=(2.0, 2.0, 2.0)).meta["patient"] for s in (1, 2)]
    assert all(0.0 <= d["process_density"] <= 1.0 and 0.3 <= d["process_cortex"] <= 1.0 for d in drawn)
    assert drawn[0]["process_density"] != drawn[1]["process_density"]
    orig = G._sample_arch
    excess = []
    for density, cortex in ((0.0, 0.3), (1.0, 1.0)):
        def forced(pat, rng, density=density, cortex=cortex):
            orig(pat, rng)
            pat.process_density, pat.process_cortex = density, cortex
        monkeypatch.setattr(G, "_sample_arch", forced)
        c = G.generate(7, "default", span=(20, 22), spacing=(1.0, 1.0, 1.0), orientation="LPS")
        ct, lab = (sitk.GetArrayFromImage(volume_to_image(v)) for v in (c.ct, c.labels))
        excess.append(process_excess(ct[::-1].astype(np.float32), lab[::-1]))  # LPS -> the canonical LPI
    assert excess[0] < 80 < 200 < excess[1]


def test_generator_4_is_still_made_exactly_and_others_refused(tmp_path):
    """Version 5 only added its own random stream: asked for version 4, a seed gives the image without the
    arch draws (so earlier data sets are rebuilt from their seeds), and its meta says which version."""
    from engine.errors import SpinertError

    old, new = (generate(SEED, PROFILE, generator=v) for v in (4, 5))
    assert old.meta["generator"] == 4 and new.meta["generator"] == 5
    assert old.meta["patient"]["process_density"] == old.meta["patient"]["arch_density"] == 1.0
    np.testing.assert_array_equal(old.labels.array, new.labels.array)  # the anatomy is the same
    assert not np.array_equal(old.ct.array, new.ct.array)  # only the arch's density differs
    with pytest.raises(SpinertError, match="generator version"):
        generate(SEED, PROFILE, generator=3)
    r = _cli("phantom", "--out", str(tmp_path / "v4"), "--n", "1", "--seed", str(SEED), "--profile", PROFILE,
             "--generator", "4")
    assert r.returncode == 0, r.stderr
    meta = json.loads(next((tmp_path / "v4").glob("*_meta.json")).read_text())
    assert meta["generator"] == 4
    bad = _cli("phantom", "--out", str(tmp_path / "v3"), "--n", "1", "--generator", "3")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--generator" in bad.stderr

"""engine.verse: VerSe-style folders read right (real cases included) and fail with a clear DatasetError."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.errors import DatasetError, OutputExistsError
from engine.io import write_volume
from engine.types import Volume
from engine.verse import (Centroid, centroids_from_labels, list_cases, read_case, read_ctd, read_folder,
                          write_ctd)
from spinert.paths import real_data_dir

REAL = real_data_dir()
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} is not present (workplace data only)")


def _labels() -> Volume:
    a = np.zeros((40, 20, 24), np.uint8)
    a[4:14, 5:15, 6:18] = 20
    a[20:30, 5:15, 6:18] = 21
    return Volume(a, (0.7, 0.9, 1.5), (10.0, -20.0, 30.0), (0, 0, -1, 1, 0, 0, 0, -1, 0), "syn")  # PIR-like


def write_case(folder: Path, cid: str, vol: Volume | None = None) -> None:
    vol = vol or _labels()
    write_volume(Volume(np.full(vol.array.shape, -1000, np.int16), vol.spacing, vol.origin, vol.direction),
                 folder / f"{cid}_ct.nii.gz")
    write_volume(vol, folder / f"{cid}_seg-vert_msk.nii.gz")
    write_ctd(folder / f"{cid}_ctd.json", centroids_from_labels(vol))


def test_round_trip_and_lazy_loading(tmp_path):
    write_case(tmp_path, "b")
    write_case(tmp_path, "a")
    (tmp_path / "a_labels-info.json").write_text("{}")  # unknown files are ignored
    (tmp_path / "notes.txt").write_text("x")
    assert list_cases(tmp_path) == ["a", "b"]
    case = read_case(tmp_path, "a")
    assert "labels" not in case.__dict__  # nothing read yet
    assert case.labels.array.shape == (40, 20, 24) and case.ct.array.dtype == np.int16
    assert [c.label for c in case.centroids] == [20, 21]
    # centroid = physical point of the mean voxel index (PIR-like direction on purpose)
    kji = np.argwhere(case.labels.array == 21).mean(axis=0)
    assert np.allclose(case.centroids[1].xyz, case.labels.index_to_lps(kji[::-1]), atol=1e-6)
    assert [c.id for c in read_folder(tmp_path)] == ["a", "b"]


def test_ctd_extra_keys_and_verse_direction_header(tmp_path):
    p = tmp_path / "x_ctd.json"
    p.write_text(json.dumps([{"direction": ["P", "I", "R"]},
                             {"label": 8, "X": 1, "Y": 2.5, "Z": -3, "name": "T1", "confidence": 0.9}]))
    (c,) = read_ctd(p)
    assert c == Centroid(8, (1.0, 2.5, -3.0)) and c.extra == {"name": "T1", "confidence": 0.9}
    with pytest.raises(OutputExistsError):
        write_ctd(p, [c])
    write_ctd(p, [c], overwrite=True)
    assert json.loads(p.read_text()) == [{"label": 8, "X": 1.0, "Y": 2.5, "Z": -3.0, "name": "T1",
                                          "confidence": 0.9}]


@pytest.mark.parametrize("content, message", [
    ('{"label": 1, "X": 0, "Y": 0, "Z": 0}', "expected a JSON list"),
    ('[{"label": 1, "X": 0, "Y": 0}]', "entry 0 is not a {label, X, Y, Z} object"),
    ('[{"label": 99, "X": 0, "Y": 0, "Z": 0}]', "label 99, not a VerSe vertebra ID"),
    ('[{"label": 0, "X": 0, "Y": 0, "Z": 0}]', "label 0, not a VerSe vertebra ID"),
    ('[{"label": "L1", "X": 0, "Y": 0, "Z": 0}]', "non-numeric"),
    ('[{"label": 20, "X": "a", "Y": 0, "Z": 0}]', "non-numeric"),
    ('[{"label": 20, "X": NaN, "Y": 0, "Z": 0}]', "non-finite"),
    ('[{"label": 20, "X": 0, "Y": 0, "Z": 0}, {"label": 20, "X": 1, "Y": 0, "Z": 0}]', "appears twice"),
    ('[{"label": 20, ', "not valid JSON"),
])
def test_bad_ctd(tmp_path, content, message):
    p = tmp_path / "x_ctd.json"
    p.write_text(content)
    with pytest.raises(DatasetError, match=message.replace("{", r"\{").replace("}", r"\}")) as err:
        read_ctd(p)
    assert str(p) in str(err.value)


def test_duplicate_labels_allowed_for_predictions(tmp_path):
    p = tmp_path / "x_ctd.json"
    p.write_text('[{"label": 20, "X": 0, "Y": 0, "Z": 0}, {"label": 20, "X": 1, "Y": 0, "Z": 0}]')
    assert len(read_ctd(p, allow_duplicates=True)) == 2


def test_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        list_cases(tmp_path / "nope")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match="not a folder"):
        list_cases(tmp_path / "file")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no VerSe-style cases"):
        list_cases(empty)
    d = tmp_path / "d"
    d.mkdir()
    write_case(d, "a")
    (d / "a_ctd.json").unlink()
    with pytest.raises(DatasetError, match="case a lacks a_ctd.json"):
        list_cases(d)
    assert list_cases(d, require=("ct", "msk")) == ["a"]
    assert read_case(d, "a").centroids == []  # absent ctd: empty, only an error where required
    with pytest.raises(DatasetError, match="case a lacks a_ctd.json"):
        read_case(d, "a", require=("ctd",))
    with pytest.raises(DatasetError, match="no files for case zz"):
        read_case(d, "zz")


def test_case_errors(tmp_path):
    vol = _labels()
    write_case(tmp_path, "a", vol)
    moved = Volume(vol.array, vol.spacing, (0.0, 0.0, 0.0), vol.direction)
    write_volume(moved, tmp_path / "a_seg-vert_msk.nii.gz", overwrite=True)
    with pytest.raises(DatasetError, match="case a: CT and mask geometry differ \\(origin"):
        read_case(tmp_path, "a")
    cropped = Volume(vol.array[:-1], vol.spacing, vol.origin, vol.direction)
    write_volume(cropped, tmp_path / "a_seg-vert_msk.nii.gz", overwrite=True)
    with pytest.raises(DatasetError, match="geometry differ \\(size"):
        read_case(tmp_path, "a")
    bad = vol.array.copy()
    bad[0, 0, 0] = 77
    write_volume(Volume(bad, vol.spacing, vol.origin, vol.direction), tmp_path / "a_seg-vert_msk.nii.gz",
                 overwrite=True)
    with pytest.raises(DatasetError, match=r"label values \[77\] are not VerSe IDs"):
        read_case(tmp_path, "a").labels
    (tmp_path / "a_seg-vert_msk.nii.gz").write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="a_seg-vert_msk.nii.gz"):
        read_case(tmp_path, "a")


@needs_real
def test_real_folder_reads(tmp_path):
    ids = list_cases(REAL)
    assert ids == ["tptbox-sample-ct-L3", "tssample-example-ct", "tssample-example-ct-sm"]
    for cid in ids:
        case = read_case(REAL, cid, require=("ct", "msk", "ctd"))
        present = set(np.unique(case.labels.array).tolist()) - {0}
        assert {c.label for c in case.centroids} == present
        # the ctd is the mask's centre of mass in LPS mm (README): same to its 2-decimal rounding
        ours = {c.label: c.xyz for c in centroids_from_labels(case.labels)}
        for c in case.centroids:
            assert np.allclose(c.xyz, ours[c.label], atol=0.02)
    # a copy with one file missing names the case
    shutil.copytree(REAL, tmp_path / "r", ignore=shutil.ignore_patterns("licenses"))
    (tmp_path / "r" / "tssample-example-ct_seg-vert_msk.nii.gz").unlink()
    with pytest.raises(DatasetError, match="tssample-example-ct lacks tssample-example-ct_seg-vert_msk"):
        list_cases(tmp_path / "r")

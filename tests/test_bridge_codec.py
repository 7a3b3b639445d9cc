"""Mask encoding packbits-zlib/1 and the result map: round trips, a pinned test vector, hostile inputs."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from bridge import codec
from bridge.replay import result_from_label_map
from engine.io import read_volume
from spinert.paths import real_data_dir

REAL = real_data_dir()
CASES = ("tssample-example-ct", "tptbox-sample-ct-L3")
needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"{REAL} (real CT cases) not present")


def test_pinned_vector_matches_protocol_doc():
    # PROTOCOL.md's worked example: i = 0..2, j = 0..1, k = 0; voxels (0,0,0), (2,0,0), (1,1,0) set.
    m = {"encoding": "packbits-zlib/1", "order": "kji", "offset_ijk": [10, 20, 30], "shape_ijk": [3, 2, 1],
         "data": zlib.compress(bytes([0b10101000]))}
    mask = codec.decode_mask(m)
    assert mask.shape == (1, 2, 3)  # [k, j, i]
    assert mask.dtype == bool
    assert [tuple(int(x) for x in p[::-1]) for p in np.argwhere(mask)] == [(0, 0, 0), (2, 0, 0), (1, 1, 0)]
    enc = codec.encode_mask(mask, (10, 20, 30))
    assert zlib.decompress(enc["data"]) == bytes([0b10101000])
    assert enc["shape_ijk"] == [3, 2, 1] and enc["offset_ijk"] == [10, 20, 30]


@pytest.mark.parametrize("shape", [(1, 1, 1), (3, 5, 7), (8, 8, 8), (13, 1, 29), (0, 4, 4)])
def test_round_trip_random_masks(shape):
    rng = np.random.default_rng(sum(shape))
    mask = rng.random(shape) < 0.4
    out = codec.decode_mask(codec.unpack(codec.pack({"m": codec.encode_mask(mask)}))["m"])
    assert out.shape == mask.shape
    assert np.array_equal(out, mask)


def test_non_contiguous_input_is_encoded_in_kji_order():
    rng = np.random.default_rng(1)
    base = rng.random((6, 7, 9)) < 0.5
    view = base[::-1, :, ::2]  # a strided view must encode its logical [k, j, i] content
    assert np.array_equal(codec.decode_mask(codec.encode_mask(view)), view)


@pytest.mark.parametrize("bad, why", [
    ({"encoding": "rle/9", "shape_ijk": [1, 1, 1], "data": b""}, "unsupported mask encoding"),
    ({"encoding": "packbits-zlib/1", "order": "ijk", "shape_ijk": [1, 1, 1], "data": b""}, "unsupported mask order"),
    ({"encoding": "packbits-zlib/1", "shape_ijk": [1, 1], "data": b""}, "shape_ijk"),
    ({"encoding": "packbits-zlib/1", "shape_ijk": [1, 1.5, 1], "data": b""}, "shape_ijk"),
    ({"encoding": "packbits-zlib/1", "shape_ijk": [1, -1, 1], "data": b""}, "negative"),
    ({"encoding": "packbits-zlib/1", "shape_ijk": [4096, 4096, 4096], "data": b""}, "exceeds"),
    ({"encoding": "packbits-zlib/1", "shape_ijk": [4, 4, 4], "data": "text"}, "bytes"),
    ({"encoding": "packbits-zlib/1", "shape_ijk": [4, 4, 4], "data": b"not zlib"}, "zlib"),
    ({"encoding": "packbits-zlib/1", "shape_ijk": [4, 4, 4], "data": zlib.compress(b"\0" * 7)}, "needs 8"),
    # A zlib bomb: 100 MB of zeros promised to fill an 8-byte mask must be cut off, not inflated.
    ({"encoding": "packbits-zlib/1", "shape_ijk": [4, 4, 4], "data": zlib.compress(b"\0" * 100_000_000)}, "needs 8"),
    ("not a map", "map"),
])
def test_decode_rejects_bad_masks(bad, why):
    with pytest.raises(codec.CodecError, match=why):
        codec.decode_mask(bad)


def test_unpack_rejects_garbage():
    for data in (b"", b"\xc1", b"\x91" * 100_000 + b"\xc0", b"\xc6\xff\xff\xff\xffab", codec.pack([1, 2])):
        with pytest.raises(codec.CodecError):
            codec.unpack(data)


def test_paste_masks_clips_boxes_outside_the_volume():
    mask = np.ones((2, 2, 2), dtype=bool)
    verts = [{"label": 5, "mask": codec.encode_mask(mask, (-1, 0, 3))}]  # half outside in i, k
    out = codec.paste_masks(verts, [4, 4, 4])
    assert out.shape == (4, 4, 4)
    assert int((out == 5).sum()) == 1 * 2 * 1  # i in {0}, j in {0,1}, k in {3}
    assert np.all(out[3, 0:2, 0] == 5)


@needs_real
@pytest.mark.parametrize("case", CASES)
def test_result_map_round_trip_equals_stored_label_map_and_ctd(case):
    lab = read_volume(REAL / f"{case}_seg-vert_msk.nii.gz")
    result = result_from_label_map(lab, case)
    msg = codec.unpack(codec.pack(codec.stamp(codec.result_message(result, "x"), 1)))
    assert np.array_equal(codec.label_volume(msg), lab.array)
    back = codec.result_from_message(msg)
    assert np.array_equal(back.label_map(), lab.array)
    assert back.geometry == {k: list(v) for k, v in lab.geometry().items()}
    ctd = {c["label"]: (c["X"], c["Y"], c["Z"]) for c in json.loads((REAL / f"{case}_ctd.json").read_text())}
    assert sorted(ctd) == sorted(v["label"] for v in msg["vertebrae"])
    assert [v.recovered for v in back.vertebrae] == [False] * len(back.vertebrae)
    result.vertebrae[0].recovered = True  # found by the chain logic: the flag crosses the wire
    again = codec.result_from_message(codec.unpack(codec.pack(codec.stamp(codec.result_message(result, "x"), 2))))
    assert [v.recovered for v in again.vertebrae] == [True] + [False] * (len(again.vertebrae) - 1)
    for v in msg["vertebrae"]:
        assert v["name"] and isinstance(v["confidence"], float) and v["recovered"] is False
        np.testing.assert_allclose(v["center_lps_mm"], ctd[v["label"]], atol=0.006)  # ctd files: 0.01 mm

"""Bridge message codec (schema v1): SpineResult <-> msgpack maps, and the mask encoding "packbits-zlib/1".

This module is the decoder shipped to robot-side Python code: it needs only numpy, zlib and msgpack
(engine.types is imported lazily, only by the helpers that build engine records).

Mask encoding "packbits-zlib/1" (see bridge/PROTOCOL.md):
  the vertebra's mask cropped to its box, bool array in array order [k, j, i] (C order, i fastest),
  flattened, bit-packed MSB first (numpy.packbits, bitorder "big", last byte zero-padded), then
  zlib-compressed (RFC 1950). ``offset_ijk`` is the box corner and ``shape_ijk`` its (i, j, k) size in
  input voxels; the mask covers i in [offset_i, offset_i + shape_i) and likewise for j, k.
"""
from __future__ import annotations

import time
import zlib
from typing import TYPE_CHECKING, Any

import msgpack
import numpy as np

if TYPE_CHECKING:  # engine.types is light, but robot-side users of decode_* need not have it
    from engine.types import SpineResult

MASK_ENCODING = "packbits-zlib/1"
MASK_ORDER = "kji"  # C order of the [k, j, i] array: i varies fastest

SCHEMA_RESULT = "spinert.result/1"
SCHEMA_STATUS = "spinert.status/1"
SCHEMA_ERROR = "spinert.error/1"
SCHEMA_REQUEST = "spinert.request/1"
SCHEMAS = (SCHEMA_RESULT, SCHEMA_STATUS, SCHEMA_ERROR, SCHEMA_REQUEST)

# A mask box larger than this many voxels is refused by the decoder (a 1024^3 box; real vertebrae are
# ~10^6 voxels): it protects readers from a corrupt or hostile shape that would allocate gigabytes.
MAX_MASK_VOXELS = 1 << 30
# zlib level 1: ~4x faster than 6 on vertebra masks for ~35 % more bytes (155 vs 114 KB for 17 vertebrae at
# 0.8 mm); latency matters more than bytes on a robot link. Decoders do not care which level was used.
COMPRESS_LEVEL = 1


class CodecError(ValueError):
    """A message or mask that does not follow the v1 schema."""


# ---------------------------------------------------------------------------------------------- masks


def encode_mask(mask: np.ndarray | None, offset_ijk=(0, 0, 0), level: int = COMPRESS_LEVEL) -> dict[str, Any]:
    """A bool mask in array order [k, j, i] (cropped to its box) -> the wire map."""
    if mask is None:
        return {"encoding": MASK_ENCODING, "order": MASK_ORDER, "offset_ijk": [int(o) for o in offset_ijk],
                "shape_ijk": [0, 0, 0], "data": b""}
    m = np.asarray(mask)
    if m.ndim != 3:
        raise CodecError(f"mask must be 3-D [k, j, i], got shape {m.shape}")
    k, j, i = m.shape
    bits = np.packbits(np.ascontiguousarray(m, dtype=bool).reshape(-1), bitorder="big")
    return {
        "encoding": MASK_ENCODING,
        "order": MASK_ORDER,
        "offset_ijk": [int(o) for o in offset_ijk],
        "shape_ijk": [int(i), int(j), int(k)],
        "data": zlib.compress(bits.tobytes(), level),
    }


def _ints3(value: Any, what: str) -> tuple[int, int, int]:
    if not isinstance(value, (list, tuple)) or len(value) != 3 or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise CodecError(f"{what} must be a list of 3 integers, got {value!r:.80}")
    return int(value[0]), int(value[1]), int(value[2])


def decode_mask(m: dict[str, Any]) -> np.ndarray:
    """The wire map of one mask -> bool array of shape (shape_k, shape_j, shape_i), array order [k, j, i]."""
    if not isinstance(m, dict):
        raise CodecError(f"mask must be a map, got {type(m).__name__}")
    enc = m.get("encoding")
    if enc != MASK_ENCODING:
        raise CodecError(f"unsupported mask encoding {enc!r} (this decoder reads {MASK_ENCODING!r})")
    order = m.get("order", MASK_ORDER)
    if order != MASK_ORDER:
        raise CodecError(f"unsupported mask order {order!r} (expected {MASK_ORDER!r})")
    si, sj, sk = _ints3(m.get("shape_ijk"), "shape_ijk")
    if min(si, sj, sk) < 0:
        raise CodecError(f"negative mask shape {[si, sj, sk]}")
    n = si * sj * sk
    if n > MAX_MASK_VOXELS:
        raise CodecError(f"mask box of {n} voxels exceeds the decoder limit of {MAX_MASK_VOXELS}")
    data = m.get("data")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"mask data must be bytes, got {type(data).__name__}")
    if n == 0:
        return np.zeros((sk, sj, si), dtype=bool)
    nbytes = (n + 7) // 8
    try:
        # Bounded decompression: a corrupt stream cannot inflate past the size the shape promises.
        d = zlib.decompressobj()
        packed = d.decompress(bytes(data), nbytes + 1)
    except zlib.error as exc:
        raise CodecError(f"mask data is not a zlib stream ({exc})") from None
    if len(packed) != nbytes or not d.eof:
        raise CodecError(f"mask data holds {len(packed)}{'+' if not d.eof else ''} bytes, "
                         f"shape {[si, sj, sk]} needs {nbytes}")
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=n, bitorder="big")
    return bits.reshape(sk, sj, si).view(bool)


def paste_masks(vertebrae: list[dict[str, Any]], size_ijk, dtype=np.uint8) -> np.ndarray:
    """Every vertebra's mask placed into a full label volume of the input size, array order [k, j, i].

    ``vertebrae`` are wire maps (with "label" and "mask"). Voxels outside the volume (a box that sticks
    out) are clipped; where boxes overlap a later vertebra's voxels win, as in SpineResult.label_map().
    """
    si, sj, sk = _ints3(list(size_ijk), "size")
    if si * sj * sk > (1 << 34):
        raise CodecError(f"volume size {[si, sj, sk]} is implausibly large")
    out = np.zeros((sk, sj, si), dtype=dtype)
    for v in vertebrae:
        mask_map = v.get("mask")
        if mask_map is None:
            continue
        mask = decode_mask(mask_map)
        if mask.size == 0:
            continue
        oi, oj, ok = _ints3(mask_map.get("offset_ijk"), "offset_ijk")
        # Clip the box to the volume, and the mask with it.
        lo = np.array([ok, oj, oi])
        hi = lo + np.array(mask.shape)
        clo = np.maximum(lo, 0)
        chi = np.minimum(hi, [sk, sj, si])
        if np.any(chi <= clo):
            continue
        src = mask[tuple(slice(a - b, c - b) for a, b, c in zip(clo, lo, chi))]
        dst = out[tuple(slice(a, c) for a, c in zip(clo, chi))]
        dst[src] = v["label"]
    return out


def label_volume(msg: dict[str, Any], dtype=np.uint8) -> np.ndarray:
    """A decoded spinert.result/1 map -> full uint8 label map in input geometry, array order [k, j, i]."""
    check_schema(msg, SCHEMA_RESULT)
    return paste_masks(msg.get("vertebrae") or [], msg["volume"]["size"], dtype=dtype)


# -------------------------------------------------------------------------------------------- messages


def check_schema(msg: Any, schema: str | None = None) -> str:
    if not isinstance(msg, dict):
        raise CodecError(f"message must be a map, got {type(msg).__name__}")
    s = msg.get("schema")
    if not isinstance(s, str) or not s.startswith("spinert."):
        raise CodecError(f"message has no spinert schema (schema={s!r:.60})")
    if schema is not None and s != schema:
        raise CodecError(f"expected a {schema} message, got {s}")
    return s


def pack(msg: dict[str, Any]) -> bytes:
    return msgpack.packb(msg, use_bin_type=True)


def unpack(data: bytes) -> dict[str, Any]:
    """One wire frame -> map. Raises CodecError for anything that is not a msgpack map."""
    try:
        # Limits default to len(data), so a short frame cannot claim a huge array or string.
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # noqa: BLE001 - msgpack raises several unrelated types on garbage
        raise CodecError(f"not a msgpack message ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise CodecError(f"message must be a msgpack map, got {type(obj).__name__}")
    return obj


def stamp(msg: dict[str, Any], seq: int) -> dict[str, Any]:
    """Adds the per-message header fields (seq, stamp_ns) in place and returns the map."""
    msg["seq"] = int(seq)
    msg["stamp_ns"] = time.time_ns()
    return msg


def vertebra_message(v, level: int = COMPRESS_LEVEL) -> dict[str, Any]:
    """engine.types.Vertebra -> wire map."""
    return {
        "label": int(v.label),
        "name": str(v.name),
        "center_lps_mm": [float(c) for c in v.center_lps],
        "confidence": float(v.confidence),
        "recovered": bool(v.recovered),
        "mask": encode_mask(v.mask, v.offset_ijk, level),
    }


def result_message(result: "SpineResult", request_id: str | None = None, level: int = COMPRESS_LEVEL) -> dict[str, Any]:
    """engine.types.SpineResult -> spinert.result/1 map (without seq/stamp_ns: the server adds them)."""
    g = result.geometry
    return {
        "schema": SCHEMA_RESULT,
        "id": request_id,
        "volume": {
            "id": str(result.volume_id),
            "size": [int(s) for s in g["size"]],
            "spacing": [float(s) for s in g["spacing"]],
            "origin": [float(o) for o in g["origin"]],
            "direction": [float(d) for d in g["direction"]],
        },
        "vertebrae": [vertebra_message(v, level) for v in result.vertebrae],
        "warnings": [str(w) for w in result.warnings],
        "timings_ms": {str(k): float(t) for k, t in result.timings_ms.items()},
        "backend": str(result.backend),
        "precision": str(result.precision),
        "models": {str(k): str(m) for k, m in result.models.items()},
    }


def status_message(state: str, **fields: Any) -> dict[str, Any]:
    return {"schema": SCHEMA_STATUS, "state": state, **fields}


def error_message(error: str, request_id: Any = None, code: str = "bad_request") -> dict[str, Any]:
    one_line = " ".join(str(error).split())[:500]
    return {"schema": SCHEMA_ERROR, "id": request_id if isinstance(request_id, str) else None,
            "code": code, "error": one_line}


def result_from_message(msg: dict[str, Any]) -> "SpineResult":
    """A spinert.result/1 map -> engine.types.SpineResult (masks decoded, input-voxel geometry)."""
    from engine.types import SpineResult, Vertebra

    check_schema(msg, SCHEMA_RESULT)
    vol = msg["volume"]
    verts = []
    for v in msg.get("vertebrae") or []:
        mask_map = v.get("mask")
        mask = decode_mask(mask_map) if mask_map is not None else None
        if mask is not None and mask.size == 0:
            mask = None
        offset = _ints3(mask_map.get("offset_ijk"), "offset_ijk") if mask_map is not None else (0, 0, 0)
        verts.append(Vertebra(label=int(v["label"]), name=str(v["name"]),
                              center_lps=tuple(float(c) for c in v["center_lps_mm"]),
                              confidence=float(v.get("confidence", 0.0)), mask=mask, offset_ijk=offset,
                              recovered=bool(v.get("recovered", False))))
    geometry = {k: list(vol[k]) for k in ("size", "spacing", "origin", "direction")}
    return SpineResult(volume_id=str(vol.get("id", "")), geometry=geometry, vertebrae=verts,
                       warnings=list(msg.get("warnings") or []), timings_ms=dict(msg.get("timings_ms") or {}),
                       backend=str(msg.get("backend", "")), precision=str(msg.get("precision", "")),
                       models=dict(msg.get("models") or {}))

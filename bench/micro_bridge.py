"""Bridge micro-benchmark: message size of a full result with masks, and publish latency p50/p99.

Latency is measured over real sockets on 127.0.0.1: from handing a SpineResult to the server
(`BridgeServer.publish_result`: mask encoding, msgpack packing, the loop thread's NOBLOCK send) until a
subscriber holds the unpacked map. Decoding every mask into a full label volume is reported separately
(robot side). Run: `python -m bench.micro_bridge [--n 200] [--json OUT]`; `spinert bench` calls run().
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from spinert.paths import real_data_dir

REAL = real_data_dir()
L3_CASE = "tptbox-sample-ct-L3"  # the one whole vertebra (L3, label 22) among the real cases


def _l3_mask() -> tuple[np.ndarray, float]:
    from engine.io import read_volume

    real = REAL / f"{L3_CASE}_seg-vert_msk.nii.gz"
    if real.is_file():
        lab = read_volume(real)
    else:  # outside the workplace: the shipped demo phantom's L3 (same label, ~1 mm grid)
        from spinert import asset_path

        lab = read_volume(str(asset_path("data", "sample_seg-vert_msk.nii.gz")))
    from scipy import ndimage

    box = ndimage.find_objects((lab.array == 22).astype(np.uint8))[0]
    m = lab.array[box] == 22
    # Put the vertebra's height (its shortest extent) on array axis 0, the axis the spine is stacked along.
    h = int(np.argmin(m.shape))
    return np.moveaxis(m, h, 0), float(lab.spacing[0])


def realistic_result(n: int = 17, spacing_mm: float = 0.8):
    """A SpineResult of `n` vertebrae (T1 down) with real vertebra shapes on a fine CT grid.

    Each mask is the real L3 mask of the TPTBox sample (1.5 mm) resampled (linear, > 0.5) to `spacing_mm`
    and scaled from 0.55x (T1) to 1.05x (L5) of its size, stacked craniocaudally as in a spine: the size
    of a real whole-spine result at a surgical-CT resolution.
    """
    from scipy import ndimage

    from engine import labels as verse
    from engine.types import SpineResult, Vertebra

    base, base_sp = _l3_mask()
    levels = [lab for lab in verse.CRANIOCAUDAL if 8 <= lab <= 24][:n] if n <= 17 else list(range(1, n + 1))
    masks = []
    for t, _lab in enumerate(levels):
        scale = 0.55 + 0.5 * t / max(1, len(levels) - 1)
        z = ndimage.zoom(base.astype(np.float32), scale * base_sp / spacing_mm, order=1) > 0.5
        masks.append(z)
    size_i = max(m.shape[2] for m in masks) + 40
    size_j = max(m.shape[1] for m in masks) + 40
    overlap = 4  # adjacent boxes overlap a little, as real ones do
    size_k = sum(m.shape[0] - overlap for m in masks) + 40
    geometry = {"size": [size_i, size_j, size_k], "spacing": [spacing_mm] * 3, "origin": [0.0, 0.0, 0.0],
                "direction": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]}
    verts, k = [], 20
    for lab, m in zip(levels, masks):
        off = (20 + (size_i - 40 - m.shape[2]) // 2, 20 + (size_j - 40 - m.shape[1]) // 2, k)
        k += m.shape[0] - overlap
        c_kji = np.array(ndimage.center_of_mass(m))
        centre = (np.array(off) + c_kji[::-1]) * spacing_mm
        verts.append(Vertebra(label=lab, name=verse.name(lab), center_lps=tuple(float(c) for c in centre),
                              confidence=0.99, mask=m, offset_ijk=off))
    return SpineResult(volume_id="realistic-17", geometry=geometry, vertebrae=verts, backend="bench")


def message_sizes(result) -> dict:
    from bridge import codec

    msg = codec.stamp(codec.result_message(result, "bench"), 1)
    packed = codec.pack(msg)
    mask_bytes = [len(v["mask"]["data"]) for v in msg["vertebrae"]]
    voxels = [int(np.prod(v["mask"]["shape_ijk"])) for v in msg["vertebrae"]]
    return {
        "vertebrae": len(mask_bytes),
        "message_bytes": len(packed),
        "mask_bytes_total": int(sum(mask_bytes)),
        "mask_bytes_per_vertebra_mean": float(np.mean(mask_bytes)) if mask_bytes else 0.0,
        "box_voxels_total": int(sum(voxels)),
        "raw_bool_bytes_total": int(sum(voxels)),  # one byte per voxel, uncompressed
        "compression_vs_raw": float(sum(voxels) / max(1, sum(mask_bytes))),
    }


def _pct(xs: list[float]) -> dict:
    a = np.asarray(xs)
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "mean": float(a.mean()),
            "max": float(a.max())}


def publish_latency(result, n: int = 200) -> dict:
    """Publishes `result` n times through a live server on 127.0.0.1 and times each hop (ms)."""
    from bridge import codec
    from bridge.client import Subscriber
    from bridge.server import BridgeServer, ServerConfig

    cfg = ServerConfig(pub="tcp://127.0.0.1:*", rep="tcp://127.0.0.1:*", heartbeat_s=3600.0, hwm=64)
    encode_ms, e2e_ms, decode_ms = [], [], []
    with BridgeServer(cfg, runner=lambda *a, **k: result) as srv, \
            Subscriber(srv.pub_endpoint, schemas=(codec.SCHEMA_RESULT,)) as sub:
        # Publish until one arrives: the subscription is live (slow joiner), then time from a clean state.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            srv.publish_result(result, "warmup")
            if sub.recv(0.2) is not None:
                break
        while sub.recv(0.2) is not None:  # drain warm-up copies
            pass
        for i in range(n):
            t0 = time.perf_counter()
            codec.result_message(result, "x")
            t1 = time.perf_counter()
            srv.publish_result(result, f"r{i}")
            msg = sub.recv(10.0)
            t2 = time.perf_counter()
            if msg is None:
                raise RuntimeError("bench: a published result never arrived")
            codec.label_volume(msg)
            t3 = time.perf_counter()
            encode_ms.append((t1 - t0) * 1e3)
            e2e_ms.append((t2 - t1) * 1e3)
            decode_ms.append((t3 - t2) * 1e3)
    return {"n": n, "encode_ms": _pct(encode_ms), "publish_to_subscriber_ms": _pct(e2e_ms),
            "decode_label_volume_ms": _pct(decode_ms)}


def run(n: int = 200, result=None) -> dict:
    """Everything `spinert bench` reports for the bridge."""
    result = result if result is not None else realistic_result()
    return {"result": {"volume_size": result.geometry["size"], "spacing_mm": result.geometry["spacing"]},
            "sizes": message_sizes(result), "latency": publish_latency(result, n)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="publishes to time (default 200)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    args = ap.parse_args(argv)
    report = run(args.n)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Test helpers for the cascade: tiny *analytic* ONNX models with the real I/O contract, and a synthetic CT.

The models are real ONNX graphs run by real onnxruntime sessions, small enough that the whole cascade
runs in about a second, and they compute something sensible, so the plumbing is exercised on real
detections, masks and scores:
- detector: every 8-px cell of the letterboxed slice is an anchor; a cell whose mean brightness is a local
  maximum (3x3 cells) scores a steep sigmoid of it, with a fixed 24-px box (the bone blocks of make_ct are
  brightest at their centre, so each block gives one box per slice near its centre);
- segmenter: bone-window threshold times the centre-weight channel (the bone block around the centre);
- labeller: global average pool of the channels -> fixed linear layer -> K logits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from engine.models import sha256_file, write_manifest
from engine.types import Volume

HU_WINDOW = [-400.0, 1400.0]
IMGSZ = 128
CELL = 8
BOX = 24  # px; two tied peak cells of one vertebra overlap by IoU >= 0.29 > 0.25 and NMS merges them
CLASSES = list(range(1, 25))


def _save(graph, path: Path) -> Path:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def _const(name: str, arr) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def detector_graph(path: Path, imgsz: int = IMGSZ, cell: int = CELL) -> Path:
    g = imgsz // cell
    a = g * g
    ys, xs = np.meshgrid((np.arange(g) + 0.5) * cell, (np.arange(g) + 0.5) * cell, indexing="ij")
    cxcy_wh = np.stack([xs.ravel(), ys.ravel(), np.full(a, BOX * 1.0), np.full(a, BOX * 1.0)])[None]  # [1,4,A]
    nodes = [
        helper.make_node("Slice", ["images", "s0", "s1", "ax1"], ["ch0"]),
        helper.make_node("AveragePool", ["ch0"], ["avg"], kernel_shape=[cell, cell], strides=[cell, cell]),
        # CenterNet-style peaks: a cell scores only where its mean is the maximum of its 3x3 neighbourhood.
        helper.make_node("MaxPool", ["avg"], ["mx"], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1]),
        helper.make_node("Equal", ["avg", "mx"], ["is_peak"]),
        helper.make_node("Cast", ["is_peak"], ["peak"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["avg", "thr"], ["d"]),
        helper.make_node("Mul", ["d", "gain"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["sig"]),
        helper.make_node("Mul", ["sig", "peak"], ["sc"]),
        helper.make_node("Reshape", ["sc", "shape_n1a"], ["score"]),
        helper.make_node("Mul", ["score", "zero"], ["zeros"]),  # [N,1,A] zeros: broadcasts the anchors to N
        helper.make_node("Add", ["zeros", "boxes"], ["b"]),
        helper.make_node("Concat", ["b", "score"], ["output0"], axis=1),
    ]
    inits = [_const("s0", np.array([0], np.int64)), _const("s1", np.array([1], np.int64)),
             _const("ax1", np.array([1], np.int64)), _const("shape_n1a", np.array([-1, 1, a], np.int64)),
             _const("thr", np.float32(0.46)), _const("gain", np.float32(40.0)), _const("zero", np.float32(0.0)),
             _const("boxes", cxcy_wh.astype(np.float32))]
    graph = helper.make_graph(nodes, "synth_detector",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, imgsz, imgsz])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["N", 5, a])], inits)
    return _save(graph, path)


def segmenter_graph(path: Path, roi: int = 128) -> Path:
    nodes = [
        helper.make_node("Slice", ["roi", "s0", "s1", "ax1"], ["ct"]),
        helper.make_node("Slice", ["roi", "s1", "s2", "ax1"], ["w"]),
        helper.make_node("Sub", ["ct", "t_ct"], ["a0"]),
        helper.make_node("Mul", ["a0", "gain"], ["a1"]),
        helper.make_node("Sigmoid", ["a1"], ["bone"]),
        helper.make_node("Sub", ["w", "t_w"], ["b0"]),
        helper.make_node("Mul", ["b0", "gain"], ["b1"]),
        helper.make_node("Sigmoid", ["b1"], ["near"]),
        helper.make_node("Mul", ["bone", "near"], ["prob"]),
    ]
    inits = [_const("s0", np.array([0], np.int64)), _const("s1", np.array([1], np.int64)),
             _const("s2", np.array([2], np.int64)), _const("ax1", np.array([1], np.int64)),
             _const("t_ct", np.float32(0.45)), _const("t_w", np.float32(0.3)), _const("gain", np.float32(40.0))]
    graph = helper.make_graph(nodes, "synth_segmenter",
                              [helper.make_tensor_value_info("roi", TensorProto.FLOAT, ["N", 2, roi, roi, roi])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 1, roi, roi, roi])],
                              inits)
    return _save(graph, path)


def labeller_graph(path: Path, channels: int = 2, shape=(48, 96, 96), k: int = len(CLASSES)) -> Path:
    rng = np.random.default_rng(7)
    w = rng.normal(size=(channels, k)).astype(np.float32) * 4
    b = np.linspace(1.0, -1.0, k).astype(np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("MatMul", ["f", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["logits"])]
    graph = helper.make_graph(nodes, "synth_labeller",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", channels, *shape])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", k])],
                              [_const("w", w), _const("b", b)])
    return _save(graph, path)


def make_models(root: Path, trained: bool = True) -> Path:
    """A models folder (ONNX files + manifest.json) with the three analytic models; fp16 = same graph."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    pp_det = {"spacing_mm": 1.0, "imgsz": IMGSZ, "hu_window": HU_WINDOW, "conf": 0.5, "iou": 0.25}
    pp_seg = {"spacing_mm": 1.0, "roi": 128, "hu_window": HU_WINDOW, "weight_sigma_mm": 16.0, "threshold": 0.5}
    pp_lab = {"spacing_mm": 1.0, "shape": [48, 96, 96], "crop": "fixed", "extent_mm": [64.0, 128.0, 128.0],
              "margin_mm": 2.0, "hu_window": HU_WINDOW, "channels": ["mask", "ct"]}
    built = {"detector": (detector_graph, pp_det, ["vertebra"], "images", "output0"),
             "segmenter": (segmenter_graph, pp_seg, ["vertebra"], "roi", "prob"),
             "labeller": (labeller_graph, pp_lab, CLASSES, "x", "logits")}
    entries = {}
    for name, (fn, pp, classes, iname, oname) in built.items():
        f32 = fn(root / f"{name}.onnx")
        f16 = root / f"{name}_fp16.onnx"
        f16.write_bytes(f32.read_bytes())
        m = onnx.load(str(f32))
        shape = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
        entries[name] = {"files": {"fp32": f32.name, "fp16": f16.name},
                         "sha256": {"fp32": sha256_file(f32), "fp16": sha256_file(f16)},
                         "inputs": [{"name": iname, "shape": shape(m.graph.input[0]), "dtype": "float32"}],
                         "outputs": [{"name": oname, "shape": shape(m.graph.output[0]), "dtype": "float32"}],
                         "preprocess": pp, "classes": classes, "version": "synthetic-1",
                         "trained": {"synthetic": True} if trained else False}
    write_manifest(root, entries)
    return root


def make_ct(n_vert: int = 5, spacing=(1.0, 1.0, 1.5), seed: int = 0, name: str = "synth") -> Volume:
    """A small CT in LPS storage: a soft-tissue body with ``n_vert`` bone blocks stacked along the spine.

    Array [k, j, i]; identity direction, so i grows to the left, j to posterior, k to superior (LPS +Z).
    Blocks 20 mm tall, 32 mm apart, 28 mm wide; spacing (i, j, k) mm.
    """
    rng = np.random.default_rng(seed)
    sx, sy, sz = spacing
    ni, nj = int(round(90 / sx)), int(round(80 / sy))
    nk = int(round((n_vert * 32 + 30) / sz))
    z = (np.arange(nk) + 0.5) * sz
    y = (np.arange(nj) + 0.5) * sy
    x = (np.arange(ni) + 0.5) * sx
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    a = np.full((nk, nj, ni), -1000.0, dtype=np.float32)
    body = ((X - 45) / 40) ** 2 + ((Y - 40) / 36) ** 2 <= 1
    a[body] = 20.0
    for v in range(n_vert):
        zc = 31 + v * 32
        # A pyramid of density: 1000 HU at the centre, 300 HU at the faces (Chebyshev distance), so the
        # brightest spot of every slice through the block is its centre.
        r = np.maximum(np.maximum(np.abs(Z - zc) / 10, np.abs(X - 45) / 14), np.abs(Y - 42) / 12)
        blk = r <= 1
        a[blk] = (300.0 + 700.0 * (1 - r[blk])).astype(np.float32)
    a += rng.normal(0, 5, size=a.shape).astype(np.float32)
    return Volume(a, (float(sx), float(sy), float(sz)), (-45.0, -40.0, 100.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0), name)


def reorient(vol: Volume, perm=(0, 1, 2), flips=(False, False, False), name: str | None = None) -> Volume:
    """The same physical image stored with other index axes: new axis a (i, j, k order) is old axis
    ``perm[a]``, reversed where ``flips[a]``. Spacing, origin and direction follow, so every voxel keeps
    its LPS position (what a scanner writing RAS or another slice order produces)."""
    arr_ijk = vol.array.transpose(2, 1, 0).transpose(perm)
    for a, f in enumerate(flips):
        if f:
            arr_ijk = np.flip(arr_ijk, axis=a)
    d_old = vol.direction_matrix()
    size_old = np.asarray(vol.size)
    d_new = np.zeros((3, 3))
    old_idx = np.zeros(3)
    for a in range(3):
        p = perm[a]
        d_new[:, a] = (-1.0 if flips[a] else 1.0) * d_old[:, p]
        old_idx[p] = size_old[p] - 1 if flips[a] else 0
    origin = vol.index_to_lps(old_idx)
    return Volume(np.ascontiguousarray(arr_ijk.transpose(2, 1, 0)), tuple(float(vol.spacing[p]) for p in perm),
                  tuple(float(o) for o in origin), tuple(float(x) for x in d_new.ravel()), name or vol.name)


def mask_centroid_lps(result_vertebra, geometry: dict) -> np.ndarray:
    """LPS centroid of a Vertebra's cropped input-grid mask."""
    kji = np.argwhere(result_vertebra.mask).mean(axis=0)
    ijk = kji[::-1] + np.asarray(result_vertebra.offset_ijk)
    d = np.asarray(geometry["direction"], dtype=np.float64).reshape(3, 3)
    return np.asarray(geometry["origin"]) + (ijk * np.asarray(geometry["spacing"])) @ d.T

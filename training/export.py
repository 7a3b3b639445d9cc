"""ONNX export (fp32 + fp16, dynamic batch), parity checks, manifest entries and model cards."""
from __future__ import annotations

import datetime as _dt
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.models import sha256_file, write_manifest
from engine.localise import CentreOffset

OPSET = 17
# Parity bounds (max abs error vs PyTorch fp32 on uniform random input). Outputs of the segmenter are
# probabilities in [0, 1]; labeller/detector outputs are logits / pixels, so their bounds are relative.
FP32_ATOL = 1e-4
FP16_ATOL_PROB = 2e-2


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: str | Path, input_name: str,
                output_name: str) -> Path:
    """TorchScript-based export (stable for these plain conv/attention graphs), dynamic batch axis "N"."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "N"}, output_name: {0: "N"}}, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    import onnx

    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    return path


def to_fp16(src: str | Path, dst: str | Path, max_tries: int = 40) -> Path:
    """FP16 weights/compute with float32 inputs and outputs (keep_io_types), so callers feed the same arrays.

    onnxconverter-common retypes Cast nodes of shape/anchor arithmetic (e.g. YOLO's head) into graphs ORT
    rejects; each such node named by ORT's type error is kept in fp32 and the conversion retried.
    """
    import re

    import onnx
    import onnxruntime as ort
    from onnxconverter_common import float16

    block: list[str] = []
    for _ in range(max_tries):
        m = onnx.load(str(src))
        del m.graph.value_info[:]  # stale fp32 value_info misleads the converter
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m16 = float16.convert_float_to_float16(m, keep_io_types=True, node_block_list=block)
        onnx.checker.check_model(m16)
        onnx.save(m16, str(dst))
        try:
            ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
            return Path(dst)
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail type
            hit = re.search(r"of node \(([^)]+)\)", str(exc))
            if not hit or hit.group(1) in block:
                raise
            block.append(hit.group(1))
    raise RuntimeError(f"fp16 conversion of {src} did not converge (kept fp32: {block})")


def ort_run(path: str | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def parity(model: torch.nn.Module, path: str | Path, x: np.ndarray) -> float:
    """Max abs difference between PyTorch (fp32, eval) and the ONNX file on input ``x``."""
    with torch.no_grad():
        ref = model.eval().float()(torch.from_numpy(x)).numpy()
    got = ort_run(path, x)
    if ref.shape != got.shape:
        raise AssertionError(f"ONNX output shape {got.shape} != torch {ref.shape}")
    return float(np.max(np.abs(ref - got)))


def io_spec(path: str | Path) -> tuple[list[dict], list[dict]]:
    """Input/output names, shapes (dynamic dims as their names, e.g. "N") and dtypes read back from the file."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    init = {i.name for i in m.graph.initializer}

    def desc(v):
        t = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else int(d.dim_value) for d in t.shape.dim]
        return {"name": v.name, "shape": shape, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return [desc(v) for v in m.graph.input if v.name not in init], [desc(v) for v in m.graph.output]


def ship(name: str, fp32: Path, fp16: Path, models_dir: str | Path, entry: dict[str, Any], card: str) -> Path:
    """Copy the two ONNX files into ``models_dir``, write the manifest entry (with sha256, I/O) and the card."""
    root = Path(models_dir)
    root.mkdir(parents=True, exist_ok=True)
    files = {"fp32": f"{name}.onnx", "fp16": f"{name}_fp16.onnx"}
    for src, dst in ((fp32, files["fp32"]), (fp16, files["fp16"])):
        if Path(src).resolve() != (root / dst).resolve():
            shutil.copyfile(src, root / dst)
    inputs, outputs = io_spec(root / files["fp32"])
    full = {"files": files,
            "sha256": {k: sha256_file(root / v) for k, v in files.items()},
            "size_bytes": {k: (root / v).stat().st_size for k, v in files.items()},
            "inputs": inputs, "outputs": outputs, **entry}
    write_manifest(root, {name: full})
    (root / f"{name}.md").write_text(card)
    return root / "manifest.json"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def card_text(name: str, title: str, entry: dict[str, Any], body: str) -> str:
    """A model card: what it is, how to feed it, where it comes from, how good it is."""
    trained = entry.get("trained")
    status = ("**UNTRAINED** (random weights: an interface placeholder, do not use its outputs)"
              if trained is False else "trained")
    lines = [f"# {title}", "", f"Model `{name}` — version `{entry.get('version', '')}` — {status}.", "",
             body.strip(), "",
             "## Input / output", "",
             "See `manifest.json` for names, shapes and dtypes (dynamic batch axis `N`). FP16 files keep",
             "float32 inputs and outputs (`keep_io_types`), so both precisions take the same arrays.", "",
             "## Preprocessing", "", "```json", json.dumps(entry.get("preprocess", {}), indent=2), "```", "",
             "## Classes", "", "```json", json.dumps(entry.get("classes"), indent=None), "```", "",
             "## Cost", "", f"- parameters: {entry.get('params', 0):,}",
             f"- forward FLOPs per sample: {entry.get('flops', 0) / 1e9:.2f} G", "",
             "## Training", "", "```json", json.dumps(trained, indent=2), "```", "",
             "## Validation metrics", "", "```json", json.dumps(entry.get("metrics", {}), indent=2), "```", "",
             *((["## Held-out evaluation (`spinert train <model> --evaluate DIR --record`)", "", "```json",
                 json.dumps(entry["heldout"], indent=2), "```", ""]) if entry.get("heldout") else []),
             "## Export parity (max abs error vs PyTorch fp32, random input)", "", "```json",
             json.dumps(entry.get("parity", {}), indent=2), "```", ""]
    offset = CentreOffset.from_manifest(entry)
    if offset is not None:
        lines += [offset.card_markdown()]
    return "\n".join(lines)


def export_and_ship(name: str, title: str, model: torch.nn.Module, example_shape: tuple[int, ...],
                    io_names: tuple[str, str], entry: dict[str, Any], card_body: str, out: Path,
                    work: Path) -> dict:
    """The common tail of every model's training: ONNX fp32 + fp16, parity on random input, manifest
    entry (arch, params, FLOPs, parity added to ``entry``) and model card."""
    from training.nets import config_dict, count_flops, count_params

    fp32, fp16 = work / f"{name}.onnx", work / f"{name}_fp16.onnx"
    example = torch.rand(1, *example_shape)
    export_onnx(model, example, fp32, *io_names)
    to_fp16(fp32, fp16)
    x = np.random.default_rng(0).random((2, *example_shape), dtype=np.float32)
    par = {"fp32_max_abs": parity(model, fp32, x), "fp16_max_abs": parity(model, fp16, x),
           "input": f"uniform [0,1) {list(x.shape)}"}
    entry = {**entry, "arch": {"name": type(model).__name__, **config_dict(model.cfg)},
             "params": count_params(model), "flops": count_flops(model, example), "parity": par}
    card = card_text(name, title, entry, card_body)
    return {"manifest": str(ship(name, fp32, fp16, out, entry, card)), "metrics": entry.get("metrics"),
            "parity": par}

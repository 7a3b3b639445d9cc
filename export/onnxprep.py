"""ONNX as the builders want it: opset >= 17, a dynamic batch axis, simplified with onnxslim.

The training helper already exports opset 17 with a dynamic batch; this checks it (a model from
elsewhere may not be) and simplifies the graph once, so TensorRT's parser and onnx2torch see constant-folded,
Identity-free graphs (onnx2torch fails on the unsimplified ones: Identity-aliased initialisers).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engine.errors import ModelError

MIN_OPSET = 17


@dataclass
class PreparedOnnx:
    path: Path | None
    opset: int
    simplified: bool
    note: str = ""


def _opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def check_model(model, source: Path) -> int:
    """Opset and dynamic batch checks; returns the opset. ModelError with the reason otherwise."""
    opset = _opset(model)
    if opset < MIN_OPSET:
        raise ModelError(f"{source}: opset {opset} < {MIN_OPSET}; re-export it with opset_version>={MIN_OPSET}")
    inits = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = inp.type.tensor_type.shape.dim
        if not dims or not dims[0].dim_param and dims[0].dim_value > 0:
            raise ModelError(f"{source}: input {inp.name!r} has a fixed batch axis; export with dynamic_axes={{0: 'N'}}")
    return opset


def simplify(model):
    """onnxslim's simplification; Q/DQ graphs are left as they are (folding would undo the quantisation)."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        return model, False, "Q/DQ graph: not simplified"
    import onnxslim

    return onnxslim.slim(model), True, f"onnxslim {getattr(onnxslim, '__version__', '?')}"


def load_simplified(source: str | Path):
    """(simplified onnx.ModelProto, opset, note) of ``source``."""
    import onnx

    source = Path(source)
    try:
        model = onnx.load(str(source))
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ModelError(f"cannot read ONNX model {source}: {exc}") from None
    opset = check_model(model, source)
    slim, _done, note = simplify(model)
    return slim, opset, note


def prepare(source: str | Path, dest: str | Path) -> PreparedOnnx:
    """Check + simplify ``source`` into ``dest`` (a .onnx the builder parses)."""
    import onnx

    slim, opset, note = load_simplified(source)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp.onnx")
    onnx.save(slim, str(tmp))
    tmp.replace(dest)
    return PreparedOnnx(dest, opset, "not simplified" not in note, note)

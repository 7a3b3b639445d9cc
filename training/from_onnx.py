"""Start a training run from a shipped ONNX model: its weights back into the torch network, BatchNorm unfolded.

Only the ONNX files ship (`spinert/models/`); the torch checkpoints stay in the trainer's --work folder and are
lost with it. A researcher who fine-tunes on new data must still be able to start from what ships, so this
module rebuilds the torch state from the ONNX file:

1. **Which tensor is which.** The exporter renames, transposes and folds parameters (Conv+BatchNorm become
   one Conv; Linear weights become transposed MatMul constants). We export the same network once with every
   parameter filled with its own range of integers ("markers"), BatchNorm set to identity: each
   initializer of that file then names the parameter it came from, and its integer values give the element
   permutation. A second marker export, with the markers on the BatchNorm shifts instead of the conv biases,
   names the BatchNorm whose shift a folded Conv bias holds. Initializers are matched to the shipped file by
   position (node index, input index), so names that differ between torch versions do not matter.
2. **BatchNorm unfolded.** A folded Conv computes ``W'x + b'``. We load ``W'`` into the conv and, for its
   BatchNorm, measure the per-channel mean ``m`` and variance ``v`` of ``W'x`` on a few training batches,
   then set ``running_mean = m``, ``running_var = v``, ``weight = sqrt(v + eps)``, ``bias = b' + m``: the
   network in eval mode computes exactly the shipped function, and in train mode (batch statistics) almost
   the same, so training continues from the shipped model instead of from a network whose normalisation
   starts somewhere else. The batches must be what training feeds: measured on the segmenter (session 10),
   statistics taken on full 128^3 ROIs instead of its 64^3 training crops drifted under 30 train-mode
   forward passes (no weight update) and cut validation Dice from 0.76 to 0.45; taken on the crops, 0.76.
3. **Checked.** The rebuilt network is exported again and compared with the shipped file on the calibration
   batches; a mismatch is an error, never a silent bad start.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn

from engine.errors import SpinertError

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
PARITY_ATOL = 1e-3  # on outputs of order 1 (probabilities, logits); fp32 reordering is ~1e-5
_ARCH_HINT = "check --widths/--channels against its manifest entry 'arch'"


class OnnxInitError(SpinertError):
    """The ONNX file cannot seed this network (different architecture, fp16/int8 file, unknown tensors)."""


def _initializers(path: Path) -> tuple[list[str], dict[tuple[int, int], np.ndarray]]:
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    ops, pos = [], {}
    for node in m.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.output[0]] = inits[node.input[0]]  # the exporter shares identical tensors this way
            continue
        for j, name in enumerate(node.input):
            if name in inits:
                pos[(len(ops), j)] = inits[name]
        ops.append(node.op_type)
    return ops, pos


def _export(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    from training.export import export_onnx

    export_onnx(model, example, path, "x", "y")


def _marker_copy(model: nn.Module, bn_shift_markers: bool) -> tuple[nn.Module, list[tuple[str, int, int]]]:
    """A copy whose parameters hold disjoint integer ranges; BatchNorm is identity except (optionally) its shift."""
    mk = copy.deepcopy(model).eval()
    ranges, start = [], 1  # 0 is never a marker: a zero tensor is "not a parameter"
    bn_names = {f"{n}.{p}" for n, mod in mk.named_modules() if isinstance(mod, _BN) for p in ("weight", "bias")}
    conv_bias = {f"{n}.bias" for n, mod in mk.named_modules() if isinstance(mod, (nn.Conv3d, nn.ConvTranspose3d))
                 and mod.bias is not None}
    with torch.no_grad():
        for name, p in mk.named_parameters():
            if name in bn_names and not (bn_shift_markers and name.endswith(".bias")):
                p.fill_(1.0 if name.endswith(".weight") else 0.0)
                continue
            if name in conv_bias and bn_shift_markers:
                p.zero_()
                continue
            p.copy_(torch.arange(start, start + p.numel(), dtype=torch.float32).reshape(p.shape))
            ranges.append((name, start, p.numel()))
            start += p.numel()
        for mod in mk.modules():
            if isinstance(mod, _BN):
                mod.running_mean.zero_()
                mod.running_var.fill_(1.0 - mod.eps)
    if start >= 2 ** 24:
        raise OnnxInitError("network too large for float32 markers")
    return mk, ranges


def _identify(values: np.ndarray, ranges: list[tuple[str, int, int]]) -> tuple[str, np.ndarray] | None:
    """(parameter name, flat index of each element) if ``values`` is a permutation of one parameter's markers."""
    v = np.rint(values.astype(np.float64)).ravel()
    if v.size == 0 or v.min() < 1:
        return None
    for name, start, n in ranges:
        if start <= v.min() and v.max() < start + n and v.size == n:
            idx = (v - start).astype(np.int64)
            if np.array_equal(np.sort(idx), np.arange(n)):
                return name, idx
    return None


def _scatter(values: np.ndarray, idx: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """The file's tensor back in the parameter's element order (``idx``: each element's flat index)."""
    t = torch.empty(like.numel())
    t[idx] = torch.from_numpy(values.astype(np.float32).ravel())
    return t.reshape(like.shape)


def _bn_stats(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and variance of every BatchNorm's input over ``batches`` (model in eval mode)."""
    acc: dict[str, list] = {}

    def hook(name):
        def f(_mod, inp, _out):
            x = inp[0].detach().double().transpose(0, 1).flatten(1)  # [C, N*spatial]
            s = acc.setdefault(name, [0, 0.0, 0.0])
            s[0] += x.shape[1]
            s[1] = s[1] + x.sum(1)
            s[2] = s[2] + (x * x).sum(1)
        return f

    hs = [mod.register_forward_hook(hook(n)) for n, mod in model.named_modules() if isinstance(mod, _BN)]
    model.eval()
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hs:
        h.remove()
    out = {}
    for name, (n, s1, s2) in acc.items():
        mean = s1 / n
        out[name] = (mean.float(), (s2 / n - mean * mean).clamp_min(0.0).float())
    return out


def load_onnx_init(model: nn.Module, path: str | Path, batches: Iterable[torch.Tensor], log=print,
                   check: Iterable[torch.Tensor] | None = None) -> float:
    """Load the fp32 ONNX file ``path`` into ``model`` (same architecture), BatchNorm unfolded on ``batches``.

    ``batches`` should be what training feeds (its crops, its batch size): their statistics become the
    BatchNorm statistics, so train mode starts where the shipped network's training left off. ``check``
    (default: ``batches``) are inputs of the ONNX file's own shape for the parity check. Returns the max abs
    difference between the rebuilt network and the ONNX file on ``check``.
    """
    path = Path(path)
    batches = [b.float().cpu() for b in batches]
    check = batches if check is None else [b.float().cpu() for b in check]
    if not batches or not check:
        raise OnnxInitError("no calibration batches")
    ops, shipped = _initializers(path)
    if any(a.dtype != np.float32 for a in shipped.values() if a.dtype.kind == "f"):
        raise OnnxInitError(f"{path.name} holds non-fp32 weights: start from the fp32 file (<name>.onnx)")
    model = model.cpu()
    example = check[0][:1]
    with tempfile.TemporaryDirectory() as tmp:
        marks = []
        for k, shift in enumerate((False, True)):
            mk, ranges = _marker_copy(model, shift)
            _export(mk, example, Path(tmp) / f"m{k}.onnx")
            m_ops, m_pos = _initializers(Path(tmp) / f"m{k}.onnx")
            marks.append((m_pos, ranges))
    if m_ops != ops or set(m_pos) != set(shipped):
        raise OnnxInitError(f"{path.name} is not this network (its graph differs; {_ARCH_HINT})")

    params = dict(model.named_parameters())
    bn_mods = {n: m for n, m in model.named_modules() if isinstance(m, _BN)}
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    folded_bias: dict[str, torch.Tensor] = {}  # BatchNorm name -> b' of the Conv it was folded into
    loaded: set[str] = set()
    for key, arr in shipped.items():
        a0, a1 = marks[0][0][key], marks[1][0][key]
        if a0.shape != arr.shape:
            raise OnnxInitError(f"{path.name} is not this network: a weight of shape {arr.shape} where this network "
                                f"has {a0.shape} ({_ARCH_HINT})")
        if arr.dtype.kind != "f":
            if not np.array_equal(a0, arr):
                raise OnnxInitError(f"{path.name}: a graph constant differs from this network's")
            continue
        bn_shift = _identify(a1, marks[1][1])
        who = _identify(a0, marks[0][1])
        if bn_shift is not None and bn_shift[0].rsplit(".", 1)[0] in bn_mods:
            name, idx = bn_shift
            folded_bias[name.rsplit(".", 1)[0]] = _scatter(arr, idx, params[name])
            if who is not None:  # the conv's own bias was folded into the same b'
                state[who[0]] = torch.zeros_like(state[who[0]])
                loaded.add(who[0])
            loaded.add(name)
            continue
        if who is None:
            if np.array_equal(a0, arr):
                continue  # a constant of the graph, not a weight
            raise OnnxInitError(f"{path.name}: a weight tensor {arr.shape} matches no parameter of this network")
        name, idx = who
        state[name] = _scatter(arr, idx, params[name])
        loaded.add(name)

    for n, mod in bn_mods.items():  # identity first: the statistics pass must see the shipped function
        state[f"{n}.weight"] = torch.ones_like(state[f"{n}.weight"])
        state[f"{n}.bias"] = folded_bias.get(n, torch.zeros_like(state[f"{n}.bias"]))
        state[f"{n}.running_mean"] = torch.zeros_like(state[f"{n}.running_mean"])
        state[f"{n}.running_var"] = torch.full_like(state[f"{n}.running_var"], 1.0 - mod.eps)
        loaded |= {f"{n}.weight", f"{n}.bias"}
    missing = sorted(set(params) - loaded)
    if missing:
        raise OnnxInitError(f"{path.name} has no weights for {', '.join(missing[:4])}"
                            f"{' …' if len(missing) > 4 else ''}")
    model.load_state_dict(state)

    stats = _bn_stats(model, batches)
    with torch.no_grad():
        for n, mod in bn_mods.items():
            mean, var = stats[n]
            mod.running_mean.copy_(mean)
            mod.running_var.copy_(var)
            mod.weight.copy_(torch.sqrt(var + mod.eps))
            mod.bias.add_(mean)

    err = _parity(model, path, check)
    if err > PARITY_ATOL:
        raise OnnxInitError(f"rebuilt network differs from {path.name} by {err:.2e} (> {PARITY_ATOL})")
    log(f"initialised from {path} (ONNX; BatchNorm unfolded on {sum(len(b) for b in batches)} samples, "
        f"max abs diff {err:.1e})")
    return err


def _parity(model: nn.Module, path: Path, batches: list[torch.Tensor]) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    model.eval()
    err = 0.0
    with torch.no_grad():
        for b in batches:
            ref = sess.run(None, {name: b.numpy()})[0]
            err = max(err, float(np.abs(model(b).numpy() - ref).max()))
    return err

"""Pieces every training loop shares: device choice, seeding, checkpoints (resumable), progress bars."""
from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from engine.errors import SpinertError


def each_case(fn: Callable[[str], Any], ids: list[str], workers: int = 1, desc: str = "cases") -> list:
    """``fn(case_id)`` for each id, in id order, with a progress bar; in ``workers`` processes when more
    than one case is left. Caching a case (resampling, and for ``--masks-from`` a segmenter run at one
    thread) is one core's work: on a 2-core machine one process left a core idle for the 55 min the
    labeller's mask cache took in session 24. The workers are spawned, not forked: the parent has torch's
    OpenMP pool, which a forked child can deadlock on. ``fn`` must pickle (a module-level function or a
    ``functools.partial`` of one)."""
    ids = list(ids)
    if workers <= 1 or len(ids) <= 1:
        return [fn(cid) for cid in tqdm(ids, desc=desc, leave=False)]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=min(workers, len(ids)), mp_context=multiprocessing.get_context("spawn"),
                             initializer=_die_with, initargs=(os.getpid(),)) as ex:
        return list(tqdm(ex.map(fn, ids), total=len(ids), desc=f"{desc} ({min(workers, len(ids))} processes)",
                         leave=False))


def _die_with(parent: int) -> None:
    """Cache worker initializer: end with the ``spinert train`` that started it. A killed parent (SIGTERM
    from a job limit) left its workers caching queued cases at full CPU for minutes (session 25). On Linux
    the kernel signals the worker when its parent dies (PR_SET_PDEATHSIG); a parent already gone before
    that was set is caught by the ppid check."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)


def cache_workers(args) -> int:
    """``--workers`` (processes that fill a data cache): default the machine's cores, at most 4 (each holds
    one resampled CT); 1 for ``--tiny``, whose two cases would wait longer for the processes to start."""
    n = getattr(args, "workers", None)
    if n is not None:
        if n < 1:
            raise SpinertError(f"--workers must be >= 1, got {n}")
        return int(n)
    return 1 if getattr(args, "tiny", False) else max(1, min(4, os.cpu_count() or 1))


def pick_device(name: str | None) -> torch.device:
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpinertError("--device cuda requested but no CUDA GPU is available")
    return torch.device(name)


def set_threads(device: torch.device, threads: int | None = None) -> None:
    """CPU threads for torch: SPINERT_TRAIN_THREADS (so two trainings can share a 2-core machine), else 2."""
    if device.type == "cpu":
        torch.set_num_threads(int(os.environ.get("SPINERT_TRAIN_THREADS", 0)) or threads or 2)


def train_layout(x, device: torch.device):
    """A model or a 5-D batch on ``device`` in channels-last 3-D (NDHWC), the layout both 3-D networks train
    in: oneDNN's 3-D convolutions run a segmenter step 1.9-2.4x faster there on CPU than in NCDHW
    (``python -m bench.micro_train_step``; bench/results/cpu-2026-12-01-s17)."""
    return x.to(device, memory_format=torch.channels_last_3d)


def export_layout(model):
    """``model`` on the CPU in the default contiguous layout, as export and the final evaluation take it."""
    return model.cpu().to(memory_format=torch.contiguous_format)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Schedule:
    epochs: int
    steps_per_epoch: int
    batch: int
    lr: float
    extra: dict[str, Any] = field(default_factory=dict)


def save_ckpt(path: Path, model, opt, sched, epoch: int, history: list, extra: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                "sched": sched.state_dict() if sched is not None else None,
                "epoch": epoch, "history": history, "extra": extra,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "py": random.getstate()}},
               tmp)
    tmp.replace(path)


def load_ckpt(path: Path, model, opt=None, sched=None) -> dict:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"])
    if opt is not None and ck.get("opt"):
        opt.load_state_dict(ck["opt"])
    if sched is not None and ck.get("sched"):
        sched.load_state_dict(ck["sched"])
    rng = ck.get("rng")
    if rng:
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["py"])
    return ck


def probability_arg(args, name: str, default: float) -> float:
    """``args.<name>`` as a probability (``default`` when not given); SpinertError naming the flag if not in [0, 1]."""
    v = getattr(args, name, None)
    p = default if v is None else float(v)
    if not 0.0 <= p <= 1.0:
        raise SpinertError(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {p}")
    return p


def init_path(args) -> Path | None:
    """The --init weights a run starts from (None: from scratch); SpinertError if the file is missing."""
    path = getattr(args, "init", None)
    if not path:
        return None
    if not Path(path).is_file():
        raise SpinertError(f"--init weights not found: {path}")
    return Path(path)


def init_label(args) -> str:
    """What the training record says a run started from (with the file's sha256, so the start is traceable)."""
    path = getattr(args, "init", None)
    if not path:
        return "scratch"
    from engine.models import sha256_file

    return f"{path} (sha256 {sha256_file(Path(path))[:16]})"


def init_weights(model, args, log=print, batches: Callable[[], tuple[list, list]] | None = None) -> None:
    """Start from --init's weights with a fresh optimiser and schedule (a second, longer schedule).

    A ``.onnx`` file (a shipped fp32 model) is read back by ``training.from_onnx``: ``batches()`` returns
    (training batches, on which its folded BatchNorm is unfolded; inputs of the file's shape for parity).
    """
    path = init_path(args)
    if path is None:
        return
    if path.suffix == ".onnx":
        from training.from_onnx import load_onnx_init

        train, check = batches()
        load_onnx_init(model, path, train, log, check=check)
        return
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model.load_state_dict(ck["model"] if "model" in ck else ck)
    log(f"initialised from {path}")


def fit(model, opt, sched, step_fn: Callable[[int], float], validate: Callable[[], dict], schedule: Schedule,
        ckpt_dir: Path, resume: bool, key: str | tuple[str, ...], higher_is_better: bool = True, log=print,
        validate_init: bool = False) -> dict:
    """Epoch loop: ``step_fn(global_step) -> loss``; validation + checkpoint (last and best) after each epoch.

    ``key``: the validation metric that picks the best epoch, or several compared in order, so a later one
    breaks ties of an earlier one that saturates (chain accuracy on a 20-case validation set does).

    ``validate_init``: a fresh run from --init weights first scores them (epoch -1 in the history), so a
    fine-tune that never beats its start says so and ships the start, not its best worse epoch.
    Returns {"history": [...], "best": metrics of the best epoch, "best_path": ...}.
    """
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    last, best_p = ckpt_dir / "last.pt", ckpt_dir / "best.pt"
    start, history = 0, []
    if resume and last.is_file():
        ck = load_ckpt(last, model, opt, sched)
        start, history = ck["epoch"] + 1, ck["history"]
        log(f"resumed from {last} at epoch {start}")
    elif resume:
        log(f"--resume: no checkpoint at {last}, starting fresh")
    best = None
    if validate_init and not history:
        model.eval()
        rec = {"epoch": -1, "init": True, **validate()}
        history.append(rec)
        log(json.dumps(rec))
        save_ckpt(best_p, model, opt, sched, -1, history, {"best": rec})
    keys = (key,) if isinstance(key, str) else tuple(key)

    def beats(rec: dict, ref: dict | None) -> bool:
        a, b = tuple(rec[k] for k in keys), None if ref is None else tuple(ref[k] for k in keys)
        return b is None or ((a > b) if higher_is_better else (a < b))

    for h in history:
        if beats(h, best):
            best = h
    for epoch in range(start, schedule.epochs):
        model.train()
        t0, losses = time.time(), []
        bar = tqdm(range(schedule.steps_per_epoch), desc=f"epoch {epoch + 1}/{schedule.epochs}", leave=False,
                   mininterval=2.0)
        for s in bar:
            losses.append(step_fn(epoch * schedule.steps_per_epoch + s))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if sched is not None:
            sched.step()
        model.eval()
        metrics = validate()
        rec = {"epoch": epoch, "loss": float(np.mean(losses)), "train_s": round(time.time() - t0, 1), **metrics}
        history.append(rec)
        log(json.dumps(rec))
        improved = beats(rec, best)
        if improved:
            best = rec
        save_ckpt(last, model, opt, sched, epoch, history, {"best": best})
        if improved:
            save_ckpt(best_p, model, opt, sched, epoch, history, {"best": best})
    if best is not None and best.get("init"):
        shown = ", ".join(f"{k} {best[k]:.4f}" for k in keys)
        log(f"no epoch beat the --init weights on validation ({shown}): they are kept")
    return {"history": history, "best": best, "best_path": best_p if best_p.is_file() else last}


def torch_predictor(model, device) -> Callable[[np.ndarray], np.ndarray]:
    """numpy in, numpy out: lets the validation code score a torch model and an ONNX session alike."""
    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x).to(device)).float().cpu().numpy()
    return predict

"""Wires the bridge server to the real cascade (engine.pipeline.Cascade).

The server only knows `runner(volume_or_path, progress) -> SpineResult` and `models() -> info`; this module
builds both from one Cascade (sessions loaded once, reused for every request), so the bridge stays testable
without models and decoupled from the engine's internals.
"""
from __future__ import annotations

from typing import Any, Callable


def cascade_runner(backend: str | None = None, precision: str | None = None,
                   models_dir=None) -> tuple[Callable, Callable, Any]:
    """(runner, models, cascade). Model/backend problems raise SpinertError subclasses (one clear line)."""
    from engine.pipeline import Cascade  # heavy: sessions, backends

    cascade = Cascade(backend=backend, precision=precision, models_dir=models_dir)

    def run(source, progress=None):
        # progress(stage, "started" | "finished", **info) is exactly the Cascade's own callback contract.
        return cascade.run(source, progress=progress)

    def models() -> Any:
        info = cascade.models_info()
        info["trained"] = bool(cascade.trained)
        return info

    return run, models, cascade

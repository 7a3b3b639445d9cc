"""Where the workplace's shared data lives: `../shared/` beside the checkout, or $SPINERT_SHARED."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    return Path(os.environ.get("SPINERT_SHARED", REPO.parent / "shared"))


def real_data_dir() -> Path:
    """The small real CTs with VerSe-style labels (absent outside the workplace: callers skip)."""
    return shared_dir() / "data" / "real"


def user_cache_dir(name: str, env: str) -> Path:
    """$<env> if set, else $XDG_CACHE_HOME (or ~/.cache)/spinert/<name>: engines and calibration caches
    belong to a machine and a user, not to the package or a checkout."""
    override = os.environ.get(env)
    if override:
        return Path(override).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spinert" / name

"""Where nerve keeps its files."""

from __future__ import annotations

import os
from pathlib import Path


def nerve_home() -> Path:
    """``$NERVE_HOME``, default ``~/.cache/nerve``."""
    return Path(os.environ.get("NERVE_HOME") or Path.home() / ".cache" / "nerve").expanduser()


def models_dir() -> Path:
    return nerve_home() / "models"


def datasets_dir() -> Path | None:
    """The shared NER datasets (``$NERVE_DATASETS`` or ``../shared/datasets`` beside the checkout)."""
    env = os.environ.get("NERVE_DATASETS")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "datasets")
    for c in candidates:
        if c.is_dir():
            return c
    return None

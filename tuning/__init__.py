"""Fine-tuning small LLMs (and an encoder baseline) for nerve's NER task.

Entry points (plain functions the ``nerve`` CLI wires up):

* :func:`tuning.run.tune` — ``tune(config_path, overrides) -> run_dir``
* :func:`tuning.export.export_checkpoint` — a run / adapter -> a servable, verified checkpoint
* :func:`tuning.report.data_report` — entity counts and token lengths of a dataset for a model

Importing this package is cheap; the heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "tune": "tuning.run",
    "run_config": "tuning.run",
    "export_checkpoint": "tuning.export",
    "ExportError": "tuning.export",
    "data_report": "tuning.report",
    "DataReport": "tuning.data",
    "load_config": "tuning.config",
    "TuneConfig": "tuning.config",
    "ConfigError": "tuning.config",
    "config_help": "tuning.config",
    "METHODS": "tuning.methods",
    "MethodUnavailableError": "tuning.methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tuning' has no attribute {name!r}")

"""Fine-tuning small LLMs (and an encoder baseline) for nerve's NER task.

Entry points (plain functions the ``nerve`` CLI wires up):

* :func:`nerve.tuning.run.tune` — ``tune(config_path, overrides) -> run_dir``
* :func:`nerve.tuning.export.export_checkpoint` — a run / adapter -> a servable, verified checkpoint
* :func:`nerve.tuning.report.data_report` — entity counts and token lengths of a dataset for a model

Importing this package is cheap; the heavy modules load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "tune": "nerve.tuning.run",
    "run_config": "nerve.tuning.run",
    "export_checkpoint": "nerve.tuning.export",
    "ExportError": "nerve.tuning.export",
    "data_report": "nerve.tuning.report",
    "DataReport": "nerve.tuning.data",
    "load_config": "nerve.tuning.config",
    "TuneConfig": "nerve.tuning.config",
    "ConfigError": "nerve.tuning.config",
    "config_help": "nerve.tuning.config",
    "METHODS": "nerve.tuning.methods",
    "MethodUnavailableError": "nerve.tuning.methods",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nerve.tuning' has no attribute {name!r}")

"""Results files: every one says which machine its figures were measured on.

Figures from two machines differ by more than any effect nerve measures (on an AVX2-only CPU bf16 runs many
times slower than on one with AVX-512 BF16), so each results file carries the CPU model, its flags that
change the kernels, the core count and the dtype ``auto`` resolves to there (:func:`nerve.hardware.describe_machine`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    from nerve.hardware import choose_dtype, describe_machine

    return describe_machine([choose_dtype("auto").dtype])


def write_results(path: Path, data: dict[str, Any]) -> Path:
    """Write ``data`` as JSON at ``path``, with a ``machine`` entry unless the data already has one."""
    data = {**data, "machine": data.get("machine") or machine()}
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path

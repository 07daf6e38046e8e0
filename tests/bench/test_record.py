"""Results files record the machine their figures come from."""

from __future__ import annotations

import json

from bench.record import write_results


def test_results_name_the_machine(tmp_path) -> None:
    path = write_results(tmp_path / "r.json", {"speed": 1.5})
    data = json.loads(path.read_text())
    cpu = data["machine"]["cpu"]
    assert data["speed"] == 1.5 and cpu["cores"] >= 1 and cpu["model"] and "native_bf16" in cpu
    assert data["machine"]["dtypes"][0] in ("bfloat16", "float32", "float16")
    kept = write_results(tmp_path / "k.json", {"machine": {"cpu": "given"}})
    assert json.loads(kept.read_text())["machine"] == {"cpu": "given"}

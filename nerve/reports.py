"""Evaluation reports: JSON, Markdown and a per-type F1 bar chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ner.scoring import ScoreReport


def percentiles(values: list[float], qs: tuple[float, ...] = (50, 90, 95, 99)) -> dict[str, float]:
    if not values:
        return {f"p{int(q)}": 0.0 for q in qs}
    s = sorted(values)
    out = {}
    for q in qs:
        k = (len(s) - 1) * q / 100
        lo, hi = int(k), min(int(k) + 1, len(s) - 1)
        out[f"p{int(q)}"] = s[lo] + (s[hi] - s[lo]) * (k - lo)
    return out


def plot_f1(report: ScoreReport, path: Path, title: str) -> Path:
    """A horizontal bar chart of per-type F1 with micro and macro lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.labels)
    f1 = [report.labels[n].f1 for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.6))
    bars = ax.barh(names[::-1], f1[::-1], color="#4C72B0")
    for b, v in zip(bars, f1[::-1], strict=True):
        ax.text(min(v + 0.01, 0.93), b.get_y() + b.get_height() / 2, f"{v:.2f}", va="center", fontsize=8)
    ax.axvline(report.micro.f1, color="#C44E52", ls="--", label=f"micro F1 {report.micro.f1:.3f}")
    ax.axvline(report.macro.f1, color="#55A868", ls=":", label=f"macro F1 {report.macro.f1:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("entity F1 (strict span)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: ScoreReport, out_dir: Path, *, name: str, meta: dict[str, Any],
                 latencies: list[float] | None = None) -> dict[str, Path]:
    """Write ``NAME.json``, ``NAME.md`` and ``NAME.png`` into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, **report.to_dict()}
    if latencies is not None:
        data["latency_seconds"] = percentiles(latencies)
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    lines = [f"# Evaluation: {name}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", report.to_markdown(), ""]
    paths["md"].write_text("\n".join(lines), encoding="utf-8")
    plot_f1(report, paths["png"], f"{name}: per-type F1")
    return paths

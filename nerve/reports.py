"""Evaluation reports: JSON, Markdown, a per-type F1 bar chart and, with an error analysis, a confusion matrix."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nerve.ner.errors_analysis import ErrorAnalysis
from nerve.ner.scoring import ScoreReport


def percentile(values: Sequence[float], q: float, *, method: str = "linear") -> float:
    """The ``q``-th percentile of non-empty ``values``.

    ``linear`` interpolates between the two nearest ranks (numpy's default; latencies). ``nearest`` is the
    nearest rank rounded up, a value of the data such that at least ``q``% of the values are <= it (numpy's
    ``inverted_cdf``; token lengths, where a bound must cover that share of the examples).
    """
    s = sorted(values)
    if not s:
        raise ValueError("the percentile of no values")
    if method == "nearest":
        return s[min(max(1, math.ceil(q / 100 * len(s))), len(s)) - 1]
    if method != "linear":
        raise ValueError(f"method must be linear or nearest, not {method!r}")
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def percentiles(values: Sequence[float], qs: tuple[float, ...] = (50, 90, 95, 99)) -> dict[str, float]:
    """``{"p50": ..., ...}`` of ``values`` by linear interpolation (all 0.0 without values)."""
    return {f"p{int(q)}": percentile(values, q) if values else 0.0 for q in qs}


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


def plot_confusion(analysis: ErrorAnalysis, path: Path, title: str) -> Path:
    """A heat map of the confusion matrix of types (rows gold, columns predicted, ``(none)`` for missed and
    spurious entities), each cell with its count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, matrix = analysis.labels, analysis.matrix()
    n = len(labels)
    peak = max((v for row in matrix for v in row), default=0)
    side = 0.55 * n + 2.4
    fig, ax = plt.subplots(figsize=(side + 1, side))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=max(peak, 1))
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8,
                    color="white" if v > peak / 2 else ("#999999" if not v else "black"))
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_threshold_curve(report: ScoreReport, path: Path, title: str) -> Path:
    """Precision and recall against the entity-score threshold, and the precision/recall curve beside it,
    with the threshold of the best F1 marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = report.curve
    t = [p.threshold for p in pts]
    best = max(pts, key=lambda p: (p.f1, -p.threshold))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(t, [p.precision for p in pts], color="#4C72B0", label="precision")
    left.plot(t, [p.recall for p in pts], color="#C44E52", label="recall")
    left.plot(t, [p.f1 for p in pts], color="#55A868", ls="--", label="F1")
    left.axvline(best.threshold, color="#999999", ls=":", label=f"best F1 {best.f1:.3f} at {best.threshold:.2f}")
    left.set_xlim(0, 1)
    left.set_ylim(0, 1.02)
    left.set_xlabel("min score")
    left.legend(loc="lower left", fontsize=8)
    right.plot([p.recall for p in pts], [p.precision for p in pts], color="#4C72B0", marker=".", ms=3)
    right.scatter([best.recall], [best.precision], color="#55A868", zorder=3, label=f"min score {best.threshold:.2f}")
    right.set_xlim(0, 1.02)
    right.set_ylim(0, 1.02)
    right.set_xlabel("recall")
    right.set_ylabel("precision")
    right.legend(loc="lower left", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(report: ScoreReport, out_dir: Path, *, name: str, meta: dict[str, Any],
                 latencies: list[float] | None = None, errors: ErrorAnalysis | None = None) -> dict[str, Path]:
    """Write ``NAME.json``, ``NAME.md`` and ``NAME.png`` into ``out_dir``; with ``errors``, also its counts and
    confusion matrix in the JSON (``errors``) and the Markdown, and ``NAME.confusion.png``; when the predictions
    had scores, ``NAME.threshold.png`` (precision and recall over the score threshold)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, **report.to_dict()}
    if latencies is not None:
        data["latency_seconds"] = percentiles(latencies)
    if errors is not None:
        data["errors"] = errors.to_dict()
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md", "png": out_dir / f"{name}.png"}
    paths["json"].write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    lines = [f"# Evaluation: {name}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["", report.to_markdown(), ""]
    if errors is not None:
        lines += ["## Errors", "", errors.to_markdown(), ""]
    paths["md"].write_text("\n".join(lines), encoding="utf-8")
    plot_f1(report, paths["png"], f"{name}: per-type F1")
    if errors is not None:
        paths["confusion"] = plot_confusion(errors, out_dir / f"{name}.confusion.png", f"{name}: confusion of types")
    if report.curve:
        paths["threshold"] = plot_threshold_curve(report, out_dir / f"{name}.threshold.png",
                                                  f"{name}: precision and recall over the entity score threshold")
    return paths

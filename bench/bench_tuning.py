"""Real tuning runs on this machine, scored like the service scores them (report: bench/reports/tuning.md).

Stages (each trains with ``nerve.tuning.run.tune``, exports with ``nerve.tuning.export.export_checkpoint``, then scores the
exported checkpoint through ``nerve.extraction.run_with_extractor``, i.e. the engine ``nerve serve`` would use):

* ``minilm``: MiniLM-L6 token classification on CoNLL-2003 train, scored on the full testb; the span scores
  are cross-checked against seqeval on the CoNLL tokens.
* ``smollm2``: SmolLM2-135M-Instruct LoRA on a seeded subset of CoNLL-2003 train, scored on testb under
  constrained decoding (vLLM, xgrammar).
* ``qwen``: Qwen2.5-Coder-0.5B-Instruct LoRA on a seeded subset of CLUENER train, scored on CLUENER dev, next
  to the same base model zero-shot on the same sentences through the same engine.
* ``speed``: the compact task format against the first one, in one run: the same model, LoRA settings,
  training settings and examples, trained once per arm and round in its own ``nerve tune`` process (so that
  each arm's peak RSS is its own), the arms interleaved round by round: ``nerve-ner-v1``, ``nerve-ner-v2``,
  and ``nerve-ner-v2`` with gradient checkpointing (memory against time).
* ``report``: bench/reports/tuning.md with a row per run (data, steps, wall time, tokens/s, peak memory,
  F1 per type, parse rate), loss curves and per-type F1 plots.

Run: ``python bench/bench_tuning.py --stages minilm,smollm2,report [--smollm2-examples 2000] ...``;
``python bench/bench_tuning.py --stages speed,report [--speed-examples 48 --speed-rounds 2]``.
Runs go to ``runs/bench-*`` (not committed); results to bench/results/tuning-*.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.record import write_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REPORTS = ROOT / "bench" / "reports"
RUNS = ROOT / "runs"
EXAMPLES = ROOT / "examples" / "tune"


def _datasets() -> Path:
    from nerve.paths import datasets_dir

    d = datasets_dir()
    if d is None:
        raise SystemExit("the shared datasets are not available (set NERVE_DATASETS)")
    return d


def train_and_export(name: str, config: str, overrides: list[str], reuse: bool = False) -> tuple[Path, Path, dict, float]:
    from nerve.tuning.export import export_checkpoint
    from nerve.tuning.run import tune

    run_dir = RUNS / f"bench-{name}"
    record = run_dir / "nerve_run.json"
    if reuse and record.is_file() and json.loads(record.read_text()).get("status") == "done":
        wall = json.loads(record.read_text())["resources"]["train_seconds"]  # finished earlier: export and score it
    else:
        t0 = time.perf_counter()
        tune(EXAMPLES / config, [*overrides, "--train.output_dir", str(run_dir)])
        wall = time.perf_counter() - t0
    out = export_checkpoint(run_dir, RUNS / f"bench-{name}-export")
    return run_dir, out, json.loads((run_dir / "nerve_run.json").read_text()), wall


def score_checkpoint(model_dir: Path, examples, card=None, name: str = "", meta: dict | None = None):
    """Scores of a checkpoint on examples through the serving engine; writes a report under reports/tuning/."""
    from nerve.engines.vllm import EngineConfig
    from nerve.extraction import Limits, evaluate, run_with_extractor
    from nerve.ner.card import TaskCard
    from nerve.reports import write_report

    card = card or TaskCard.load(model_dir)

    async def body(ex):
        return await evaluate(ex, examples)

    t0 = time.perf_counter()
    res = run_with_extractor(body, EngineConfig(model=str(model_dir)), card, limits=Limits(max_text_chars=1 << 20))
    wall = time.perf_counter() - t0
    write_report(res.report, REPORTS / "tuning", name=name,
                 meta={"model": model_dir.name, "examples": len(examples), "wall_seconds": round(wall), **(meta or {})},
                 latencies=res.latencies)
    print(f"[{name}] micro F1 {res.report.micro.f1:.4f}, parse rate {res.report.parse_rate:.4f} ({wall:.0f} s)",
          flush=True)
    return res, wall


def seqeval_f1(examples, predictions) -> dict:
    """seqeval's micro F1 over the CoNLL tokens, for predictions that fall on token boundaries."""
    from seqeval.metrics import f1_score

    from nerve.ner.readers.conll import entities_to_tags, token_offsets

    y_true, y_pred, misaligned = [], [], 0
    for ex, pred in zip(examples, predictions, strict=True):
        offsets = token_offsets(ex.text.split(" "))
        starts, ends = {s for s, _ in offsets}, {e for _, e in offsets}
        aligned = [e for e in pred if e.start in starts and e.end in ends]
        misaligned += len(pred) - len(aligned)
        y_true.append(entities_to_tags(offsets, ex.entities, "iob2"))
        y_pred.append(entities_to_tags(offsets, aligned, "iob2"))
    return {"micro_f1": f1_score(y_true, y_pred, mode=None), "misaligned_predictions": misaligned}


def summary(run: dict, wall: float, res, eval_wall: float, data: str, eval_data: str) -> dict:
    rep = res.report
    return {"data": data, "eval_data": eval_data, "method": run["method"], "base_model": run["base_model"],
            "steps": run["global_step"], "train_wall_seconds": round(wall), "eval_wall_seconds": round(eval_wall),
            "resources": run.get("resources", {}), "max_length": run.get("max_length"),
            "dev_during_training": run.get("metrics", {}).get("dev", {}),
            "micro_f1": rep.micro.f1, "macro_f1": rep.macro.f1, "parse_rate": rep.parse_rate,
            "exact_match": rep.exact_match, "hallucination_rate": rep.hallucination_rate,
            "per_type_f1": {k: v.f1 for k, v in rep.labels.items()}}


def save(name: str, data: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_results(RESULTS / f"tuning-{name}.json", data)


def stage_minilm(args) -> None:
    from nerve.ner.readers import read_dataset

    d = _datasets()
    run_dir, out, run, wall = train_and_export("minilm", "minilm_conll_tokencls.yaml",
                                               ["--train.num_train_epochs", str(args.minilm_epochs),
                                                "--train.learning_rate", str(args.minilm_lr),
                                                "--train.progress", "false"], args.reuse)
    testb = read_dataset(d / "conll2003" / "eng.testb")
    res, ew = score_checkpoint(out, testb, name="minilm-conll-testb", meta={"data": "eng.testb"})
    data = summary(run, wall, res, ew, f"CoNLL-2003 train ({args.minilm_epochs:g} epochs, lr {args.minilm_lr:g})",
                   "CoNLL-2003 testb (3453)")
    data["seqeval"] = seqeval_f1(testb, [r.entities for r in res.predictions])
    data["run_dir"] = str(run_dir.relative_to(ROOT))
    save("minilm", data)


def stage_causal(args, name: str, config: str, train_n: int, steps: int, eval_path: Path, eval_n: int | None,
                 data_name: str, eval_name: str, zero_shot_model: str | None = None) -> None:
    from nerve.ner.readers import read_dataset

    overrides = ["--data.max_train_examples", str(train_n), "--train.max_steps", str(steps),
                 "--train.eval_steps", str(steps), "--train.save_steps", str(steps),
                 "--eval.max_examples", str(args.dev_eval), "--data.max_dev_examples", str(args.dev_eval),
                 "--train.progress", "false"]
    run_dir, out, run, wall = train_and_export(name, config, overrides, args.reuse)
    examples = read_dataset(eval_path)
    examples = examples[:eval_n] if eval_n else examples
    res, ew = score_checkpoint(out, examples, name=f"{name}-{eval_path.stem}", meta={"data": eval_name})
    data = summary(run, wall, res, ew, f"{data_name}: {train_n} examples, {steps} steps", eval_name)
    data["run_dir"] = str(run_dir.relative_to(ROOT))
    if zero_shot_model:
        from nerve.models import resolve_model
        from nerve.ner.card import TaskCard

        base = resolve_model(zero_shot_model)
        card = TaskCard.load(out)  # the tuned model's labels and bounds; the base model's own template pin
        from dataclasses import replace

        card = replace(card, chat_template_sha256=TaskCard.load(base).chat_template_sha256)
        zres, zw = score_checkpoint(base, examples, card=card, name=f"{name}-zeroshot-{eval_path.stem}",
                                    meta={"data": eval_name, "decoding": "zero-shot, same engine and schema"})
        data["zero_shot"] = {"micro_f1": zres.report.micro.f1, "macro_f1": zres.report.macro.f1,
                             "parse_rate": zres.report.parse_rate,
                             "per_type_f1": {k: v.f1 for k, v in zres.report.labels.items()}}
    save(name, data)


SPEED_ARMS = {
    "v1": ["--data.template", "nerve-ner-v1", "--data.task", "cluener"],
    "v2": ["--data.template", "nerve-ner-v2"],
    "v2 + checkpointing": ["--data.template", "nerve-ner-v2", "--train.gradient_checkpointing", "true"],
}
"""The arms of the speed stage. v1 is the first format as it was tuned: CLUENER's card, whose labels carry the
descriptions v1 prompts list; v2 names the labels the data has (no descriptions, as the tuned default is
trained); the last arm adds gradient checkpointing."""


def speed_config(examples: int) -> dict:
    """The settings every arm of the speed stage shares: the tuned default's LoRA and packing settings, one epoch
    over a seeded subset of CLUENER train, no label sampling (it changes prompt lengths), no engine evaluation.
    The card (labels, and with them any descriptions) is each arm's: see :data:`SPEED_ARMS`."""
    d = _datasets()
    return {"model": {"name_or_path": "qwen2.5-coder-0.5b-instruct"},
            "data": {"train_file": str(d / "cluener" / "train.jsonl"), "dev_file": str(d / "cluener" / "dev.jsonl"),
                     "max_train_examples": examples, "max_dev_examples": 8, "seed": 0},
            "method": {"name": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05,
                       "target_modules": ["all-linear"]},
            "train": {"num_train_epochs": 1, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                      "learning_rate": 1.5e-4, "warmup_steps": 0, "packing": True, "pack_length": 512,
                      "logging_steps": 1, "eval_steps": 100000, "save_steps": 100000, "report_to": [],
                      "progress": False, "seed": 0},
            "eval": {"with_engine": False}}


def stage_speed(args) -> None:
    import yaml

    cfg = RUNS / "bench-speed" / "config.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(speed_config(args.speed_examples), sort_keys=False))
    rounds: list[dict] = []
    for r in range(args.speed_rounds):
        for arm, overrides in SPEED_ARMS.items():
            out = RUNS / "bench-speed" / f"{arm.replace(' + ', '-')}-{r}"
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "nerve.cli", "tune", str(cfg), *overrides,
                            "--train.output_dir", str(out)], check=True, cwd=ROOT)
            run = json.loads((out / "nerve_run.json").read_text())
            res = run["resources"]
            rounds.append({"round": r, "arm": arm, "process_seconds": round(time.perf_counter() - t0, 1),
                           "steps": run["global_step"], **res,
                           "examples_per_second": round(args.speed_examples / res["train_seconds"], 4)})
            print(f"[speed] round {r} {arm}: {res['train_seconds']:.0f} s, {res['train_tokens']} tokens, "
                  f"peak RSS {res['peak_rss_gib']} GiB", flush=True)
    arms = {}
    for arm in SPEED_ARMS:
        rows = [x for x in rounds if x["arm"] == arm]
        arms[arm] = {"examples_per_second": statistics.median(x["examples_per_second"] for x in rows),
                     "tokens_per_example": rows[0]["train_tokens"] / args.speed_examples,
                     "train_seconds": statistics.median(x["train_seconds"] for x in rows),
                     "steps": rows[0]["steps"], "peak_rss_gib": max(x["peak_rss_gib"] for x in rows)}
    base = arms["v1"]["examples_per_second"]
    for a in arms.values():
        a["speed_vs_v1"] = round(a["examples_per_second"] / base, 3)
    save("speed", {"examples": args.speed_examples, "data": "CLUENER train (seeded subset, one epoch)",
                   "config": speed_config(args.speed_examples), "arms_overrides": SPEED_ARMS, "rounds": rounds,
                   "arms": arms})


def speed_section() -> list[str]:
    p = RESULTS / "tuning-speed.json"
    if not p.is_file():
        return []
    s = json.loads(p.read_text())
    m = s["machine"]["cpu"]
    n_rounds = len({x["round"] for x in s["rounds"]})
    lines = ["## The compact format against the first one (one run)", "",
             f"Qwen2.5-Coder-0.5B-Instruct, LoRA r {s['config']['method']['lora_r']} on all linear layers, packing "
             f"to {s['config']['train']['pack_length']} tokens, batch {s['config']['train']['per_device_train_batch_size']}, "
             f"the same {s['examples']} CLUENER train examples for every arm, one epoch; each arm trained in its own "
             f"process, the arms interleaved over {n_rounds} rounds (medians). CPU: {m['model']}, {m['cores']} cores, "
             f"flags {', '.join(m['flags'])}; dtype {', '.join(s['machine']['dtypes'])} (`auto`).",
             "",
             "| arm | tokens per example | steps | train seconds | examples/s | vs v1 | peak RSS |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for arm, a in s["arms"].items():
        lines.append(f"| {arm} | {a['tokens_per_example']:.0f} | {a['steps']} | {a['train_seconds']:.0f} | "
                     f"{a['examples_per_second']:.3f} | {a['speed_vs_v1']:.2f}x | {a['peak_rss_gib']} GiB |")
    lines += ["", "Tokens per example are the training tokens the trainer saw (prompt and answer) over the examples;"
              " peak RSS is the training process's, model loading included. Results: "
              "`bench/results/tuning-speed.json`.", ""]
    return lines


def _loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def report() -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {}
    speed = speed_section()
    for name in ("minilm", "smollm2", "qwen"):
        p = RESULTS / f"tuning-{name}.json"
        if p.is_file():
            runs[name] = json.loads(p.read_text())
    if not runs:
        raise SystemExit("no tuning results yet (run a training stage first)")
    REPORTS.mkdir(parents=True, exist_ok=True)
    lines = ["# Tuning: real runs on this machine", "",
             "Each model was trained with `nerve tune` (the configs in `examples/tune/`; subsets, steps and learning"
             " rates as in the training data column), exported "
             "with `nerve export` (merged; logits verified) and scored by the engine `nerve serve` uses, with the "
             "shared strict span scorer. Generated by `bench/bench_tuning.py`.", "",
             "| run | method | training data | scored on | steps | train wall | tokens/s | peak RSS | micro F1 | "
             "macro F1 | parse rate |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        res = r.get("resources", {})
        lines.append(f"| {name} | {r['method']} | {r['data']} | {r['eval_data']} | {r['steps']} | "
                     f"{r['train_wall_seconds'] / 60:.1f} min | {res.get('tokens_per_second') or '-'} | "
                     f"{res.get('peak_rss_gib', '-')} GiB | {r['micro_f1']:.4f} | {r['macro_f1']:.4f} | "
                     f"{r['parse_rate']:.4f} |")
    lines += ["", *speed]
    for name, r in runs.items():
        lines += [f"## {name}", "", "| type | F1 |" + (" zero-shot F1 |" if "zero_shot" in r else ""),
                  "|---|---:|" + ("---:|" if "zero_shot" in r else "")]
        for label, f1 in r["per_type_f1"].items():
            z = f" {r['zero_shot']['per_type_f1'].get(label, 0.0):.4f} |" if "zero_shot" in r else ""
            lines.append(f"| {label} | {f1:.4f} |{z}")
        lines.append("")
        if "seqeval" in r:
            s = r["seqeval"]
            lines += [f"seqeval (CoNLL tokens, IOB2, default mode) micro F1: **{s['micro_f1']:.4f}** against nerve's "
                      f"{r['micro_f1']:.4f} ({s['misaligned_predictions']} predictions off token boundaries).", ""]
        if "zero_shot" in r:
            z = r["zero_shot"]
            lines += [f"The same base model zero-shot on the same sentences, same engine and schema: micro F1 "
                      f"{z['micro_f1']:.4f} (parse rate {z['parse_rate']:.4f}); tuned: {r['micro_f1']:.4f}.", ""]
        if r.get("dev_during_training", {}).get("eval_failed"):
            lines += ["The in-training dev evaluation failed in this run (it records micro F1 -1, so it never selects a"
                      " checkpoint, and the trainer logs the cause at ERROR level); the scores above come from the exported"
                      " checkpoint, evaluated after training.", ""]
        elif r.get("dev_during_training"):
            lines += ["Dev metrics of the kept checkpoint during training: "
                      + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                  for k, v in r["dev_during_training"].items()), ""]
        lines += [f"Per-example reports: `bench/reports/tuning/` ({name}-*.md, .json, .png).", ""]

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, r in runs.items():
        curve = _loss_curve(ROOT / r.get("run_dir", ""))
        if curve:
            axes[0].plot([s for s, _ in curve], [v for _, v in curve], label=name)
    axes[0].set(title="training loss", xlabel="step", ylabel="loss", yscale="log")
    axes[0].legend()
    width = 0.8 / max(1, len(runs))
    labels = sorted({lab for r in runs.values() for lab in r["per_type_f1"]})
    for i, (name, r) in enumerate(runs.items()):
        xs = [labels.index(lab) + i * width for lab in r["per_type_f1"]]
        axes[1].bar(xs, list(r["per_type_f1"].values()), width, label=name)
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(labels))], labels, rotation=45, ha="right")
    axes[1].set(title="entity F1 per type", ylim=(0, 1))
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(REPORTS / "tuning.png", dpi=110)
    plt.close(fig)
    lines += ["![loss curves and per-type F1](tuning.png)", ""]
    out = REPORTS / "tuning.md"
    out.write_text("\n".join(lines))
    print(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default="minilm,smollm2,qwen,report")
    ap.add_argument("--minilm-epochs", type=float, default=3)
    ap.add_argument("--minilm-lr", type=float, default=1e-4)
    ap.add_argument("--smollm2-examples", type=int, default=2000)
    ap.add_argument("--smollm2-steps", type=int, default=250)
    ap.add_argument("--qwen-examples", type=int, default=600)
    ap.add_argument("--qwen-steps", type=int, default=75)
    ap.add_argument("--eval-limit", type=int, default=None, help="score on the first N evaluation sentences")
    ap.add_argument("--dev-eval", type=int, default=100, help="dev sentences scored by the engine during training")
    ap.add_argument("--speed-examples", type=int, default=48, help="training examples of each speed arm")
    ap.add_argument("--speed-rounds", type=int, default=2, help="interleaved rounds of the speed arms")
    ap.add_argument("--reuse", action="store_true", help="export and score finished runs instead of training again")
    args = ap.parse_args()
    d = _datasets()
    for stage in args.stages.split(","):
        if stage == "minilm":
            stage_minilm(args)
        elif stage == "smollm2":
            stage_causal(args, "smollm2", "smollm2_conll_lora.yaml", args.smollm2_examples, args.smollm2_steps,
                         d / "conll2003" / "eng.testb", args.eval_limit, "CoNLL-2003 train",
                         f"CoNLL-2003 testb ({args.eval_limit or 3453})")
        elif stage == "qwen":
            stage_causal(args, "qwen", "qwen_cluener_lora.yaml", args.qwen_examples, args.qwen_steps,
                         d / "cluener" / "dev.jsonl", args.eval_limit, "CLUENER train",
                         f"CLUENER dev ({args.eval_limit or 1343})", zero_shot_model="qwen2.5-coder-0.5b-instruct")
        elif stage == "speed":
            stage_speed(args)
        elif stage == "report":
            report()
        else:
            raise SystemExit(f"unknown stage {stage}")


if __name__ == "__main__":
    main()

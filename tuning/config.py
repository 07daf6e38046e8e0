"""Typed configuration of a tuning run: one dataclass per concern, loadable from YAML, overridable from the CLI.

A config file has one mapping per section (``model``, ``data``, ``method``, ``train``, ``eval``)::

    model:
      name_or_path: smollm2-135m-instruct
    data:
      train_file: ${NERVE_DATASETS}/conll2003/eng.train
      task: conll2003
    method:
      name: lora
    train:
      max_steps: 100

and every field can be overridden with ``--section.field value`` (or ``--section.field=value``)::

    load_config("examples/tune/tiny_test.yaml", ["--train.max_steps", "3", "--method.lora_r=4"])

Values are parsed as YAML scalars or lists and checked against the field's type; unknown sections or fields
are errors that name the closest valid one. ``${VAR}`` in string values expands from the environment;
``${NERVE_DATASETS}`` falls back to the shared datasets folder (:func:`nerve.paths.datasets_dir`).
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml

REPORTERS: tuple[str, ...] = (
    "tensorboard", "none", "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte",
    "kubeflow", "mlflow", "neptune", "swanlab", "trackio", "wandb")
"""Values of ``train.report_to``: nerve's TensorBoard logger, none, and the HF Trainer's integrations."""


class ConfigError(ValueError):
    """A config file or override is invalid."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with a help string (``default`` may be a list: it is copied per instance)."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelArgs:
    """Which base model to tune and how to load it."""

    name_or_path: str = _f(
        "qwen2.5-coder-0.5b-instruct",
        "Base checkpoint: a nerve model name (`nerve models list`) or a Hugging Face folder.",
    )
    dtype: str = _f(
        "auto",
        "Compute dtype: auto (bfloat16 where the hardware computes it natively: GPUs with bf16, CPUs with "
        "AVX-512 BF16 or AMX; float32 elsewhere), float32, bfloat16 or float16. Under auto, trainable weights stay "
        "float32 with bf16 mixed precision and a frozen LoRA base is loaded in bf16.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    attn_implementation: str = _f(
        "sdpa", "Attention kernel: sdpa, eager or flash_attention_2 (packing works with all three).",
        choices=("sdpa", "eager", "flash_attention_2"),
    )
    export_dtype: str = _f(
        "auto", "Dtype of exported checkpoints: auto (the base model's dtype), float32, bfloat16 or float16.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )


DATA_FORMATS = ("auto", "cluener", "conll", "bmes", "jsonl", "prodigy")
"""Dataset formats a tuning config may name (``auto`` detects; see :func:`ner.readers.read_dataset`)."""


@dataclass
class DataSource:
    """One dataset of a training mixture (``data.sources``), with its own label vocabulary."""

    train_file: str = _f("", "Training data of this source (any format `data.format` names).")
    dev_file: str | None = _f(None, "Dev data of this source (its dev loss is computed with its own label list).")
    format: str = _f("auto", "Dataset format of this source's files.", choices=DATA_FORMATS)
    rename: list[str] = _f([], "Label renames OLD=new (e.g. PER=person): how this source's labels are named in "
                               "prompts and answers.")
    max_train_examples: int | None = _f(None, "Use only this many training examples of this source (random subset).")
    max_dev_examples: int | None = _f(None, "Use only this many dev examples of this source (random subset).")


@dataclass
class DataArgs:
    """Where the examples come from, which labels they use, and how long a training sequence may be."""

    train_file: str = _f("", "Training data (CLUENER JSON, CoNLL columns, character BMES or nerve JSONL).")
    dev_file: str | None = _f(None, "Dev data for evaluation; if empty, `dev_ratio` of the training data is held out.")
    format: str = _f("auto", "Dataset format: auto, cluener, conll, bmes, jsonl or prodigy.", choices=DATA_FORMATS)
    conll_scheme: str = _f("auto", "Tagging scheme of CoNLL files: auto, iob1, iob2 or bioes.")
    task: str | None = _f(
        None,
        "Label set: a preset (cluener, conll2003), or a task card file/folder (nerve_task.json). Empty: use "
        "`labels`, else infer the labels from the training data.",
    )
    labels: list[str] | None = _f(None, "Explicit label names (used when `task` is empty).")
    dev_ratio: float = _f(0.0, "Fraction of the training data held out as dev set when `dev_file` is empty.")
    max_train_examples: int | None = _f(None, "Use only this many training examples (a random subset; for trials).")
    max_dev_examples: int | None = _f(None, "Use only this many dev examples for the dev loss (random subset).")
    max_length: int | None = _f(
        None, "Longest training sequence in tokens (prompt + completion). Empty: the `length_percentile` of the "
        "training data, rounded up to a multiple of 16.",
    )
    length_percentile: float = _f(99.0, "Percentile of example lengths that sets `max_length` when it is empty.")
    sources: list[DataSource] = _f(
        [], "A mixture of datasets instead of train_file/dev_file: a list of mappings with the fields of "
        "DataSource (train_file, dev_file, format, rename, max_train_examples, max_dev_examples). The card's "
        "labels are the union of the sources' (renamed) labels; each example is rendered with its own source's.",
    )
    template: str | None = _f(None, "Prompt template of the tuned model: nerve-ner-v2 (compact; the default for "
                                    "tuning) or nerve-ner-v1. Empty: nerve-ner-v2.")
    label_sampling: bool = _f(
        False, "Render each training example with a sampled label list (shuffled; present labels dropped with "
        "their gold entities, absent ones kept or left out) so that the model follows the list it is given: the "
        "card then declares open labels.",
    )
    label_drop_present: float = _f(0.15, "Label sampling: chance that a label present in the example is left out "
                                         "of its list (its entities leave the answer).")
    label_keep_absent: float = _f(0.6, "Label sampling: chance that a label absent from the example is listed.")
    label_full_list: float = _f(0.25, "Label sampling: chance that an example gets its source's full label list "
                                      "in the card's order.")
    overlength: str = _f(
        "drop", "What to do with examples longer than `max_length`: drop (default) or truncate (keep the first "
        "`max_length` tokens; a truncated answer loses its end token). Either way they are counted and reported.",
        choices=("drop", "truncate"),
    )
    unknown_labels: str = _f(
        "error", "Entities whose label is not in the task's label set: error, or drop them (counted).",
        choices=("error", "drop"),
    )
    allow_no_entities: bool = _f(
        False, "Accept a train or dev file in which no example has an entity (an error otherwise: such a file is "
        "most often read in the wrong format, and a model trained on it learns to find nothing).",
    )
    seed: int = _f(13, "Seed of the dev split and of the subsets.")


@dataclass
class MethodArgs:
    """The tuning method and its knobs (LoRA rank, frozen layers, quantization, token-classification head)."""

    name: str = _f("lora", "Tuning method: full, lora, freeze, qlora or token-cls (`tuning.methods.METHODS`).")
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.")
    adapter_init: str | None = _f(
        None, "lora: continue training a saved LoRA adapter instead of starting new ones: a PEFT adapter folder "
        "(adapter_config.json + weights) or the name of a tuned nerve model (`nerve models list`). The adapter's "
        "own rank, alpha and target modules are used; lora_r, lora_alpha and target_modules must match them.",
    )
    target_modules: list[str] = _f(
        ["all-linear"], "Modules that get LoRA adapters: all-linear (every linear layer but the output head) or "
        "names such as q_proj,k_proj,v_proj,o_proj.",
    )
    freeze_trainable_layers: int = _f(
        2, "freeze method: train only the last N transformer layers (negative: the first N); the rest, "
        "embeddings and output head included, stays frozen.",
    )
    freeze_extra_modules: list[str] = _f(
        [], "freeze method: more parameter-name fragments to keep trainable (e.g. norm, lm_head).")
    qlora_bits: int = _f(4, "qlora: bits of the quantized frozen base (4 or 8; needs CUDA and bitsandbytes).",
                         choices=(4, 8))
    crf: bool = _f(False, "token-cls: decode with a linear-chain CRF on top of the encoder (else softmax).")
    token_cls_lora: bool = _f(False, "token-cls: train LoRA adapters on the encoder instead of all its weights.")


@dataclass
class TrainArgs:

    """The optimisation loop: steps, batch, schedule, checkpoints, logging and precision."""

    output_dir: str = _f("runs/nerve-tune", "Run directory: checkpoints, logs, the final model and reports.")
    resume: str = _f(
        "auto", "auto: continue from the last checkpoint in `output_dir` if there is one; never: start over "
        "(refuses a non-empty run directory); or the path of a checkpoint to resume from.",
    )
    seed: int = _f(42, "Seed of model initialisation (adapters, heads) and data order.")
    learning_rate: float = _f(2e-4, "Peak learning rate (LoRA ~2e-4, full ~2e-5, token-cls ~5e-5; LoRA "
                                    "token-cls ~5e-4).")
    num_train_epochs: float = _f(1.0, "Epochs over the training data (ignored when `max_steps` > 0).")
    max_steps: int = _f(-1, "Optimizer steps to run; > 0 overrides `num_train_epochs`.")
    per_device_train_batch_size: int = _f(8, "Examples (or packed rows) per device per forward pass.")
    per_device_eval_batch_size: int = _f(8, "Examples per device per forward pass for the dev loss.")
    gradient_accumulation_steps: int = _f(1, "Forward passes per optimizer step.")
    warmup_steps: float = _f(0.03, "Warmup: steps (>= 1) or a fraction of the total steps (< 1).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    lr_scheduler_type: str = _f("cosine", "Learning-rate schedule (linear, cosine, constant, ...).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm.")
    logging_steps: int = _f(10, "Log loss, learning rate and throughput every N steps.")
    eval_steps: int = _f(0, "Evaluate on the dev set every N steps (0: only at the end).")
    save_steps: int = _f(200, "Save a checkpoint every N steps (a multiple of `eval_steps` when both are set).")
    save_total_limit: int | None = _f(3, "Checkpoints to keep (the best one is always kept).")
    bf16: bool | None = _f(None, "bf16 mixed precision: true, false, or empty for auto (on when the compute "
                                 "dtype is bfloat16, see model.dtype).")
    packing: bool = _f(False, "Pack several examples into one row, with attention boundaries between them.")
    pack_length: int | None = _f(None, "Tokens per packed row (empty: data.max_length). Longer rows hold more "
                                       "short examples per forward pass.")
    selective_logits: bool = _f(True, "Compute the output layer only at positions that have a label "
                                      "(the completion), not over the prompt.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass (less memory, slower).")
    report_to: list[str] = _f(["tensorboard"], "Loggers: tensorboard (nerve's, logs in <output_dir>/tb), none, or any "
                                               "integration of the HF Trainer (wandb, mlflow, comet_ml, clearml, "
                                               "dvclive, trackio, ...), configured by its own environment variables "
                                               "(e.g. WANDB_MODE=offline).")
    threads: int | None = _f(None, "torch CPU threads (empty: torch's default).")
    dataloader_num_workers: int = _f(0, "DataLoader worker processes.")
    deepspeed: str | None = _f(None, "DeepSpeed JSON config (e.g. examples/tune/ds_zero2.json); GPU only.")
    progress: bool = _f(True, "Show a rich progress bar (loss, tokens/s, ETA) on the main process.")

    def __post_init__(self) -> None:
        unknown = [r for r in self.report_to if r not in REPORTERS]
        if unknown:
            raise ConfigError(f"train.report_to: unknown logger {unknown[0]!r}{_suggest(unknown[0], REPORTERS)}")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ConfigError("train.report_to: 'none' cannot be combined with other loggers")


@dataclass
class EvalArgs:
    """Task-level evaluation on the dev set (strict span F1), which picks the best checkpoint."""

    with_engine: bool = _f(
        True, "Score the dev set with the serving engine (vLLM, constrained greedy decoding) on a merged "
        "temporary export at every evaluation; off, or when the engine is unavailable, evaluation is dev loss "
        "only. token-cls runs are always scored in-process.",
    )
    max_examples: int | None = _f(200, "Dev examples scored per evaluation (empty: all).")
    metric: str = _f("micro_f1", "Metric that picks the best checkpoint (micro_f1, macro_f1, exact_match).",
                     choices=("micro_f1", "macro_f1", "exact_match"))


SECTIONS: dict[str, type] = {
    "model": ModelArgs,
    "data": DataArgs,
    "method": MethodArgs,
    "train": TrainArgs,
    "eval": EvalArgs,
}


@dataclass
class TuneConfig:
    """A whole tuning run."""

    model: ModelArgs = field(default_factory=ModelArgs)
    data: DataArgs = field(default_factory=DataArgs)
    method: MethodArgs = field(default_factory=MethodArgs)
    train: TrainArgs = field(default_factory=TrainArgs)
    eval: EvalArgs = field(default_factory=EvalArgs)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {name: asdict(getattr(self, name)) for name in SECTIONS}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml(), encoding="utf-8")
        return path

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, *, source: str = "config") -> TuneConfig:
        d = d or {}
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
        unknown = [k for k in d if k not in SECTIONS]
        if unknown:
            raise ConfigError(f"{source}: unknown section {unknown[0]!r}{_suggest(unknown[0], SECTIONS)}")
        parts = {}
        for name, klass in SECTIONS.items():
            section = d.get(name) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"{source}: section {name!r} must be a mapping")
            parts[name] = _build(klass, section, f"{source}: {name}")
        return cls(**parts)


# --- loading -------------------------------------------------------------------------------------------


def load_config(yaml_path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> TuneConfig:
    """The config in ``yaml_path`` (or the defaults when ``None``) with ``--section.field value`` overrides."""
    data: dict[str, Any] = {}
    source = "defaults"
    if yaml_path is not None:
        source = str(yaml_path)
        try:
            data = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"{yaml_path}: no such config file") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{yaml_path}: invalid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{yaml_path}: expected a mapping of sections")
    for key, raw in parse_overrides(overrides):
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            raise ConfigError(f"override --{key}: unknown section {section!r}{_suggest(section, SECTIONS)}")
        data.setdefault(section, {})
        if data[section] is None:
            data[section] = {}
        data[section][name] = _OverrideValue(raw)
    return TuneConfig.from_dict(data, source=source)


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """``["--a.b", "1", "--c.d=x"]`` -> ``[("a.b", "1"), ("c.d", "x")]``."""
    out: list[tuple[str, str]] = []
    items = list(overrides)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or len(item) < 3:
            raise ConfigError(f"override {item!r}: expected --section.field VALUE or --section.field=VALUE")
        key = item[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(items):
                raise ConfigError(f"override --{key}: missing value")
            value = items[i + 1]
            i += 1
        if "." not in key:
            raise ConfigError(f"override --{key}: expected --section.field (sections: {', '.join(SECTIONS)})")
        out.append((key, value))
        i += 1
    return out


class _OverrideValue(str):
    """A raw command-line string, parsed according to the field's type (not as free YAML)."""


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(options)})"


def _build(klass: type, values: dict[str, Any], where: str):
    hints = typing.get_type_hints(klass)
    known = {f.name: f for f in fields(klass)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r}{_suggest(key, known)}")
        try:
            value = _coerce(value, hints[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.{key}: {exc}") from None
        choices = known[key].metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{where}.{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        kwargs[key] = value
    return klass(**kwargs)


_NONE_WORDS = {"", "null", "none", "~", "auto"}


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (bool, int, float, str, list[str], a dataclass, and ``X | None`` of these)."""
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise TypeError(f"expected a mapping with the fields of {tp.__name__}, got {value!r}")
        return _build(tp, value, tp.__name__)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS
                             and not (args == [str] and value.strip().lower() == "auto")):
            return None
        return _coerce(value, args[0])
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if isinstance(value, _OverrideValue):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else None
            value = parsed if isinstance(parsed, list) else [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {value!r}")
        return [_coerce(v, item_type) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "yes", "on", "1"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"false", "no", "off", "0"}:
            return False
        raise TypeError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, bool | int | float):
            return str(value).lower() if isinstance(value, bool) else str(value)
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported field type {tp!r}")


def expand_path(value: str | None) -> str | None:
    """``${VAR}`` and ``~`` expanded; ``${NERVE_DATASETS}`` defaults to the shared datasets folder."""
    if value is None:
        return None
    env = dict(os.environ)
    if "NERVE_DATASETS" not in env:
        from nerve.paths import datasets_dir

        found = datasets_dir()
        if found is not None:
            env["NERVE_DATASETS"] = str(found)

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise ConfigError(f"{value!r}: environment variable {name} is not set")
        return env[name]

    return os.path.expanduser(re.sub(r"\$\{(\w+)\}|\$(\w+)", sub, value))


# --- help ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldHelp:
    flag: str
    type: str
    default: Any
    help: str


def config_help() -> list[FieldHelp]:
    """Every ``--section.field`` flag with its type, default and help (for the CLI's ``--help``)."""
    out = []
    for section, klass in SECTIONS.items():
        hints = typing.get_type_hints(klass)
        for f in fields(klass):
            default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
            tp = hints[f.name]
            out.append(FieldHelp(f"--{section}.{f.name}", _type_name(tp), default, f.metadata.get("help", "")))
    return out


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _type_name(args[0]) + "?"
    if origin is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def config_help_markdown() -> str:
    """A Markdown table of every config field (docs/tuning.md embeds its output)."""
    lines = ["| flag | type | default | help |", "|---|---|---|---|"]
    for h in config_help():
        default = "" if h.default is None else h.default
        lines.append(f"| `{h.flag}` | {h.type} | `{default}` | {h.help} |")
    return "\n".join(lines) + "\n"


assert all(is_dataclass(k) for k in SECTIONS.values())

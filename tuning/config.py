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

import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nerve import settings
from nerve.settings import ConfigError, FieldHelp, setting, suggest

__all__ = ["SECTIONS", "ConfigError", "DataArgs", "DataSource", "EvalArgs", "FieldHelp", "MethodArgs", "ModelArgs",
           "TrainArgs", "TuneConfig", "config_help", "config_help_markdown", "expand_path", "load_config"]

ENV_PREFIX = "NERVE_TUNE_"
"""``NERVE_TUNE_TRAIN_MAX_STEPS`` sets ``train.max_steps``."""

REPORTERS: tuple[str, ...] = (
    "tensorboard", "none", "azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive", "flyte",
    "kubeflow", "mlflow", "neptune", "swanlab", "trackio", "wandb")
"""Values of ``train.report_to``: nerve's TensorBoard logger, none, and the HF Trainer's integrations."""


@dataclass
class ModelArgs:
    """Which base model to tune and how to load it."""

    name_or_path: str = setting(
        "qwen2.5-coder-0.5b-instruct",
        "Base checkpoint: a nerve model name (`nerve models list`) or a Hugging Face folder.",
    )
    dtype: str = setting(
        "auto",
        "Compute dtype: auto (bfloat16 where the hardware computes it natively: GPUs with bf16, CPUs with "
        "AVX-512 BF16 or AMX; float32 elsewhere), float32, bfloat16 or float16. Under auto, trainable weights stay "
        "float32 with bf16 mixed precision and a frozen LoRA base is loaded in bf16.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )
    attn_implementation: str = setting(
        "sdpa", "Attention kernel: sdpa, eager or flash_attention_2 (packing works with all three).",
        choices=("sdpa", "eager", "flash_attention_2"),
    )
    export_dtype: str = setting(
        "auto", "Dtype of exported checkpoints: auto (the base model's dtype), float32, bfloat16 or float16.",
        choices=("auto", "float32", "bfloat16", "float16"),
    )


DATA_FORMATS = ("auto", "cluener", "conll", "bmes", "jsonl", "prodigy")
"""Dataset formats a tuning config may name (``auto`` detects; see :func:`nerve.ner.readers.read_dataset`)."""


@dataclass
class DataSource:
    """One dataset of a training mixture (``data.sources``), with its own label vocabulary."""

    train_file: str = setting("", "Training data of this source (any format `data.format` names).")
    dev_file: str | None = setting(None, "Dev data of this source (its dev loss is computed with its own label list).")
    format: str = setting("auto", "Dataset format of this source's files.", choices=DATA_FORMATS)
    rename: list[str] = setting([], "Label renames OLD=new (e.g. PER=person): how this source's labels are named in "
                               "prompts and answers.")
    max_train_examples: int | None = setting(None, "Use only this many training examples of this source (random subset).")
    max_dev_examples: int | None = setting(None, "Use only this many dev examples of this source (random subset).")


@dataclass
class DataArgs:
    """Where the examples come from, which labels they use, and how long a training sequence may be."""

    train_file: str = setting("", "Training data (CLUENER JSON, CoNLL columns, character BMES or nerve JSONL).")
    dev_file: str | None = setting(None, "Dev data for evaluation; if empty, `dev_ratio` of the training data is held out.")
    format: str = setting("auto", "Dataset format: auto, cluener, conll, bmes, jsonl or prodigy.", choices=DATA_FORMATS)
    conll_scheme: str = setting("auto", "Tagging scheme of CoNLL files: auto, iob1, iob2 or bioes.")
    task: str | None = setting(
        None,
        "Label set: a preset (cluener, conll2003), or a task card file/folder (nerve_task.json). Empty: use "
        "`labels`, else infer the labels from the training data.",
    )
    labels: list[str] | None = setting(None, "Explicit label names (used when `task` is empty).")
    dev_ratio: float = setting(0.0, "Fraction of the training data held out as dev set when `dev_file` is empty.")
    max_train_examples: int | None = setting(None, "Use only this many training examples (a random subset; for trials).")
    max_dev_examples: int | None = setting(None, "Use only this many dev examples for the dev loss (random subset).")
    max_length: int | None = setting(
        None, "Longest training sequence in tokens (prompt + completion). Empty: the `length_percentile` of the "
        "training data, rounded up to a multiple of 16.",
    )
    length_percentile: float = setting(99.0, "Percentile of example lengths that sets `max_length` when it is empty.")
    sources: list[DataSource] = setting(
        [], "A mixture of datasets instead of train_file/dev_file: a list of mappings with the fields of "
        "DataSource (train_file, dev_file, format, rename, max_train_examples, max_dev_examples). The card's "
        "labels are the union of the sources' (renamed) labels; each example is rendered with its own source's.",
    )
    template: str | None = setting(None, "Prompt template of the tuned model: nerve-ner-v2 (compact; the default for "
                                    "tuning) or nerve-ner-v1. Empty: nerve-ner-v2.")
    label_sampling: bool = setting(
        False, "Render each training example with a sampled label list (shuffled; present labels dropped with "
        "their gold entities, absent ones kept or left out) so that the model follows the list it is given: the "
        "card then declares open labels.",
    )
    label_drop_present: float = setting(0.15, "Label sampling: chance that a label present in the example is left out "
                                         "of its list (its entities leave the answer).")
    label_keep_absent: float = setting(0.6, "Label sampling: chance that a label absent from the example is listed.")
    label_full_list: float = setting(0.25, "Label sampling: chance that an example gets its source's full label list "
                                      "in the card's order.")
    overlength: str = setting(
        "drop", "What to do with examples longer than `max_length`: drop (default) or truncate (keep the first "
        "`max_length` tokens; a truncated answer loses its end token). Either way they are counted and reported.",
        choices=("drop", "truncate"),
    )
    unknown_labels: str = setting(
        "error", "Entities whose label is not in the task's label set: error, or drop them (counted).",
        choices=("error", "drop"),
    )
    allow_no_entities: bool = setting(
        False, "Accept a train or dev file in which no example has an entity (an error otherwise: such a file is "
        "most often read in the wrong format, and a model trained on it learns to find nothing).",
    )
    seed: int = setting(13, "Seed of the dev split and of the subsets.")


@dataclass
class MethodArgs:
    """The tuning method and its knobs (LoRA rank, frozen layers, quantization, token-classification head)."""

    name: str = setting("lora", "Tuning method: full, lora, freeze, qlora or token-cls (`nerve.tuning.methods.METHODS`).")
    lora_r: int = setting(8, "LoRA rank.")
    lora_alpha: int = setting(16, "LoRA scaling numerator (the update is scaled by alpha / r).")
    lora_dropout: float = setting(0.05, "Dropout on the LoRA input.")
    adapter_init: str | None = setting(
        None, "lora: continue training a saved LoRA adapter instead of starting new ones: a PEFT adapter folder "
        "(adapter_config.json + weights) or the name of a tuned nerve model (`nerve models list`). The adapter's "
        "own rank, alpha and target modules are used; lora_r, lora_alpha and target_modules must match them.",
    )
    target_modules: list[str] = setting(
        ["all-linear"], "Modules that get LoRA adapters: all-linear (every linear layer but the output head) or "
        "names such as q_proj,k_proj,v_proj,o_proj.",
    )
    freeze_trainable_layers: int = setting(
        2, "freeze method: train only the last N transformer layers (negative: the first N); the rest, "
        "embeddings and output head included, stays frozen.",
    )
    freeze_extra_modules: list[str] = setting(
        [], "freeze method: more parameter-name fragments to keep trainable (e.g. norm, lm_head).")
    qlora_bits: int = setting(4, "qlora: bits of the quantized frozen base (4 or 8; needs CUDA and bitsandbytes).",
                         choices=(4, 8))
    crf: bool = setting(False, "token-cls: decode with a linear-chain CRF on top of the encoder (else softmax).")
    token_cls_lora: bool = setting(False, "token-cls: train LoRA adapters on the encoder instead of all its weights.")


@dataclass
class TrainArgs:

    """The optimisation loop: steps, batch, schedule, checkpoints, logging and precision."""

    output_dir: str = setting("runs/nerve-tune", "Run directory: checkpoints, logs, the final model and reports.")
    resume: str = setting(
        "auto", "auto: continue from the last checkpoint in `output_dir` if there is one; never: start over "
        "(refuses a non-empty run directory); or the path of a checkpoint to resume from.",
    )
    seed: int = setting(42, "Seed of model initialisation (adapters, heads) and data order.")
    learning_rate: float = setting(2e-4, "Peak learning rate (LoRA ~2e-4, full ~2e-5, token-cls ~5e-5; LoRA "
                                    "token-cls ~5e-4).")
    num_train_epochs: float = setting(1.0, "Epochs over the training data (ignored when `max_steps` > 0).")
    max_steps: int = setting(-1, "Optimizer steps to run; > 0 overrides `num_train_epochs`.")
    per_device_train_batch_size: int = setting(8, "Examples (or packed rows) per device per forward pass.")
    per_device_eval_batch_size: int = setting(8, "Examples per device per forward pass for the dev loss.")
    gradient_accumulation_steps: int = setting(1, "Forward passes per optimizer step.")
    warmup_steps: float = setting(0.03, "Warmup: steps (>= 1) or a fraction of the total steps (< 1).")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    lr_scheduler_type: str = setting("cosine", "Learning-rate schedule (linear, cosine, constant, ...).")
    max_grad_norm: float = setting(1.0, "Gradient clipping norm.")
    logging_steps: int = setting(10, "Log loss, learning rate and throughput every N steps.")
    eval_steps: int = setting(0, "Evaluate on the dev set every N steps (0: only at the end).")
    save_steps: int = setting(200, "Save a checkpoint every N steps (a multiple of `eval_steps` when both are set).")
    save_total_limit: int | None = setting(3, "Checkpoints to keep (the best one is always kept).")
    bf16: bool | None = setting(None, "bf16 mixed precision: true, false, or empty for auto (on when the compute "
                                 "dtype is bfloat16, see model.dtype).")
    packing: bool = setting(False, "Pack several examples into one row, with attention boundaries between them.")
    pack_length: int | None = setting(None, "Tokens per packed row (empty: data.max_length). Longer rows hold more "
                                       "short examples per forward pass.")
    selective_logits: bool = setting(True, "Compute the output layer only at positions that have a label "
                                      "(the completion), not over the prompt.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass (less memory, slower).")
    report_to: list[str] = setting(["tensorboard"], "Loggers: tensorboard (nerve's, logs in <output_dir>/tb), none, or any "
                                               "integration of the HF Trainer (wandb, mlflow, comet_ml, clearml, "
                                               "dvclive, trackio, ...), configured by its own environment variables "
                                               "(e.g. WANDB_MODE=offline).")
    threads: int | None = setting(None, "torch CPU threads (empty: torch's default).")
    dataloader_num_workers: int = setting(0, "DataLoader worker processes.")
    deepspeed: str | None = setting(None, "DeepSpeed JSON config (e.g. examples/tune/ds_zero2.json); GPU only.")
    progress: bool = setting(True, "Show a rich progress bar (loss, tokens/s, ETA) on the main process.")

    def __post_init__(self) -> None:
        unknown = [r for r in self.report_to if r not in REPORTERS]
        if unknown:
            raise ConfigError(f"train.report_to: unknown logger {unknown[0]!r}{suggest(unknown[0], REPORTERS)}")
        if "none" in self.report_to and len(self.report_to) > 1:
            raise ConfigError("train.report_to: 'none' cannot be combined with other loggers")


@dataclass
class EvalArgs:
    """Task-level evaluation on the dev set (strict span F1), which picks the best checkpoint."""

    with_engine: bool = setting(
        True, "Score the dev set with the serving engine (vLLM, constrained greedy decoding) on a merged "
        "temporary export at every evaluation; off, or when the engine is unavailable, evaluation is dev loss "
        "only. token-cls runs are always scored in-process.",
    )
    max_examples: int | None = setting(200, "Dev examples scored per evaluation (empty: all).")
    metric: str = setting("micro_f1", "Metric that picks the best checkpoint (micro_f1, macro_f1, exact_match).",
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
        return settings.build(cls, {} if d is None else d, source)


# --- loading -------------------------------------------------------------------------------------------


def load_config(yaml_path: str | Path | None, overrides: list[str] | tuple[str, ...] = (),
                environ: dict[str, str] | None = None) -> TuneConfig:
    """The config of a run: defaults < the YAML file at ``yaml_path`` < ``NERVE_TUNE_*`` variables of
    ``environ`` (default: the process environment) < ``--section.field value`` overrides (:mod:`nerve.settings`)."""
    return settings.load(TuneConfig, path=yaml_path, env_prefix=ENV_PREFIX, environ=environ,
                         flags=settings.parse_flags(overrides, sections=True))


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


def config_help() -> list[FieldHelp]:
    """Every ``--section.field`` flag with its type, default and help (for the CLI's ``--help-config``)."""
    return settings.field_help(TuneConfig)


def config_help_markdown() -> str:
    """A Markdown table of every config field (docs/tuning.md embeds its output)."""
    return settings.help_markdown(TuneConfig)

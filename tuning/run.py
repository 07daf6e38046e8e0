"""``tune(config_path, overrides) -> run_dir``: one tuning run from a config file.

The run directory holds everything about the run::

    config.yaml          the resolved config (overrides applied)
    nerve_task.json      the task card (labels, template, chat-template hash)
    data_report.json     entity counts, token lengths, max length, over-long / untaggable counts
    checkpoint-N/        Trainer checkpoints (adapter or weights + optimizer state; resumable)
    tb/                  TensorBoard logs;  log.jsonl: every log record
    final/               the trained model: the best checkpoint when evaluating every N steps, else the last
    nerve_run.json       the run record: method, base model, best checkpoint and metrics, final dir

``nerve.tuning.export.export_checkpoint(run_dir, out_dir)`` turns it into a servable checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nerve.hardware import describe_machine

from .collate import ListDataset, PackedCollator, PaddingCollator, check_packing, pack_features
from .config import ConfigError, TuneConfig, expand_path, load_config
from .data import (
    load_mixture,
    load_splits,
    resolve_card,
    restrict_labels,
)
from .export import RUN_FILENAME, merge_adapter
from .methods import compute_dtype, get_method, mixed_precision_bf16, trainable_summary
from .recipes import Features, recipe_for

logger = logging.getLogger("nerve.tuning")

def tune(config_path: str | Path | None, overrides: Sequence[str] = (), *, callbacks: Sequence[Any] = (),
         console=None) -> Path:
    """Run the tuning described by ``config_path`` with ``--section.field value`` overrides; returns the run dir."""
    return run_config(load_config(config_path, list(overrides)), callbacks=callbacks, console=console)


def setup_logging(console=None) -> None:
    if logger.handlers:
        return
    from rich.logging import RichHandler

    handler = RichHandler(console=console, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def resume_checkpoint(run_dir: Path, resume: str) -> str | None:
    """The checkpoint to resume from: ``auto`` (the last in ``run_dir``, if any), ``never`` or a path."""
    from transformers.trainer_utils import get_last_checkpoint

    existing = get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None
    if resume == "auto":
        return existing
    if resume == "never":
        if existing is not None:
            raise ConfigError(f"{run_dir} already has checkpoints ({Path(existing).name}); set train.resume: auto to "
                              "continue it, or choose another train.output_dir")
        return None
    path = Path(expand_path(resume) or "")
    if not path.is_dir():
        raise ConfigError(f"train.resume: checkpoint {path} not found")
    return str(path)


def _warn_config_change(run_dir: Path, cfg: TuneConfig) -> None:
    saved = run_dir / "config.yaml"
    if not saved.is_file():
        return
    import yaml

    old = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    new = cfg.to_dict()
    changed = [f"{s}.{k}: {old.get(s, {}).get(k)!r} -> {v!r}" for s, sec in new.items() for k, v in sec.items()
               if old.get(s, {}).get(k) != v]
    if changed:
        logger.warning("resuming with a changed config: %s", "; ".join(changed))


def trainer_reporters(report_to: list[str]) -> list[str] | str:
    """The HF Trainer's ``report_to`` for nerve's setting: TensorBoard is nerve's own callback (it logs tokens/s
    and the task metrics in nerve's layout), the other loggers are the Trainer's integrations, whose packages must
    be installed."""
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

    wanted = [r for r in report_to if r not in ("tensorboard", "none")]
    unknown = [r for r in wanted if r not in INTEGRATION_TO_CALLBACK]
    if unknown:
        raise ConfigError(f"train.report_to: this transformers has no {unknown[0]!r} integration")
    missing = [r for r in wanted if r not in get_available_reporting_integrations()]
    if missing:
        raise ConfigError(f"train.report_to: {missing[0]!r} needs its package installed (pip install {missing[0]})")
    return wanted or "none"


def training_arguments(cfg: TuneConfig, run_dir: Path, *, has_eval: bool, metric: str | None):
    from transformers import TrainingArguments

    t = cfg.train
    evaluate_every = has_eval and t.eval_steps > 0
    if evaluate_every and t.save_steps % t.eval_steps:
        raise ConfigError(f"train.save_steps ({t.save_steps}) must be a multiple of train.eval_steps ({t.eval_steps}) "
                          "so that the best checkpoint is saved")
    if t.max_steps <= 0 and t.num_train_epochs <= 0:
        raise ConfigError("set train.max_steps > 0 or train.num_train_epochs > 0")
    bf16 = mixed_precision_bf16(cfg)
    return TrainingArguments(
        output_dir=str(run_dir),
        seed=t.seed,
        data_seed=t.seed,
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if evaluate_every else "no",
        eval_steps=t.eval_steps if evaluate_every else None,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=evaluate_every,
        metric_for_best_model=metric if has_eval else None,
        greater_is_better=None if not has_eval else metric != "loss",
        bf16=bool(bf16),
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=t.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        report_to=trainer_reporters(t.report_to),
        disable_tqdm=True,
        dataloader_num_workers=t.dataloader_num_workers,
        deepspeed=expand_path(t.deepspeed) if t.deepspeed else None,
        prediction_loss_only=True,
        remove_unused_columns=False,
        label_names=["labels"],
    )


def run_config(cfg: TuneConfig, *, callbacks: Sequence[Any] = (), console=None) -> Path:
    """Run a tuning config (see :func:`tune`)."""
    from transformers import AutoTokenizer
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from nerve.models import resolve_model

    from .trainer import EvaluateAtEnd, JsonlLog, NerveTrainer, RichProgress, TokenCounter, seed_everything, tensorboard_callback

    setup_logging(console)
    method = get_method(cfg.method.name)
    recipe = recipe_for(method)
    method.check_available(cfg)
    method.check_config(cfg)
    recipe.check_config(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    run_dir = Path(expand_path(cfg.train.output_dir) or "runs/nerve-tune")
    resume_from = resume_checkpoint(run_dir, cfg.train.resume)
    if resume_from:
        _warn_config_change(run_dir, cfg)
        logger.info("resuming from %s", resume_from)
    run_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    main_process = int(os.environ.get("RANK", "0")) == 0

    model_path = resolve_model(cfg.model.name_or_path, merge=merge_adapter)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token

    # --- data --------------------------------------------------------------------------------------------
    mixture = load_mixture(cfg.data) if cfg.data.sources else None
    train_ex, dev_ex = (mixture.train, mixture.dev) if mixture else load_splits(cfg.data)
    card = resolve_card(cfg.data, train_ex, base_card=recipe.base_card(model_path),
                        labels=mixture.labels if mixture else None)
    train_ex, dropped = restrict_labels(train_ex, card.labels.names, cfg.data.unknown_labels, "train")
    dev_ex, dropped_dev = restrict_labels(dev_ex, card.labels.names, cfg.data.unknown_labels, "dev")
    card = recipe.card(card, cfg, tokenizer)
    feats = recipe.features(cfg, tokenizer, model_path, card, train_ex, dev_ex, mixture, dropped, dropped_dev)
    report, max_len = feats.report, feats.max_length
    if not feats.train:
        raise ConfigError("no training examples left after the length policy")
    if main_process:
        (run_dir / "data_report.json").write_text(json.dumps(
            {"train": report.to_dict(), "dev": feats.dev_report.to_dict() if feats.dev_report else None}, indent=2,
            ensure_ascii=False) + "\n", encoding="utf-8")
        if cfg.train.progress:
            report.print(console)

    # --- evaluation --------------------------------------------------------------------------------------
    evaluator = recipe.evaluator(cfg, dev_ex, tokenizer, card, feats) if dev_ex else None
    if not dev_ex:
        logger.info("no dev set (data.dev_file / data.dev_ratio): no evaluation; the final model is the last step's.")
    elif evaluator is not None:
        logger.info("evaluation: %s; best checkpoint by %s", evaluator.description, cfg.eval.metric)
    metric = cfg.eval.metric if evaluator is not None else "loss"

    # TrainingArguments before the model: under DeepSpeed ZeRO-3 this makes from_pretrained partition the weights.
    args = training_arguments(cfg, run_dir, has_eval=bool(feats.dev), metric=metric)

    # --- model -------------------------------------------------------------------------------------------
    dtype = compute_dtype(cfg)
    logger.info("compute dtype: %s; weights loaded as %s, bf16 mixed precision %s", dtype,
                str(method.train_dtype(cfg)).replace("torch.", ""), "on" if args.bf16 else "off")
    model = method.load(model_path, cfg, **feats.model_kwargs)
    logger.info("method %s: %s", method.name, trainable_summary(model))
    train_ds, eval_ds, collator = _datasets(cfg, model, feats, tokenizer.pad_token_id)

    # --- training ----------------------------------------------------------------------------------------
    counter = TokenCounter()
    progress = RichProgress(counter, console, args.world_size) if cfg.train.progress else None
    cbs: list[Any] = [EvaluateAtEnd(eval_ds is not None), JsonlLog(run_dir / "log.jsonl"), *callbacks]
    if "tensorboard" in cfg.train.report_to:
        cbs.append(tensorboard_callback(run_dir / "tb"))
    if progress is not None:
        cbs.append(progress)
    trainer = NerveTrainer(
        model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds, data_collator=collator,
        processing_class=tokenizer, callbacks=cbs, task_evaluator=evaluator, causal=recipe.causal,
        selective_logits=recipe.causal and cfg.train.selective_logits, token_counter=counter,
    )
    for cb in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(cb)

    run_record: dict[str, Any] = {
        "status": "training", "method": method.name, "kind": method.kind, "base_model": cfg.model.name_or_path,
        "base_model_path": str(model_path), "final_dir": "final", "max_length": max_len,
        **({"adapter_init": cfg.method.adapter_init} if cfg.method.adapter_init else {}),
        "card": card.to_dict(),
        "dtype": {"compute": dtype.dtype, "reason": dtype.reason, "weights": str(method.train_dtype(cfg)).replace(
            "torch.", ""), "bf16_mixed_precision": bool(args.bf16)},
        "machine": describe_machine(),
    }
    if main_process:
        cfg.save(run_dir / "config.yaml")
        card.save(run_dir)
        _write_run(run_dir, run_record)
    try:
        output = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if progress is not None:
            progress.close()
    if trainer.state.global_step < trainer.state.max_steps and trainer.control.should_training_stop:
        logger.warning("training stopped at step %d of %d", trainer.state.global_step, trainer.state.max_steps)
        run_record["status"] = "stopped"
        if main_process:
            _write_run(run_dir, {**run_record, "global_step": trainer.state.global_step})
        return run_dir

    # --- the final model ---------------------------------------------------------------------------------
    state = trainer.state
    best_metrics = _metrics_at(state.log_history, state.best_model_checkpoint)
    run_record.update({
        "status": "done", "global_step": state.global_step, "metric": metric if eval_ds is not None else None,
        "best_metric": state.best_metric, "best_checkpoint": state.best_model_checkpoint,
        "metrics": {"dev": best_metrics} if best_metrics else {},
        "resources": _resources(output.metrics.get("train_runtime"), counter.total, args.world_size),
    })
    final_dir = run_dir / "final"
    method.save_final(trainer, final_dir, max_length=max_len)
    if main_process:
        replace(card, metrics=run_record["metrics"]).save(final_dir)
        _write_run(run_dir, run_record)
        logger.info("run finished at step %d; final model in %s%s", state.global_step, final_dir,
                    f" (best {metric} {state.best_metric:.4g} at {Path(state.best_model_checkpoint).name})"
                    if state.best_model_checkpoint and state.best_metric is not None else "")
    return run_dir


def _datasets(cfg: TuneConfig, model: torch.nn.Module, feats: Features, pad: int):
    """The training and dev datasets and their collator: packed rows (checked to keep examples apart) or one
    example per row."""
    if not cfg.train.packing:
        return (ListDataset(feats.train), ListDataset(feats.dev) if feats.dev else None, PaddingCollator(pad))
    check_packing(model, feats.train, pad)
    width = cfg.train.pack_length or feats.max_length
    if width < feats.max_length:
        raise ConfigError(f"train.pack_length ({width}) must be at least data.max_length ({feats.max_length})")
    train_ds = ListDataset(pack_features(feats.train, width))
    logger.info("packing: %d examples in %d rows of <= %d tokens (%.0f%% filled)", len(feats.train), len(train_ds),
                width, 100 * sum(len(f["input_ids"]) for f in feats.train) / (len(train_ds) * width))
    return train_ds, ListDataset(pack_features(feats.dev, width)) if feats.dev else None, PackedCollator(pad)


def _resources(runtime: float | None, tokens: int, world_size: int) -> dict[str, Any]:
    """Wall time, training tokens (this process, times the world size), tokens/s and peak memory of the run."""
    import resource

    out: dict[str, Any] = {"train_seconds": round(runtime, 3) if runtime else None,
                           "train_tokens": tokens * world_size,
                           "tokens_per_second": round(tokens * world_size / runtime, 1) if runtime else None,
                           "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
    if torch.cuda.is_available():
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def _write_run(run_dir: Path, record: dict[str, Any]) -> None:
    (run_dir / RUN_FILENAME).write_text(json.dumps(record, indent=2, ensure_ascii=False, default=str) + "\n",
                                        encoding="utf-8")


def _metrics_at(history: list[dict[str, Any]], checkpoint: str | None) -> dict[str, float]:
    """Evaluation metrics logged at the best checkpoint's step (else the last evaluation's)."""
    evals = [h for h in history if any(k.startswith("eval_") for k in h)]
    if not evals:
        return {}
    step = None
    if checkpoint:
        try:
            step = int(Path(checkpoint).name.rsplit("-", 1)[1])
        except (IndexError, ValueError):
            step = None
    merged: dict[str, float] = {}
    chosen = [h for h in evals if h.get("step") == step] or [h for h in evals if h.get("step") == evals[-1]["step"]]
    for h in chosen:
        merged.update({k[5:]: v for k, v in h.items() if k.startswith("eval_") and isinstance(v, int | float)
                       and not k.endswith(("_runtime", "_per_second", "_task_seconds"))})
    merged["step"] = chosen[0].get("step")
    return merged

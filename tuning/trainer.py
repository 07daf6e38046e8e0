"""The Hugging Face ``Trainer`` with nerve's loss, task evaluation and callbacks.

* :class:`NerveTrainer` computes the causal-LM loss with :mod:`nerve.tuning.loss` (output layer only where labels
  are; token-weighted over gradient accumulation), always with ``use_cache=False`` (which packing needs), and
  adds the task metrics (span F1 from the engine, or in-process for token classification) to every evaluation
  so the best checkpoint is picked by them.
* :class:`RichProgress` shows step, loss, tokens/s and ETA; :class:`JsonlLog` appends every log record to
  ``log.jsonl``; :class:`EvaluateAtEnd` evaluates and saves at the last step.

Runs unchanged under ``accelerate launch`` / ``torchrun``: the task evaluation runs on the main process (after
a collective save that gathers sharded weights) and its metrics are broadcast to every rank.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from .evaluation import failed_metrics
from .loss import SelectiveLogits, causal_lm_loss

logger = logging.getLogger("nerve.tuning")


class TokenCounter:
    """Real (non-padding) training tokens seen by this process."""

    def __init__(self) -> None:
        self.total = 0

    def add(self, n: int) -> None:
        self.total += n


class NerveTrainer(Trainer):
    def __init__(self, *args, task_evaluator=None, causal: bool = True, selective_logits: bool = False,
                 token_counter: TokenCounter | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.task_evaluator = task_evaluator
        self.causal = causal
        self.token_counter = token_counter or TokenCounter()
        self.selective = SelectiveLogits(self.model) if (causal and selective_logits) else None

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        inputs = dict(inputs)
        n_tokens = inputs.pop("num_tokens", None)
        if model.training and n_tokens is not None:
            self.token_counter.add(int(n_tokens))
        labels = inputs.pop("labels")
        if not self.causal:
            outputs = model(**inputs, labels=labels)
            loss = outputs["loss"]
            return (loss, outputs) if return_outputs else loss
        loss, logits = causal_lm_loss(model, inputs, labels, selective=self.selective,
                                      num_items_in_batch=num_items_in_batch)
        if (self.args.average_tokens_across_devices and self.model_accepts_loss_kwargs
                and num_items_in_batch is not None):
            # The token count is summed over processes and DDP averages gradients: undo the average.
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss, "logits": logits}) if return_outputs else loss

    # --- evaluation --------------------------------------------------------------------------------------

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        if self.task_evaluator is None:
            return metrics
        started = time.perf_counter()
        extra = self._task_metrics()
        extra = {f"{metric_key_prefix}_{k}": v for k, v in extra.items()}
        extra[f"{metric_key_prefix}_task_seconds"] = round(time.perf_counter() - started, 2)
        self.log(extra)
        metrics.update(extra)
        return metrics

    def _task_metrics(self) -> dict[str, float]:
        ev = self.task_evaluator
        step = self.state.global_step
        result: dict[str, float] | None = None
        if ev.needs_saved_model:
            workdir = Path(self.args.output_dir) / f".eval-step-{step}"
            self.save_model(str(workdir / "trained"))  # collective: gathers sharded weights
            if self.is_world_process_zero():
                try:
                    result = ev(workdir / "trained", step)
                except Exception as exc:  # an evaluation must not kill hours of training
                    result = failed_metrics(exc)
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
        elif self.is_world_process_zero():
            try:
                result = ev(self.model, step)
            except Exception as exc:
                result = failed_metrics(exc)
        if self.args.world_size > 1:
            from accelerate.utils import broadcast_object_list

            result = broadcast_object_list([result], from_process=0)[0]
        return result or {}


# --- callbacks -----------------------------------------------------------------------------------------


class EvaluateAtEnd(TrainerCallback):
    """Evaluate and save at the last step too (not only every ``eval_steps``)."""

    def __init__(self, evaluate: bool) -> None:
        self.evaluate = evaluate

    def on_step_end(self, args, state, control, **kwargs):
        if state.max_steps and state.global_step >= state.max_steps:
            control.should_save = True
            if self.evaluate:
                control.should_evaluate = True
        return control


class JsonlLog(TrainerCallback):
    """Append every log record (with its step, and the process's resident memory then and at its peak so far)
    to a JSON Lines file, on the main process: the memory of a long run over its steps."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        import resource

        import psutil

        memory = {"rss_gib": round(psutil.Process().memory_info().rss / 2**30, 3),
                  "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": state.global_step, **logs, **memory}, default=float) + "\n")


class StopAtStep(TrainerCallback):
    """Stop training (after saving) at a given step: a simulated interruption for resume tests."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_save = True
            control.should_training_stop = True
        return control


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class RichProgress(TrainerCallback):
    """A rich progress bar: step / total, loss, tokens per second and ETA; evaluations as log lines."""

    def __init__(self, counter: TokenCounter, console=None, world_size: int = 1) -> None:
        self.counter = counter
        self.console = console
        self.world_size = world_size
        self.progress = None
        self.task = None

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"), TextColumn("[green]{task.fields[tps]}[/] tok/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=self.console,
        )
        self.progress.start()
        self.task = self.progress.add_task("train", total=state.max_steps, completed=state.global_step,
                                           loss="-", tps="-")
        self._t0, self._tok0 = time.perf_counter(), self.counter.total

    def on_step_end(self, args, state, control, **kwargs):
        if self.progress is None:
            return
        dt = time.perf_counter() - self._t0
        tps = (self.counter.total - self._tok0) * self.world_size / dt if dt > 0 else 0.0
        self.progress.update(self.task, completed=state.global_step, tps=f"{tps:,.0f}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.progress is None or not logs:
            return
        if "loss" in logs:
            self.progress.update(self.task, loss=f"{logs['loss']:.4f}")
        if any(k.startswith("eval_") for k in logs):
            shown = {k[5:]: _fmt(v) for k, v in logs.items() if k.startswith("eval_") and "runtime" not in k
                     and "per_second" not in k}
            self.progress.console.log(f"step {state.global_step} eval: "
                                      + ", ".join(f"{k} {v}" for k, v in shown.items()))

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def tensorboard_callback(log_dir: Path) -> TrainerCallback:
    """TensorBoard logging to ``log_dir`` (the main process writes)."""
    from transformers.integrations import TensorBoardCallback

    cb = TensorBoardCallback()
    cb.logging_dir = str(log_dir)
    return cb


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
    torch.use_deterministic_algorithms(False)

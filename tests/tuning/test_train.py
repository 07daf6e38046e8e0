"""Training runs of examples/tune/tiny_test.yaml on a tiny random Qwen2: loss, resume, methods, evaluation hook."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from nerve.tuning.config import ConfigError, load_config
from nerve.tuning.methods import METHODS, MethodUnavailableError, get_method
from nerve.tuning.run import tune
from nerve.tuning.trainer import StopAtStep
from tests.tuning.conftest import EXAMPLES, tiny_overrides

TINY = EXAMPLES / "tiny_test.yaml"


def _log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def _adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "final" / "adapter_model.safetensors"))


def test_lora_steps_reduce_loss_and_write_the_run(tiny_causal_dir, synth_files, tmp_path) -> None:
    run = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "run", "--train.report_to",
                                    "tensorboard"))
    losses = [r["loss"] for r in _log(run) if "loss" in r]
    assert len(losses) == 6 and losses[-1] < losses[0]
    evals = [r["eval_loss"] for r in _log(run) if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0]
    memory = [(r["rss_gib"], r["peak_rss_gib"]) for r in _log(run) if "loss" in r]
    assert all(0 < rss <= peak for rss, peak in memory)  # the run's memory over its steps
    assert [p for _, p in memory] == sorted(p for _, p in memory)
    record = json.loads((run / "nerve_run.json").read_text())
    assert record["status"] == "done" and record["global_step"] == 6 and record["method"] == "lora"
    assert record["metric"] == "loss" and record["best_checkpoint"].endswith("checkpoint-6")
    res = record["resources"]
    assert res["train_tokens"] > 0 and res["train_seconds"] > 0 and res["peak_rss_gib"] > 0.1
    assert res["tokens_per_second"] == pytest.approx(res["train_tokens"] / res["train_seconds"], rel=0.05)
    assert (run / "final" / "adapter_config.json").is_file() and (run / "final" / "nerve_task.json").is_file()
    assert (run / "config.yaml").is_file() and (run / "nerve_task.json").is_file()
    report = json.loads((run / "data_report.json").read_text())
    assert report["train"]["examples"] == 24 and report["train"]["max_length"] % 16 == 0
    assert list((run / "tb").rglob("events.out.tfevents*")), "no TensorBoard events"
    assert load_config(run / "config.yaml").train.output_dir == str(tmp_path / "run")


def test_resume_continues_at_the_right_step(tiny_causal_dir, synth_files, tmp_path) -> None:
    """An interrupted run resumed from its checkpoint ends where an uninterrupted run ends, with the same weights."""
    extra = ("--train.max_steps", "4", "--train.save_steps", "2", "--train.eval_steps", "2")
    stopped = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "a", *extra),
                   callbacks=[StopAtStep(2)])
    assert json.loads((stopped / "nerve_run.json").read_text())["status"] == "stopped"
    assert (stopped / "checkpoint-2").is_dir() and not (stopped / "final").exists()
    resumed = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "a", *extra))
    steps = [r["step"] for r in _log(resumed) if "loss" in r]
    assert steps == [1, 2, 3, 4]  # steps 1-2 before the interruption, 3-4 after: none repeated, none skipped
    state = json.loads((resumed / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["global_step"] == 4

    straight = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "b", *extra))
    a, b = _adapter(resumed), _adapter(straight)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="already has checkpoints"):
        tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "b", *extra, "--train.resume", "never"))


def test_packed_full_finetuning_trains(tiny_causal_dir, synth_files, tmp_path) -> None:
    run = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "full", "--method.name", "full",
                                    "--train.packing", "true", "--train.learning_rate", "1e-3",
                                    "--train.max_steps", "4", "--train.eval_steps", "0", "--train.save_steps", "4"))
    losses = [r["loss"] for r in _log(run) if "loss" in r]
    assert losses[-1] < losses[0]
    assert (run / "final" / "model.safetensors").is_file()
    record = json.loads((run / "nerve_run.json").read_text())
    assert record["metrics"]["dev"]["loss"] > 0  # evaluated once, at the end


def test_freeze_trains_only_the_last_layers(tiny_causal_dir) -> None:
    cfg = load_config(TINY, ["--method.name", "freeze", "--method.freeze_trainable_layers", "1"])
    model = get_method("freeze").load(tiny_causal_dir, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layers.1.") for n in trainable)
    cfg = load_config(TINY, ["--method.name", "freeze", "--method.freeze_trainable_layers", "5"])
    with pytest.raises(ConfigError, match="freeze_trainable_layers"):
        get_method("freeze").load(tiny_causal_dir, cfg)


def test_methods_registry() -> None:
    assert {"full", "lora", "freeze", "qlora", "token-cls"} <= set(METHODS)
    assert get_method("token-cls").kind == "token-cls" and get_method("lora").adapter
    with pytest.raises(ConfigError, match="unknown method 'prefix'"):
        get_method("prefix")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on machines without CUDA")
def test_qlora_gives_a_clear_error_here(tiny_causal_dir, synth_files, tmp_path) -> None:
    with pytest.raises(MethodUnavailableError, match="qlora needs a CUDA GPU.*use method lora"):
        tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "q", "--method.name", "qlora"))
    assert not (tmp_path / "q").exists()  # refused before anything was written


def test_engine_eval_picks_the_best_checkpoint_by_micro_f1(tiny_causal_dir, synth_files, tmp_path, monkeypatch,
                                                           caplog) -> None:
    """The eval hook exports a merged checkpoint, scores it, and the best micro-F1 checkpoint becomes final.

    ``nerve.extraction.evaluate_checkpoint`` is replaced by a stub scoring a scripted F1 per call (the real
    engine runs in test_engine_eval_end_to_end); everything around it is real.
    """
    import nerve.extraction
    from nerve.ner.scoring import Scorer
    from nerve.ner.types import Entity
    from nerve.tuning import evaluation

    seen: list[Path] = []
    scripted = iter([0.9, 0.2])  # step 2 is better than step 4

    def fake_evaluate_checkpoint(model_dir, examples, *, card=None, limit=None, progress=True, engine_config=None,
                                 stop_probe=16):
        model_dir = Path(model_dir)
        assert (model_dir / "model.safetensors").is_file() and (model_dir / "nerve_task.json").is_file()
        assert engine_config.max_model_len == 8192
        seen.append(model_dir)
        f1 = next(scripted)
        scorer = Scorer(labels=card.labels.names)
        gold = [Entity(0, 10, "PER", "x" * 10)] * 1
        hits = round(f1 * 10)
        for i in range(10):
            scorer.add(gold, gold if i < hits else [])
        return nerve.extraction.CheckpointScore(scorer.report(), stop_rate=0.5)

    monkeypatch.setattr(nerve.extraction, "evaluate_checkpoint", fake_evaluate_checkpoint)
    monkeypatch.setattr(evaluation, "engine_unavailable_reason", lambda: None)
    with caplog.at_level(logging.INFO, logger="nerve.tuning"):
        run = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "e", "--eval.with_engine", "true",
                                        "--train.max_steps", "4", "--train.eval_steps", "2", "--train.save_steps", "2"))
    assert len(seen) == 2
    record = json.loads((run / "nerve_run.json").read_text())
    assert record["metric"] == "micro_f1" and record["best_checkpoint"].endswith("checkpoint-2")
    assert record["metrics"]["dev"]["micro_f1"] == pytest.approx(18 / 19)  # P 1, R 0.9
    assert record["metrics"]["dev"]["stop_rate"] == 0.5 and "has not learnt to stop" in caplog.text
    assert "engine span F1" in caplog.text
    assert not list(run.glob(".eval-step-*"))  # temporary exports are cleaned up
    card = json.loads((run / "final" / "nerve_task.json").read_text())
    assert card["metrics"]["dev"]["micro_f1"] == pytest.approx(18 / 19)


def test_engine_unavailable_falls_back_to_loss_with_a_log_line(tiny_causal_dir, synth_files, tmp_path, monkeypatch,
                                                               caplog) -> None:
    from nerve.tuning import evaluation

    monkeypatch.setattr(evaluation, "engine_unavailable_reason", lambda: "vLLM is not installed")
    with caplog.at_level(logging.INFO, logger="nerve.tuning"):
        run = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "f", "--eval.with_engine", "true",
                                        "--train.max_steps", "2", "--train.eval_steps", "0",
                                        "--train.save_steps", "2"))
    assert "engine evaluation off: vLLM is not installed. Evaluating dev loss only" in caplog.text
    assert json.loads((run / "nerve_run.json").read_text())["metric"] == "loss"


@pytest.mark.engine
def test_engine_eval_end_to_end_and_export_serves(loop_thread, tiny_causal_dir, synth_files, tmp_path) -> None:
    """Eval during training (temporary merged export -> vLLM constrained greedy decoding -> span scores), then
    `nerve export` of the LoRA run, served through the service's engine unchanged."""
    from nerve.extraction import Extractor
    from nerve.ner.card import TaskCard
    from nerve.ner.readers import read_dataset
    from nerve.tuning.export import export_checkpoint
    from tests.conftest import start_engine

    run = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "eng", "--eval.with_engine", "true",
                                    "--train.max_steps", "2", "--train.eval_steps", "0", "--train.save_steps", "2"))
    dev = json.loads((run / "nerve_run.json").read_text())["metrics"]["dev"]
    assert dev["parse_rate"] == 1.0 and dev["examples"] == 6 and 0.0 <= dev["micro_f1"] <= 1.0
    assert 0.0 <= dev["stop_rate"] <= 1.0  # a random model rarely stops: measured, not assumed

    out = export_checkpoint(run, tmp_path / "served", progress=False)
    card = TaskCard.load(out)
    assert card.chat_template_sha256 and card.metrics["dev"]["parse_rate"] == 1.0
    engine = start_engine(loop_thread, out)
    try:
        texts = [ex.text for ex in read_dataset(synth_files["dev"])]
        results = loop_thread.run(Extractor(engine, card).extract_many(texts))
    finally:
        engine.close()
    assert all(r.parsed for r in results), [r.raw for r in results]
    for text, r in zip(texts, results, strict=True):
        assert all(text[e.start:e.end] == e.text and e.label in card.labels.names for e in r.entities)


def test_torchrun_data_parallel_on_cpu(tiny_causal_dir, synth_files, tmp_path) -> None:
    """`torchrun --nproc_per_node 2 -m tuning ...`: two processes (gloo on CPU), one run record, one final model."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "nerve.tuning", str(TINY),
           *tiny_overrides(tiny_causal_dir, synth_files, run, "--train.max_steps", "2", "--train.eval_steps", "0",
                           "--train.save_steps", "2", "--train.threads", "1")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(EXAMPLES.parents[1])}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=EXAMPLES.parents[1])
    assert res.returncode == 0, res.stderr[-4000:]
    record = json.loads((run / "nerve_run.json").read_text())
    assert record["status"] == "done" and record["global_step"] == 2
    assert record["resources"]["train_tokens"] > 0
    assert (run / "final" / "adapter_config.json").is_file() and (run / "final" / "nerve_task.json").is_file()
    assert sum("loss" in r for r in _log(run)) == 2  # logged once (main process), not once per rank


@pytest.mark.parametrize(("native_bf16", "weights"), [(False, "float32"), (True, "bfloat16")])
def test_auto_dtype_reaches_the_trainer(tiny_causal_dir, synth_files, tmp_path, monkeypatch, native_bf16,
                                        weights) -> None:
    """``model.dtype: auto`` loads a LoRA base in bf16 and turns on bf16 autocast only where bf16 is native."""
    from nerve import hardware

    flags = frozenset({"avx2", "avx512_bf16"} if native_bf16 else {"avx2"})
    monkeypatch.setattr(hardware, "cpu_info", lambda: hardware.CpuInfo("test CPU", "x86_64", 2, flags, "AVX2"))
    monkeypatch.setattr(hardware, "accelerator", lambda: hardware.Accelerator(cuda=False))
    seen: list[torch.dtype] = []
    original = get_method("lora").__class__._load_causal

    def spy(self, model_path, cfg, **extra):
        model = original(self, model_path, cfg, **extra)
        seen.append(next(model.parameters()).dtype)
        return model

    monkeypatch.setattr(get_method("lora").__class__, "_load_causal", spy)
    run = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "run", "--train.max_steps", "1",
                                    "--train.eval_steps", "0", "--train.save_steps", "1"))
    record = json.loads((run / "nerve_run.json").read_text())
    assert record["dtype"]["compute"] == weights and record["dtype"]["weights"] == weights
    assert record["dtype"]["bf16_mixed_precision"] is native_bf16
    assert record["machine"]["cpu"]["native_bf16"] is native_bf16
    assert seen == [getattr(torch, weights)]


def test_mixture_with_label_sampling_tunes_an_open_label_v2_card(tiny_causal_dir, synth_files, tmp_path) -> None:
    from nerve.ner.card import TaskCard

    sources = (f"[{{train_file: {synth_files['train']}, dev_file: {synth_files['dev']}, rename: [PER=person]}}, "
               f"{{train_file: {synth_files['train']}, max_train_examples: 8}}]")
    run = tune(TINY, ["--model.name_or_path", str(tiny_causal_dir), "--train.output_dir", str(tmp_path / "run"),
                      "--data.task", "", "--data.sources", sources, "--data.label_sampling", "true",
                      "--train.max_steps", "2", "--train.eval_steps", "0", "--train.save_steps", "2"])
    card = TaskCard.load(run / "final")
    assert card.template == "nerve-ner-v2" and card.open_labels
    assert "person" in card.labels.names and "PER" in card.labels.names  # the second source is not renamed
    report = json.loads((run / "data_report.json").read_text())
    assert report["train"]["examples"] == 24 + 8 and report["dev"]["examples"] == 6


def test_adapter_init_continues_a_saved_adapter(tiny_causal_dir, synth_files, tmp_path) -> None:
    """method.adapter_init loads the saved LoRA weights (trainable) instead of new ones; a mismatched rank or a
    missing folder is a config error naming the field."""
    first = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "first"))
    saved = first / "final"
    # Learning rate 0: the continued run's final adapter must be the saved one, weight for weight.
    frozen = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "frozen", "--method.adapter_init",
                                       str(saved), "--train.max_steps", "2", "--train.learning_rate", "0"))
    a, b = _adapter(first), _adapter(frozen)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k])
    assert json.loads((frozen / "nerve_run.json").read_text())["adapter_init"] == str(saved)
    # Trainable: with a learning rate the weights move, and training starts from the saved adapter's loss.
    more = tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "more", "--method.adapter_init",
                                     str(saved), "--train.max_steps", "2"))
    assert any(not torch.equal(_adapter(more)[k], a[k]) for k in a)
    assert _log(more)[0]["loss"] < _log(first)[0]["loss"]
    with pytest.raises(ConfigError, match=r"method.adapter_init: .* has r 4 \(config: 8\)"):
        tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "bad", "--method.adapter_init",
                                  str(saved), "--method.lora_r", "8"))
    assert not (tmp_path / "bad").exists()  # checked before the run starts
    with pytest.raises(ConfigError, match="neither an adapter folder nor a tuned nerve model"):
        tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "none", "--method.adapter_init",
                                  str(tmp_path / "missing")))
    # The other methods would ignore it: refused before any data or model is loaded (no run folder is made).
    for name in ("full", "freeze"):
        with pytest.raises(ConfigError, match=f"method.adapter_init applies to method lora only, not {name}"):
            tune(TINY, tiny_overrides(tiny_causal_dir, synth_files, tmp_path / name, "--method.name", name,
                                      "--method.adapter_init", str(saved)))
        assert not (tmp_path / name).exists()

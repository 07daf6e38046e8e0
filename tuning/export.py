"""Export a trained model as a servable checkpoint: merged weights, tokenizer, generation config, task card.

:func:`export_checkpoint` accepts a run directory (its final model), a Trainer checkpoint, a LoRA adapter
folder or a full model folder, and writes ``out_dir`` with:

* ``model.safetensors`` + ``config.json``: LoRA merged into the base (``merge_and_unload``), in the base model's
  dtype unless asked otherwise;
* the tokenizer with its chat template, and ``generation_config.json`` whose eos ids include the chat
  template's end-of-turn token;
* ``nerve_task.json``: the run's task card with the chat template's sha256, the base model and the metrics.

Nothing is declared exported before it is checked: the merged model's logits must equal the adapter model's
(``torch.allclose`` in float32 on rendered prompts), tied input/output embeddings must still be tied (or, when
an adapter touched them, be untied explicitly, ``tie_word_embeddings: false``), and the saved folder, loaded
back, must hold exactly the tensors that were saved and, when saved in float32, reproduce the merged model's
logits (at 16 bits the rounding drift from the float32 merge is logged). The folder is written next to ``out_dir`` and
renamed into place only after these checks; on failure :class:`ExportError` is raised and nothing is left.

Token-classification runs export their tagger folder (see :mod:`nerve.engines.token_tagger`) with the card
(``metrics.kind = "token-cls"``) after the same load-back check.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from nerve.models import ModelError, readable
from nerve.ner.card import CARD_FILENAME, TaskCard, chat_template_sha256
from nerve.ner.prompts import render_prompt, render_training_pair
from nerve.ner.types import Entity

from .data import end_of_turn, generation_eos_ids
from .methods import TORCH_DTYPES

logger = logging.getLogger("nerve.tuning")

RUN_FILENAME = "nerve_run.json"
SAMPLE_TEXTS = {
    "zh": ["张三在北京的阿里巴巴公司担任总经理。", "《三体》是刘慈欣的小说。"],
    "en": ["John Smith works for Acme Corp. in New York.", "EU rejects German call to boycott British lamb."],
}


class ExportError(RuntimeError):
    """The exported checkpoint failed a check (logits, tying, round trip)."""


# --- locating what to export ---------------------------------------------------------------------------


def resolve_source(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The folder holding the model to export, and the run record (``nerve_run.json``) if there is one."""
    path = Path(path)
    run: dict[str, Any] = {}
    if (path / RUN_FILENAME).is_file():
        run = json.loads((path / RUN_FILENAME).read_text(encoding="utf-8"))
        final = path / run.get("final_dir", "final")
        if not final.is_dir():
            raise FileNotFoundError(f"{path}: the run has no final model at {final} (did training finish?)")
        return final, run
    if (path.parent / RUN_FILENAME).is_file():  # a checkpoint-N inside a run dir
        run = json.loads((path.parent / RUN_FILENAME).read_text(encoding="utf-8"))
    if not ((path / "adapter_config.json").is_file() or (path / "config.json").is_file()):
        raise FileNotFoundError(f"{path}: neither a run directory, an adapter nor a model folder")
    return path, run


def _find_card(source: Path, run: dict[str, Any]) -> TaskCard:
    for d in (source, source.parent):
        if (d / CARD_FILENAME).is_file():
            return TaskCard.load(d)
    if run.get("card"):
        return TaskCard.from_dict(run["card"])
    raise FileNotFoundError(f"{source}: no task card found; pass card=")


# --- helpers -------------------------------------------------------------------------------------------


def sample_batch(tokenizer, card: TaskCard) -> dict[str, torch.Tensor]:
    """Rendered prompts plus answers for a few texts, padded: the batch the logits checks run on."""
    texts = SAMPLE_TEXTS["zh" if card.language == "zh" else "en"]
    rows = []
    for text in texts:
        words = text.split()
        ents = [Entity.at(text, 0, len(words[0]), card.labels.names[0])] if words else []
        pair = render_training_pair(tokenizer, card, text, ents)
        rows.append(tokenizer(pair.prompt + pair.completion, add_special_tokens=False)["input_ids"])
    rows.append(tokenizer(render_prompt(tokenizer, card, texts[0]), add_special_tokens=False)["input_ids"])
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(r)
        mask[i, : len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


LOGITS_TAIL = 48
"""Positions at the end of each sample row whose full-vocabulary logits are compared (the answer and end token)."""


@torch.no_grad()
def _logits(model, batch) -> torch.Tensor:
    """Final hidden states at every position and logits at the last :data:`LOGITS_TAIL` positions, flattened.

    Equal hidden states everywhere plus equal logits where the answer is make the checks as strong as comparing
    every logit (the head is applied per position) at a fraction of the cost of a 151,936-way head.
    """
    from .collate import final_hidden

    model.eval()
    mask = batch["attention_mask"].unsqueeze(-1)
    hidden = final_hidden(model, **batch).float() * mask
    tail = min(LOGITS_TAIL, batch["input_ids"].shape[1])
    logits = model(**batch, use_cache=False, logits_to_keep=tail).logits.float() * mask[:, -tail:]
    return torch.cat([hidden.flatten(), logits.flatten()])


def _tied(model) -> bool:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return out is not None and inp.weight.data_ptr() == out.weight.data_ptr()


def _untie(model) -> None:
    """Give the output layer its own copy of the (tied) embedding matrix."""
    out = model.get_output_embeddings()
    layer = getattr(out, "base_layer", out)  # a LoRA-wrapped head keeps the weight in base_layer
    layer.weight = torch.nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
    _untie_config(model)


def _untie_config(model) -> None:
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "get_text_config", lambda: None)()
    if text_config is not None and text_config is not model.config:
        text_config.tie_word_embeddings = False


def _adapter_touches_embeddings(peft_model) -> bool:
    """Whether the adapter wraps the input or output embeddings (LoRA on them, or a trained copy)."""
    base = peft_model.get_base_model()
    return any(hasattr(m, "lora_A") or hasattr(m, "modules_to_save")
               for m in (base.get_input_embeddings(), base.get_output_embeddings()) if m is not None)


def _check_close(ref: torch.Tensor, got: torch.Tensor, what: str, atol: float, rtol: float) -> float:
    """Raise unless ``got`` equals ``ref`` up to float32 rounding: ``max|diff| <= atol + rtol * max|ref|``.

    The tolerance is relative to the tensor's scale, not to each element: merging ``W + BA`` reorders float32
    sums, and the rounding that moves through 24 layers lands on small and large activations alike (about
    1e-5 of the largest on Qwen2.5-0.5B), while a merge that drops, doubles or misplaces an adapter changes
    the outputs by a sizeable fraction of their scale.
    """
    diff = (ref - got).abs().max().item()
    scale = ref.abs().max().item()
    if diff > atol + rtol * scale:
        raise ExportError(f"{what}: logits differ (max |diff| {diff:.3g} against a scale of {scale:.3g}; "
                          f"allowed {atol} + {rtol} x scale)")
    return diff


def _dtype(name: str, base_config) -> torch.dtype:
    if name != "auto":
        return TORCH_DTYPES[name]
    d = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    if isinstance(d, str):
        d = TORCH_DTYPES.get(d.replace("torch.", ""), torch.float32)
    return d if isinstance(d, torch.dtype) else torch.float32


def _generation_config(model, tokenizer, card: TaskCard, base_dir: Path | None):
    from transformers import GenerationConfig

    gen = GenerationConfig.from_model_config(model.config)
    if base_dir is not None and (base_dir / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(base_dir)
    eot = end_of_turn(tokenizer, card, generation_eos_ids(base_dir) if base_dir else None)
    gen.eos_token_id = eot.stop_ids
    if gen.pad_token_id is None:
        gen.pad_token_id = tokenizer.pad_token_id
    return gen


def _final_card(card: TaskCard, tokenizer, run: dict[str, Any], kind: str, metrics: dict | None) -> TaskCard:
    merged_metrics = {**card.metrics, **(run.get("metrics") or {}), **(metrics or {})}
    merged_metrics["kind"] = kind
    if run.get("method"):
        merged_metrics.setdefault("method", run["method"])
    base = card.base_model or run.get("base_model")
    return replace(card, chat_template_sha256=chat_template_sha256(tokenizer.chat_template), base_model=base,
                   metrics=merged_metrics)


# --- export --------------------------------------------------------------------------------------------


def export_checkpoint(run_dir_or_adapter: str | Path, out_dir: str | Path, card: TaskCard | None = None, *,
                      dtype: str = "auto", metrics: dict[str, Any] | None = None, overwrite: bool = True,
                      atol: float = 1e-4, rtol: float = 1e-4, progress: bool = True) -> Path:
    """Export a run / checkpoint / adapter / model folder to a servable checkpoint at ``out_dir``.

    ``card`` defaults to the card saved with the run; ``dtype`` is the saved dtype (``auto``: the base
    model's); ``metrics`` are merged into the card's. Returns ``out_dir``. Raises :class:`ExportError` when a
    check fails (see the module docstring).
    """
    source, run = resolve_source(run_dir_or_adapter)
    card = card or _find_card(source, run)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty")
    with _staged(out) as staging:
        if (source / "nerve_encoder.json").is_file():
            _export_tagger(source, staging, card, run, metrics)
        else:
            _export_causal(source, staging, card, run, metrics, dtype, atol, rtol, progress)
    logger.info("exported %s -> %s", source, out)
    return out


@contextlib.contextmanager
def _staged(out: Path):
    """A folder beside ``out`` to write into; renamed to ``out`` (replacing it) on success, removed on failure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        yield staging
        readable(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def merge_adapter(adapter_dir: Path, out_dir: Path, card: TaskCard) -> None:
    """:data:`nerve.models.Merge` for the registry: :func:`export_checkpoint` of an adapter folder, quietly,
    with a failed verification raised as :class:`~nerve.models.ModelError`."""
    try:
        export_checkpoint(adapter_dir, out_dir, card, progress=False)
    except ExportError as exc:
        raise ModelError(f"the merged model does not reproduce the adapter: {exc}") from exc


def export_adapter(run_dir_or_adapter: str | Path, out_dir: str | Path, card: TaskCard | None = None, *,
                   dtype: str = "bfloat16", metrics: dict[str, Any] | None = None) -> Path:
    """Export a LoRA run / checkpoint / adapter as an adapter folder with its own task card (no merge).

    The folder holds ``adapter_config.json``, ``adapter_model.safetensors`` (in ``dtype``, default bfloat16:
    half the bytes; PEFT computes adapters in float32 either way), ``nerve_task.json`` (with the chat-template
    hash of the training tokenizer) and the run record when there is one. Base-model paths of the machine
    that trained it are dropped from the config: whoever loads the adapter names the base. The saved tensors
    are read back and compared with the cast originals.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    source, run = resolve_source(run_dir_or_adapter)
    if not (source / "adapter_config.json").is_file():
        raise ExportError(f"{source}: not a LoRA adapter (no adapter_config.json); export it merged instead")
    card = card or _find_card(source, run)
    out = Path(out_dir)
    with _staged(out) as staging:
        target = TORCH_DTYPES[dtype]
        weights = {k: v.to(target).contiguous() for k, v in load_file(str(source / "adapter_model.safetensors")).items()}
        save_file(weights, str(staging / "adapter_model.safetensors"), metadata={"format": "pt"})
        _check_same_weights(weights, load_file(str(staging / "adapter_model.safetensors")))
        config = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = run.get("base_model") or card.base_model
        (staging / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        base_dir = run.get("base_model_path")
        tok_dir = source if (source / "tokenizer_config.json").is_file() else base_dir
        tokenizer = AutoTokenizer.from_pretrained(tok_dir)
        _final_card(card, tokenizer, run, "causal-lm", {"adapter_dtype": dtype, **(metrics or {})}).save(staging)
        if run:
            record = {k: v for k, v in run.items() if k not in ("base_model_path",)}
            state = source / "trainer_state.json"
            if state.is_file():  # a checkpoint of a run still training (or stopped): say which one
                st = json.loads(state.read_text(encoding="utf-8"))
                record["checkpoint"] = {"name": source.name, "global_step": st.get("global_step"),
                                        "epoch": st.get("epoch"), "max_steps": st.get("max_steps"),
                                        "log_history": st.get("log_history", [])}
            (staging / RUN_FILENAME).write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n",
                                                encoding="utf-8")
    logger.info("exported adapter %s -> %s (%s)", source, out, dtype)
    return out


def _status(progress: bool, msg: str):
    if not progress:
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(msg)


def _export_causal(source: Path, staging: Path, card: TaskCard, run: dict, metrics: dict | None, dtype: str,
                   atol: float, rtol: float, progress: bool) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    is_adapter = (source / "adapter_config.json").is_file()
    if is_adapter:
        adapter_cfg = json.loads((source / "adapter_config.json").read_text())
        base_dir = Path(run.get("base_model_path") or adapter_cfg["base_model_name_or_path"])
    else:
        base_dir = Path(run["base_model_path"]) if run.get("base_model_path") else None
    tok_dir = source if (source / "tokenizer_config.json").is_file() else base_dir
    if tok_dir is None:
        raise FileNotFoundError(f"{source}: no tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    batch = sample_batch(tokenizer, card)

    with _status(progress, "merging and verifying"):
        if is_adapter:
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
            was_tied = bool(base.config.tie_word_embeddings) and _tied(base)
            model = PeftModel.from_pretrained(base, source)
            reference = _logits(model, batch)
            if was_tied and _adapter_touches_embeddings(model):
                logger.info("the adapter changes tied embeddings: untying lm_head before merging")
                _untie(model.get_base_model())
                _check_close(reference, _logits(model, batch), "untying", atol, rtol)
            model = model.merge_and_unload()
            _check_close(reference, _logits(model, batch), "merged vs adapter", atol, rtol)
            if model.config.tie_word_embeddings and not _tied(model):
                # e.g. a trained copy of lm_head (modules_to_save): keep both matrices explicitly.
                logger.info("merged model has separate input and output embeddings: saving them untied")
                _untie_config(model)
            target = _dtype(dtype, _base_config(base_dir))
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
            target = _dtype(dtype, _base_config(base_dir) if base_dir else model.config)
        if model.config.tie_word_embeddings and not _tied(model):
            raise ExportError("config says tie_word_embeddings but lm_head and embed_tokens are separate tensors")
        reference = _logits(model, batch)  # float32, merged
        model = model.to(target)
        model.config.dtype = target
        saved_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.config.use_cache = True  # training turned it off; generation wants it
        model.generation_config = _generation_config(model, tokenizer, card, base_dir)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        kind_metrics = {"export_dtype": str(target).replace("torch.", ""), "tied_embeddings": _tied(model)}
        _final_card(card, tokenizer, run, "causal-lm", {**kind_metrics, **(metrics or {})}).save(staging)
        del model

        reloaded = AutoModelForCausalLM.from_pretrained(staging, dtype=target)
        if reloaded.config.tie_word_embeddings != _tied(reloaded):
            raise ExportError("tied embeddings did not survive the save/load round trip")
        _check_same_weights(saved_state, reloaded.state_dict())
        # Integrity of the save is the exact weight comparison above. At float32 the reloaded logits must also
        # equal the merge's; at 16 bits they differ by rounding (weights, and buffers such as rotary frequencies
        # that a fresh load recomputes), which is reported, not an error: the merge itself was checked in float32.
        got = _logits(reloaded, batch)
        scale = reference.abs().max().clamp(min=1.0)
        drift = ((got - reference).abs().max() / scale).item()
        if target == torch.float32 and drift > 1e-5:
            raise ExportError(f"the saved checkpoint's logits differ from the merged model's (max relative diff "
                              f"{drift:.3g} > 1e-05)")
        if drift > 5e-2:
            logger.warning("%s rounding moves the logits by up to %.1f%% of their range against the float32 merge;"
                           " export with --dtype float32 to avoid it", str(target).replace("torch.", ""), 100 * drift)
        if chat_template_sha256(_saved_chat_template(staging)) != chat_template_sha256(tokenizer.chat_template):
            raise ExportError("the saved tokenizer's chat template differs from the training tokenizer's")


def _saved_chat_template(directory: Path) -> str | None:
    """The chat template a saved tokenizer folder will load with."""
    jinja = directory / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = directory / "tokenizer_config.json"
    return json.loads(config.read_text(encoding="utf-8")).get("chat_template") if config.is_file() else None


def _check_same_weights(saved: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor]) -> None:
    if saved.keys() != loaded.keys():
        missing, extra = sorted(saved.keys() - loaded.keys()), sorted(loaded.keys() - saved.keys())
        raise ExportError(f"save/load round trip changed the parameter names (missing {missing[:3]}, extra {extra[:3]})")
    for name, tensor in saved.items():
        if not torch.equal(tensor, loaded[name].to(tensor.device)):
            raise ExportError(f"save/load round trip changed {name}")


def _base_config(base_dir: Path | None):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base_dir)


def _export_tagger(source: Path, staging: Path, card: TaskCard, run: dict, metrics: dict | None) -> None:
    from nerve.engines.token_tagger import Tagger
    from nerve.ner.card import ENCODER_FILENAME

    for item in source.iterdir():
        if item.is_file() and item.name != CARD_FILENAME:
            shutil.copy2(item, staging / item.name)
    meta = json.loads((source / ENCODER_FILENAME).read_text())
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    final = _final_card(card, tokenizer, run, "token-cls", {"crf": meta.get("crf", False), **(metrics or {})})
    final = replace(final, chat_template_sha256=None)  # an encoder has no chat template
    final.save(staging)
    texts = SAMPLE_TEXTS["zh" if card.language == "zh" else "en"]
    a, b = Tagger(source), Tagger(staging)
    enc = a.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        la, lb = a.tagger.emissions(enc["input_ids"], enc["attention_mask"]), b.tagger.emissions(
            enc["input_ids"], enc["attention_mask"])
    _check_close(la, lb, "token-cls round trip", 1e-5, 1e-5)
    if a.extract(texts) != b.extract(texts):
        raise ExportError("the exported tagger extracts different entities than the source")

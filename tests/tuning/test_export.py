"""Export: LoRA merge checked with allclose, tied embeddings, save/load round trip, task card and eos ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from nerve.ner.card import TaskCard, chat_template_sha256
from nerve.ner.prompts import check_chat_template
from nerve.tuning import export as export_mod
from nerve.tuning.export import ExportError, export_checkpoint, sample_batch

TAIL = 64  # logits of the last positions (the answers): the 151,936-way head over every position is slow


def make_adapter(base_dir: Path, out: Path, targets, seed: int = 0) -> Path:
    """A LoRA adapter on ``base_dir`` with random (non-zero) B matrices, so merging changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    TaskCard.load(base_dir).save(out)
    return out


def adapter_logits(base_dir: Path, adapter: Path, batch) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter)
    with torch.no_grad():
        return model.eval()(**batch, use_cache=False, logits_to_keep=TAIL).logits


def exported_logits(out: Path, batch) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(**batch, use_cache=False, logits_to_keep=TAIL).logits


def saved_keys(out: Path) -> set[str]:
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return set(f.keys())


@pytest.fixture(scope="module")
def tokenizer(tiny_causal_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_causal_dir)


def test_merge_keeps_tied_embeddings_tied(tiny_causal_dir, tokenizer, tmp_path) -> None:
    adapter = make_adapter(tiny_causal_dir, tmp_path / "adapter", "all-linear")
    out = export_checkpoint(adapter, tmp_path / "out", dtype="float32", progress=False)
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in saved_keys(out)  # stored once, tied on load
    batch = sample_batch(tokenizer, TaskCard.load(out))
    torch.testing.assert_close(exported_logits(out, batch), adapter_logits(tiny_causal_dir, adapter, batch),
                               atol=1e-4, rtol=1e-4)
    assert not any(k.startswith("base_model") or "lora" in k for k in saved_keys(out))


def test_adapter_on_tied_lm_head_is_untied(tiny_causal_dir, tokenizer, tmp_path) -> None:
    """LoRA on lm_head of a tied model: merging into the shared matrix would also change the input embeddings."""
    adapter = make_adapter(tiny_causal_dir, tmp_path / "adapter", ["q_proj", "v_proj", "lm_head"])
    out = export_checkpoint(adapter, tmp_path / "out", dtype="float32", progress=False)
    assert json.loads((out / "config.json").read_text())["tie_word_embeddings"] is False
    assert {"lm_head.weight", "model.embed_tokens.weight"} <= saved_keys(out)
    batch = sample_batch(tokenizer, TaskCard.load(out))
    torch.testing.assert_close(exported_logits(out, batch), adapter_logits(tiny_causal_dir, adapter, batch),
                               atol=1e-4, rtol=1e-4)


def test_a_wrong_merge_is_caught_and_leaves_nothing(tiny_causal_dir, tmp_path, monkeypatch) -> None:
    adapter = make_adapter(tiny_causal_dir, tmp_path / "adapter", ["q_proj", "lm_head"])
    monkeypatch.setattr(export_mod, "_untie", lambda model: None)  # the bug the untie step prevents
    with pytest.raises(ExportError, match="merged vs adapter"):
        export_checkpoint(adapter, tmp_path / "out", dtype="float32", progress=False)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out-")]


def test_card_generation_config_and_dtype_round_trip(tiny_causal_dir, tokenizer, tmp_path) -> None:
    adapter = make_adapter(tiny_causal_dir, tmp_path / "adapter", ["q_proj", "o_proj"])
    card = TaskCard.preset("conll2003", base_model="tiny-random-qwen2", metrics={"note": "kept"})
    out = export_checkpoint(adapter, tmp_path / "out", card, metrics={"dev": {"micro_f1": 0.5}}, progress=False)
    loaded = TaskCard.load(out)
    assert loaded.labels == card.labels and loaded.template == card.template and loaded.bounds == card.bounds
    assert loaded.base_model == "tiny-random-qwen2"
    assert loaded.metrics["dev"] == {"micro_f1": 0.5} and loaded.metrics["note"] == "kept"
    assert loaded.metrics["kind"] == "causal-lm" and loaded.metrics["tied_embeddings"] is True
    assert loaded.chat_template_sha256 == chat_template_sha256(tokenizer.chat_template)
    from transformers import AutoTokenizer, GenerationConfig

    check_chat_template(loaded, AutoTokenizer.from_pretrained(out))  # the service's load-time check passes
    eos = GenerationConfig.from_pretrained(out).eos_token_id
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"  # auto: the base model's dtype


def test_export_of_a_full_model_folder(tiny_causal_dir, tmp_path) -> None:
    out = export_checkpoint(tiny_causal_dir, tmp_path / "out", progress=False)
    assert TaskCard.load(out).metrics["kind"] == "causal-lm"
    assert (out / "model.safetensors").is_file() and (out / "generation_config.json").is_file()


def test_missing_source_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        export_checkpoint(tmp_path, tmp_path / "out")

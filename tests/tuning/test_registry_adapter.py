"""Registry models that are committed LoRA adapters: `nerve models pull` merges them into their base and verifies."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nerve import models
from nerve.models import ModelError, ModelSpec
from nerve.tuning.export import merge_adapter


def _adapter_spec(tiny_causal_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelSpec:
    """A fake base already pulled (the tiny model) and a committed adapter for it under a fake models/ folder."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from nerve.ner.card import TaskCard

    monkeypatch.setenv("NERVE_HOME", str(tmp_path / "home"))
    base = ModelSpec(name="tiny-base", description="", kind="causal-lm", wheels=(), members=(), license="MIT")
    monkeypatch.setitem(models.REGISTRY, base.name, base)
    shutil.copytree(tiny_causal_dir, models.model_path(base.name))
    (models.model_path(base.name) / models.STAMP).write_text("{}")

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                            init_lora_weights=False))  # random A and B: the adapter changes logits
    adapters = tmp_path / "repo-models"
    folder = adapters / "tiny-tuned"
    peft.save_pretrained(folder)
    card = replace(TaskCard.load(tiny_causal_dir), template="nerve-ner-v2", open_labels=True)
    card.save(folder)
    monkeypatch.setattr(models, "ADAPTERS_DIR", adapters)
    files = tuple((f.name, models.sha256_file(f)) for f in sorted(folder.iterdir()))
    spec = ModelSpec(name="tiny-tuned", description="", kind="causal-lm", wheels=(), members=(), license="MIT",
                     base=base.name, adapter="tiny-tuned", adapter_files=files)
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)
    return spec


def test_pull_merges_the_committed_adapter_and_matches_its_logits(tiny_causal_dir, tmp_path, monkeypatch) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from nerve.ner.card import TaskCard

    spec = _adapter_spec(tiny_causal_dir, tmp_path, monkeypatch)
    # The registry does not merge by itself (merging is tuning's): without the merge step it says what to run.
    with pytest.raises(ModelError, match="merged into tiny-base when it is pulled: run `nerve models pull tiny-tuned`"):
        models.resolve_model(spec.name, log=lambda m: None)
    assert not models.is_pulled(spec.name)
    merged_dir = models.pull_model(spec.name, log=lambda m: None, merge=merge_adapter)
    assert models.is_pulled(spec.name) and sorted(p.name for p in merged_dir.parent.iterdir()) == [
        "tiny-base", "tiny-tuned"]
    card = TaskCard.load(merged_dir)
    assert card.template == "nerve-ner-v2" and card.open_labels and card.chat_template_sha256
    assert json.loads((merged_dir / models.STAMP).read_text())["base"] == "tiny-base"

    ids = torch.tensor([[11, 12, 13, 14, 15, 16]])
    base = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32)
    adapter_logits = PeftModel.from_pretrained(base, models.adapter_dir(spec)).eval()(ids).logits
    plain = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32).eval()(ids).logits
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()(ids).logits
    assert not torch.allclose(adapter_logits, plain, atol=1e-3)  # the adapter does change the model
    # saved in the base's dtype (bf16): equal to the float32 merge up to bf16 rounding of the weights
    torch.testing.assert_close(merged, adapter_logits, atol=5e-2, rtol=5e-2)


def test_a_changed_adapter_file_fails_the_pull_and_leaves_nothing(tiny_causal_dir, tmp_path, monkeypatch) -> None:
    spec = _adapter_spec(tiny_causal_dir, tmp_path, monkeypatch)
    weights = models.adapter_dir(spec) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="checksum mismatch for .*adapter_model.safetensors"):
        models.pull_model(spec.name, log=lambda m: None, merge=merge_adapter)
    assert not models.model_path(spec.name).exists()


def test_committed_adapters_match_the_registry() -> None:
    """Every registry adapter's files are in the repository with the pinned checksums."""
    adapters = [s for s in models.REGISTRY.values() if s.adapter is not None]
    for spec in adapters:
        assert spec.base in models.REGISTRY
        assert {f for f, _ in spec.adapter_files} >= {"adapter_config.json", "adapter_model.safetensors",
                                                       "nerve_task.json"}
        models.verify_adapter(spec)


def test_exported_adapter_is_what_the_registry_commits(tiny_causal_dir, synth_files, tmp_path, monkeypatch) -> None:
    """`nerve export --adapter` writes bf16 adapter weights, the card and the run record; a registry entry made
    of exactly those files pulls and merges."""
    from safetensors.torch import load_file

    from nerve.ner.card import TaskCard
    from nerve.tuning.export import export_adapter
    from nerve.tuning.run import tune
    from tests.tuning.conftest import EXAMPLES, tiny_overrides

    run = tune(EXAMPLES / "tiny_test.yaml", tiny_overrides(tiny_causal_dir, synth_files, tmp_path / "run",
                                                           "--train.max_steps", "2", "--train.eval_steps", "0",
                                                           "--train.save_steps", "2"))
    folder = export_adapter(run, tmp_path / "repo-models" / "tiny-tuned")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["adapter_config.json", "adapter_model.safetensors", "nerve_run.json", "nerve_task.json"]
    assert {t.dtype for t in load_file(str(folder / "adapter_model.safetensors")).values()} == {torch.bfloat16}
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_causal_dir)
    assert "base_model_path" not in json.loads((folder / "nerve_run.json").read_text())
    card = TaskCard.load(folder)
    assert card.template == "nerve-ner-v2" and card.chat_template_sha256

    monkeypatch.setenv("NERVE_HOME", str(tmp_path / "home"))
    base = ModelSpec(name="tiny-base", description="", kind="causal-lm", wheels=(), members=(), license="MIT")
    monkeypatch.setitem(models.REGISTRY, base.name, base)
    shutil.copytree(tiny_causal_dir, models.model_path(base.name))
    (models.model_path(base.name) / models.STAMP).write_text("{}")
    monkeypatch.setattr(models, "ADAPTERS_DIR", tmp_path / "repo-models")
    spec = ModelSpec(name="tiny-tuned", description="", kind="causal-lm", wheels=(), members=(), license="MIT",
                     base="tiny-base", adapter="tiny-tuned",
                     adapter_files=tuple((n, models.sha256_file(folder / n)) for n in names))
    monkeypatch.setitem(models.REGISTRY, spec.name, spec)
    merged = models.pull_model(spec.name, log=lambda m: None, merge=merge_adapter)
    assert TaskCard.load(merged).template == "nerve-ner-v2"

"""Packing keeps examples apart (packed == unpacked), and the selective-logits loss equals the full loss."""

from __future__ import annotations

import pytest
import torch

from nerve.ner.card import TaskCard
from nerve.tuning.collate import PackedCollator, PaddingCollator, check_packing, final_hidden, pack_features, unpack_logits
from nerve.tuning.data import encode_causal, end_of_turn
from nerve.tuning.loss import SelectiveLogits, causal_lm_loss
from tests.tuning.conftest import synth_examples


@pytest.fixture(scope="module")
def model_and_features(tiny_causal_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_causal_dir)
    card = TaskCard.load(tiny_causal_dir)
    enc = encode_causal(tok, card, synth_examples(5), end_of_turn(tok, card))
    model = AutoModelForCausalLM.from_pretrained(tiny_causal_dir, dtype=torch.float32).eval()
    return model, [e.as_feature() for e in enc], tok.pad_token_id


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_and_loss_equal_unpacked(model_and_features, attn) -> None:
    model, feats, pad = model_and_features
    model.set_attn_implementation(attn)
    rows = pack_features(feats, max_length=sum(len(f["input_ids"]) for f in feats))
    assert len(rows) == 1
    packed = PackedCollator(pad)(rows)
    assert "attention_mask" not in packed  # the block mask comes from the restarting position ids
    padded = PaddingCollator(pad)(feats)
    with torch.no_grad():
        # Hidden states stand in for logits (the head is per position) and keep the test fast.
        hp = final_hidden(model, input_ids=packed["input_ids"], position_ids=packed["position_ids"])[0]
        hu = final_hidden(model, input_ids=padded["input_ids"], attention_mask=padded["attention_mask"])
        sel = SelectiveLogits(model)
        try:
            loss_p, _ = causal_lm_loss(model, {k: packed[k] for k in ("input_ids", "position_ids")}, packed["labels"],
                                       selective=sel)
            loss_u, _ = causal_lm_loss(model, {k: padded[k] for k in ("input_ids", "attention_mask")},
                                       padded["labels"], selective=sel)
        finally:
            sel.remove()
    order = sorted(range(len(feats)), key=lambda i: -len(feats[i]["input_ids"]))
    for i, part in zip(order, unpack_logits(hp, rows[0]["lengths"]), strict=True):
        n = len(feats[i]["input_ids"])
        torch.testing.assert_close(part, hu[i, :n], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss_p, loss_u, atol=1e-5, rtol=1e-5)
    check_packing(model, feats, pad)  # the run-time guard agrees


def test_packing_needs_use_cache_false(model_and_features) -> None:
    """Regression: with a KV cache, transformers skips packed-sequence detection and examples see each other."""
    model, feats, pad = model_and_features
    model.set_attn_implementation("sdpa")
    rows = pack_features(feats[:2], max_length=10_000)
    packed = PackedCollator(pad, None)(rows)
    first = rows[0]["lengths"][0]
    with torch.no_grad():
        ok = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False,
                   logits_to_keep=packed["input_ids"].shape[1] - first).logits
        leaky = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=True,
                      logits_to_keep=packed["input_ids"].shape[1] - first).logits
    assert not torch.allclose(ok, leaky, atol=1e-3)


def test_pack_features_fills_rows_and_restarts_positions() -> None:
    feats = [{"input_ids": [1] * n, "labels": [-100] * (n - 1) + [1]} for n in (7, 5, 4, 3, 3, 2)]
    rows = pack_features(feats, max_length=10)
    assert sum(len(r["input_ids"]) for r in rows) == 24 and all(len(r["input_ids"]) <= 10 for r in rows)
    assert len(rows) == 3  # 24 tokens in rows of 10: best fit needs 3
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        assert len(starts) == len(r["lengths"])
    batch = PackedCollator(0, 8)(rows)
    assert batch["input_ids"].shape == (3, 16) and int(batch["num_tokens"]) == 24
    row = batch["position_ids"][0].tolist()
    k = len(rows[0]["input_ids"])
    assert row[k:] == list(range(16 - k))  # padding is its own segment
    with pytest.raises(ValueError, match="does not fit"):
        pack_features([{"input_ids": [1] * 11, "labels": [1] * 11}], 10)


def test_selective_logits_loss_and_grads_equal_full(model_and_features) -> None:
    model, feats, pad = model_and_features
    batch = PaddingCollator(pad)(feats[:3])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model.zero_grad()
    full = model(**inputs, labels=batch["labels"], use_cache=False).loss  # transformers' own loss
    full.backward()
    g_full = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    sel = SelectiveLogits(model)
    try:
        loss, logits = causal_lm_loss(model, inputs, batch["labels"], selective=sel)
        loss.backward()
    finally:
        sel.remove()
    n_labels = int((batch["labels"][:, 1:] != -100).sum())
    assert logits.shape == (n_labels, model.config.vocab_size)  # the head ran on labelled positions only
    torch.testing.assert_close(loss, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad, g_full, atol=1e-6, rtol=1e-4)
    model.zero_grad()
    # The hook is gone: the model is back to full logits.
    assert model(**inputs, use_cache=False).logits.shape[:2] == batch["input_ids"].shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packing_guard_passes_isolated_rows_and_catches_leaks(model_and_features, monkeypatch, dtype) -> None:
    """The run-time guard accepts real packing in 16-bit too, and fails when examples see each other."""
    import copy

    from nerve.tuning import collate

    model, feats, pad = model_and_features
    model = copy.deepcopy(model).to(dtype)
    check_packing(model, feats, pad)
    real = collate.PackedCollator.__call__

    def leaky(self, rows):  # positions that never restart: attention runs across the packed examples
        batch = real(self, rows)
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"])
        return batch

    monkeypatch.setattr(collate.PackedCollator, "__call__", leaky)
    with pytest.raises(RuntimeError, match="packing check failed"):
        check_packing(model, feats, pad)

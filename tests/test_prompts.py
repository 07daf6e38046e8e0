"""Prompt rendering: one function for tuning and serving, through the tokenizer's chat template."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from ner.card import SchemaBounds, TaskCard
from ner.labels import CLUENER
from ner.prompts import check_chat_template, render_messages, render_prompt, render_training_pair
from ner.types import Entity


def test_messages_list_labels_and_descriptions() -> None:
    card = TaskCard.preset("conll2003")
    msgs = render_messages(card, "EU rejects German call .")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "- PER: person names" in msgs[0]["content"]
    assert msgs[1]["content"] == "EU rejects German call ."
    sub = render_messages(card, "x", card.labels.subset(["LOC"]))
    assert "- LOC" in sub[0]["content"] and "- PER" not in sub[0]["content"]


def test_unknown_template_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown prompt template"):
        render_messages(replace(TaskCard.preset("cluener"), template="nope"), "x")


def test_prompt_uses_chat_template(qwen_tokenizer) -> None:
    card = TaskCard.preset("cluener")
    prompt = render_prompt(qwen_tokenizer, card, "彭小军认为")
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith("<|im_start|>user\n彭小军认为<|im_end|>\n<|im_start|>assistant\n")


def test_training_pair_is_prompt_plus_answer_plus_end_token(qwen_tokenizer) -> None:
    card = TaskCard.preset("cluener")
    text = "彭小军认为，国内银行现在走的是台湾的发卡模式"
    ents = [Entity.at(text, 0, 3, "name"), Entity.at(text, 15, 17, "address")]
    pair = render_training_pair(qwen_tokenizer, card, text, ents)
    assert pair.prompt == render_prompt(qwen_tokenizer, card, text)  # same code as serving
    assert pair.completion.endswith("<|im_end|>")
    answer = pair.completion.removesuffix("<|im_end|>")
    assert json.loads(answer) == {"entities": [{"label": "name", "text": "彭小军"}, {"label": "address", "text": "台湾"}]}


def test_chat_template_pin(qwen_tokenizer) -> None:
    card = TaskCard.preset("cluener").with_chat_template(qwen_tokenizer.chat_template)
    check_chat_template(card, qwen_tokenizer)
    drifted = replace(card, chat_template_sha256="0" * 64)
    with pytest.raises(ValueError, match="chat template does not match"):
        check_chat_template(drifted, qwen_tokenizer)


def test_card_round_trip(tmp_path) -> None:
    card = TaskCard(labels=CLUENER, name="x", language="zh", bounds=SchemaBounds(8, 32),
                    chat_template_sha256="ab" * 32, base_model="m", metrics={"dev": {"micro_f1": 0.5}})
    card.save(tmp_path)
    assert TaskCard.load(tmp_path) == card
    (tmp_path / "nerve_task.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid task card"):
        TaskCard.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="no task card"):
        TaskCard.load(tmp_path / "missing")

"""Prompt rendering: one function for tuning and serving, through the tokenizer's chat template."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from nerve.ner.card import SchemaBounds, TaskCard
from nerve.ner.labels import CLUENER
from nerve.ner.prompts import check_chat_template, render_messages, render_prompt, render_training_pair
from nerve.ner.types import Entity


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


def test_v2_prompt_names_labels_and_describes_only_where_given(qwen_tokenizer) -> None:
    from nerve.ner.labels import LabelSet

    labels = LabelSet.from_names(["person", "location", "drug"], {"drug": "medicines and active substances"})
    card = TaskCard(labels=labels, template="nerve-ner-v2")
    system = render_messages(card, "x")[0]["content"]
    assert "person, location, drug (medicines and active substances)" in system
    v1 = render_prompt(qwen_tokenizer, TaskCard.preset("cluener"), "彭小军认为")
    v2 = render_prompt(qwen_tokenizer, replace(TaskCard.preset("cluener"), template="nerve-ner-v2",
                                               labels=LabelSet.from_names(CLUENER.names)), "彭小军认为")
    n1, n2 = (len(qwen_tokenizer.encode(p, add_special_tokens=False)) for p in (v1, v2))
    assert n2 * 4 < n1  # the compact prompt is a fraction of v1's


def test_v2_training_pair_answers_in_pairs_for_the_listed_labels(qwen_tokenizer) -> None:
    from nerve.ner.labels import LabelSet

    card = TaskCard(labels=LabelSet.from_names(CLUENER.names), template="nerve-ner-v2")
    text = "彭小军认为，国内银行现在走的是台湾的发卡模式"
    ents = [Entity.at(text, 0, 3, "name"), Entity.at(text, 15, 17, "address")]
    listed = LabelSet.from_names(["address", "game", "name"])
    pair = render_training_pair(qwen_tokenizer, card, text, ents, listed)
    assert pair.prompt == render_prompt(qwen_tokenizer, card, text, listed)
    assert "address, game, name." in pair.prompt and "company" not in pair.prompt
    assert pair.completion == '[["name","彭小军"],["address","台湾"]]<|im_end|>'
    empty = render_training_pair(qwen_tokenizer, card, text, [], LabelSet.from_names(["game"]))
    assert empty.completion == "[]<|im_end|>"
    with pytest.raises(ValueError, match="not in the prompt's label list"):
        render_training_pair(qwen_tokenizer, card, text, ents, LabelSet.from_names(["game"]))


def test_card_open_labels_round_trip(tmp_path) -> None:
    card = TaskCard(labels=CLUENER, template="nerve-ner-v2", open_labels=True)
    card.save(tmp_path)
    assert TaskCard.load(tmp_path).open_labels is True
    assert TaskCard.from_dict({"labels": ["PER"]}).open_labels is False

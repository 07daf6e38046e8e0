"""Data: prompt masking and end token on rendered examples, the data report, length policy, labels, splits."""

from __future__ import annotations

import pytest

from nerve.ner.card import TaskCard
from nerve.ner.readers import NoEntitiesError
from nerve.ner.types import Entity, Example
from nerve.tuning.config import ConfigError, DataArgs, load_config
from nerve.tuning.data import (
    IGNORE_INDEX,
    Encoded,
    apply_max_length,
    check_encoded,
    encode_causal,
    end_of_turn,
    load_splits,
    percentile,
    report_causal,
    resolve_card,
    restrict_labels,
    split_train_dev,
)
from nerve.tuning.report import data_report
from tests.tuning.conftest import synth_examples, write_jsonl


@pytest.fixture(scope="module")
def tokenizer(chat_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(chat_tokenizer_dir)


CARD = TaskCard.preset("conll2003")
ZH = TaskCard.preset("cluener")


def test_prompt_is_masked_and_completion_ends_with_end_of_turn(tokenizer) -> None:
    examples = synth_examples(5) + [Example("张三在北京工作。", [Entity.at("张三在北京工作。", 0, 2, "PER")])]
    eot = end_of_turn(tokenizer, CARD, [tokenizer.convert_tokens_to_ids("<|im_end|>")])
    assert eot.marker == "<|im_end|>" and eot.append_eos is None
    encoded = encode_causal(tokenizer, CARD, examples, eot)
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    for ex, enc in zip(examples, encoded, strict=True):
        p = enc.prompt_len
        assert enc.labels[:p] == [IGNORE_INDEX] * p
        assert enc.labels[p:] == enc.input_ids[p:]
        assert enc.input_ids[-1] == end_id and enc.labels[-1] == end_id
        answer = tokenizer.decode(enc.input_ids[p:], skip_special_tokens=False)
        assert answer.startswith('{"entities":[') and answer.endswith("]}<|im_end|>")
        for e in ex.entities:
            assert f'"text":"{e.text}"' in answer
        prompt = tokenizer.decode(enc.input_ids[:p], skip_special_tokens=False)
        assert prompt.endswith("<|im_start|>assistant\n") and ex.text in prompt
        # Exactly the ids the server feeds the model for this prompt.
        assert enc.input_ids[:p] == tokenizer(prompt, add_special_tokens=False)["input_ids"]


def test_eos_is_appended_when_the_end_of_turn_is_not_a_generation_eos(tokenizer) -> None:
    import copy

    tok = copy.deepcopy(tokenizer)
    other = "<|endoftext|>" if "<|endoftext|>" in tok.get_vocab() else tok.bos_token
    tok.eos_token = other
    eos_id = tok.convert_tokens_to_ids(other)
    eot = end_of_turn(tok, CARD, [eos_id])
    assert eot.append_eos == eos_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in eot.stop_ids and eos_id in eot.stop_ids
    enc = encode_causal(tok, CARD, synth_examples(2), eot)
    for e in enc:
        assert e.input_ids[-2:] == [tok.convert_tokens_to_ids("<|im_end|>"), eos_id]
        assert e.labels[-1] == eos_id


def test_check_encoded_catches_broken_examples(tokenizer) -> None:
    eot = end_of_turn(tokenizer, CARD)
    good = encode_causal(tokenizer, CARD, synth_examples(1), eot)[0]
    unmasked = Encoded(good.input_ids, [good.input_ids[0], *good.labels[1:]], good.prompt_len)
    with pytest.raises(AssertionError, match="not masked"):
        check_encoded(unmasked, eot)
    cut = Encoded(good.input_ids[:-1], good.labels[:-1], good.prompt_len)
    with pytest.raises(AssertionError, match="end-of-turn"):
        check_encoded(cut, eot)


def test_data_report_lengths_and_max_length(tokenizer, chat_tokenizer_dir) -> None:
    examples = synth_examples(20)
    long_text = "word " * 200 + "Paris"
    examples.append(Example(long_text, [Entity.at(long_text, len(long_text) - 5, len(long_text), "LOC")]))
    eot = end_of_turn(tokenizer, CARD)
    encoded = encode_causal(tokenizer, CARD, examples, eot)
    lengths = sorted(len(e) for e in encoded)
    rep = report_causal("train", examples, encoded, CARD, DataArgs(length_percentile=90))
    assert rep.examples == 21 and rep.entities == sum(len(e.entities) for e in examples)
    assert rep.labels["LOC"] >= 1 and rep.labels["MISC"] == 0 and list(rep.labels)[:4] == CARD.labels.names
    assert rep.lengths.max == lengths[-1] and rep.lengths.p50 == percentile(lengths, 50)
    assert rep.max_length % 16 == 0 and rep.max_length >= percentile(lengths, 90)
    assert rep.overlength == sum(n > rep.max_length for n in lengths) >= 1  # the long one is reported
    assert "max length" in rep.to_markdown()
    # Explicit max length wins.
    assert report_causal("t", examples, encoded, CARD, DataArgs(max_length=100)).max_length == 100
    # The public entry point, on a model folder.
    rep2 = data_report(examples, chat_tokenizer_dir, task="conll2003")
    assert rep2.lengths.max == rep.lengths.max and rep2.unservable["too_many_entities"] == 0


def test_overlength_is_dropped_or_truncated_and_counted(tokenizer) -> None:
    eot = end_of_turn(tokenizer, CARD)
    encoded = encode_causal(tokenizer, CARD, synth_examples(6), eot)
    limit = sorted(len(e) for e in encoded)[2]
    kept, over = apply_max_length(encoded, limit, "drop")
    assert over == sum(len(e) > limit for e in encoded) and len(kept) == len(encoded) - over
    kept, over2 = apply_max_length(encoded, limit, "truncate")
    assert over2 == over and len(kept) == len(encoded) and max(map(len, kept)) <= limit


def test_unservable_answers_are_reported() -> None:
    from nerve.tuning.data import unservable_counts

    text = 'He said "hi" to Bob'
    ex = Example(text, [Entity.at(text, 8, 12, "MISC"), Entity.at(text, 16, 19, "PER")])
    assert unservable_counts([ex], CARD)["entity_needs_escape"] == 1


def test_labels_from_preset_card_list_or_data(tmp_path) -> None:
    train = synth_examples(10)
    assert resolve_card(DataArgs(task="conll2003"), train).labels.names == ["PER", "LOC", "ORG", "MISC"]
    assert resolve_card(DataArgs(labels=["ORG", "PER"]), train).labels.names == ["ORG", "PER"]
    assert resolve_card(DataArgs(), train).labels.names == ["LOC", "ORG", "PER"]
    ZH.save(tmp_path)
    assert resolve_card(DataArgs(task=str(tmp_path)), train).labels.names == ZH.labels.names
    with pytest.raises(ConfigError, match="neither a preset"):
        resolve_card(DataArgs(task="nope"), train)
    with pytest.raises(ConfigError, match="outside the task's label set"):
        restrict_labels(train, ["PER"], "error", "train")
    kept, dropped = restrict_labels(train, ["PER"], "drop", "train")
    assert dropped == sum(e.label != "PER" for ex in train for e in ex.entities)
    assert all(e.label == "PER" for ex in kept for e in ex.entities)


def test_dev_split_is_seeded_and_disjoint() -> None:
    ex = synth_examples(20)
    a_train, a_dev = split_train_dev(ex, 0.2, seed=3)
    b_train, b_dev = split_train_dev(ex, 0.2, seed=3)
    assert [e.id for e in a_dev] == [e.id for e in b_dev] and len(a_dev) == 4
    assert not {e.id for e in a_train} & {e.id for e in a_dev}
    assert split_train_dev(ex, 0.0, seed=3) == (ex, [])


def test_real_datasets_read_and_report(datasets_dir, tokenizer) -> None:
    from nerve.tuning.data import load_examples, subset

    conll = subset(load_examples(datasets_dir / "conll2003" / "eng.testa"), 50, seed=0)
    cluener = subset(load_examples(datasets_dir / "cluener" / "dev.jsonl"), 50, seed=0)
    for examples, card in ((conll, CARD), (cluener, ZH)):
        eot = end_of_turn(tokenizer, card)
        rep = report_causal("dev", examples, encode_causal(tokenizer, card, examples, eot), card, DataArgs())
        assert rep.examples == 50 and rep.lengths.p50 > 0 and set(rep.labels) == set(card.labels.names)


def test_train_or_dev_files_without_entities_are_refused_unless_allowed(tmp_path, chat_tokenizer_dir) -> None:
    labelled = write_jsonl(tmp_path / "train.jsonl", synth_examples(4))
    empty = write_jsonl(tmp_path / "dev.jsonl", [Example(ex.text, id=ex.id) for ex in synth_examples(3)])
    refusal = (f"{empty}: 3 example(s), none with an entity (read as jsonl); unlabelled data must be allowed "
               "explicitly (data.allow_no_entities: true)")
    for args in (DataArgs(train_file=str(empty)), DataArgs(train_file=str(labelled), dev_file=str(empty))):
        with pytest.raises(ConfigError) as info:
            load_splits(args)
        assert str(info.value) == refusal and isinstance(info.value.__cause__, NoEntitiesError)
    cfg = load_config(None, ["--data.train_file", str(labelled), "--data.dev_file", str(empty),
                             "--data.allow_no_entities", "true"])
    train, dev = load_splits(cfg.data)
    assert len(train) == 4 and all(ex.entities for ex in train)
    assert len(dev) == 3 and not any(ex.entities for ex in dev)

    with pytest.raises(NoEntitiesError, match="3 example\\(s\\), none with an entity"):
        data_report(empty, chat_tokenizer_dir, task="conll2003")
    rep = data_report(empty, chat_tokenizer_dir, task="conll2003", allow_empty=True)
    assert rep.examples == 3 and rep.without_entities == 3 and rep.entities == 0


# --- open label sets: sampled label lists and mixtures -----------------------------------------------


def _sampling(**kw) -> DataArgs:
    return DataArgs(label_sampling=True, **kw)


def test_sampled_lists_drop_gold_with_their_label_and_list_absent_labels() -> None:
    import random

    from nerve.tuning.data import sample_label_list

    text = "Alice met Bob in Rome"
    ex = Example(text, [Entity.at(text, 0, 5, "PER"), Entity.at(text, 10, 13, "PER"), Entity.at(text, 17, 21, "LOC")])
    vocab = ("PER", "LOC", "ORG", "MISC")
    seen_absent_only = seen_dropped = seen_full = 0
    for seed in range(300):
        labels, kept = sample_label_list(ex, vocab, random.Random(seed), _sampling(), vocab)
        names = set(labels.names)
        assert names and names <= set(vocab)
        # the answer holds exactly the gold entities whose label is listed
        assert kept.entities == [e for e in ex.entities if e.label in names]
        seen_absent_only += not kept.entities  # e.g. [ORG, MISC]: the right answer is []
        seen_dropped += ("PER" not in names) and ("LOC" in names)
        seen_full += labels.names == list(vocab)
    assert seen_absent_only and seen_dropped and 40 < seen_full < 130  # label_full_list 0.25 of 300


def test_sampled_lists_are_reproducible_and_follow_the_settings() -> None:
    from nerve.tuning.data import sampled_label_lists

    examples = synth_examples(40, seed=3)
    vocabs = [("PER", "LOC", "ORG")] * len(examples)
    a = sampled_label_lists(examples, vocabs, _sampling(), ["PER", "LOC", "ORG"], seed=7)
    b = sampled_label_lists(examples, vocabs, _sampling(), ["PER", "LOC", "ORG"], seed=7)
    assert [x.names for x in a[1]] == [x.names for x in b[1]] and a[0] == b[0]
    never_drop = _sampling(label_drop_present=0.0, label_keep_absent=0.0, label_full_list=0.0)
    kept, lists = sampled_label_lists(examples, vocabs, never_drop, ["PER", "LOC", "ORG"], seed=7)
    for ex, orig, labels in zip(kept, examples, lists, strict=True):
        present = {e.label for e in orig.entities}
        assert set(labels.names) == (present or set(labels.names)) and ex.entities == orig.entities


def test_mixture_renames_labels_and_keeps_each_source_vocabulary(tmp_path) -> None:
    from nerve.tuning.data import load_mixture

    text_en, text_zh = "Alice met Bob in Rome", "叶老桂在浙商银行"
    en = write_jsonl(tmp_path / "en.jsonl", [Example(text_en, [Entity.at(text_en, 0, 5, "PER"),
                                                               Entity.at(text_en, 17, 21, "LOC")])])
    zh = write_jsonl(tmp_path / "zh.jsonl", [Example(text_zh, [Entity.at(text_zh, 0, 3, "name"),
                                                               Entity.at(text_zh, 4, 8, "company")])])
    cfg = load_config(None, ["--data.sources", f"[{{train_file: {en}, dev_file: {en}, rename: [PER=person, "
                             f"LOC=location]}}, {{train_file: {zh}}}]", "--data.label_sampling", "true"])
    mix = load_mixture(cfg.data)
    assert mix.labels == ["location", "person", "company", "name"]
    assert mix.train_vocab == [("location", "person"), ("company", "name")] and mix.dev_vocab == [("location", "person")]
    assert [e.label for e in mix.train[0].entities] == ["person", "location"]
    assert mix.counts[str(en)] == {"train": 1, "dev": 1}
    bad = load_config(None, ["--data.sources", f"[{{train_file: {en}, rename: [PER]}}]"])
    with pytest.raises(ConfigError, match="expected OLD=new"):
        load_mixture(bad.data)
    saved = load_config(None, ["--data.sources", f"[{{train_file: {en}}}]"])
    path = saved.save(tmp_path / "c.yaml")
    assert load_config(path).data.sources[0].train_file == str(en)  # a run's config.yaml reloads

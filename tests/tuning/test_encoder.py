"""Token-classification baseline: CRF, BIO alignment with a real WordPiece tokenizer, training, extraction."""

from __future__ import annotations

import itertools
import json

import pytest
import torch

from nerve.engines.crf import CRF
from nerve.engines.token_tagger import Tagger, bio_tags, decode_word_tags, words_of
from nerve.ner.types import Entity, Example
from nerve.tuning.encoder import TagStats, encode_token_cls, word_tags
from nerve.tuning.run import tune
from tests.tuning.conftest import EXAMPLES, synth_examples, tiny_overrides

TINY = EXAMPLES / "tiny_test.yaml"


# --- CRF -----------------------------------------------------------------------------------------------


def _brute(crf: CRF, em: torch.Tensor, n: int) -> tuple[torch.Tensor, list[int]]:
    """log Z and the best path of one row of length n, by enumerating every tag sequence."""
    scores = {}
    for path in itertools.product(range(crf.num_tags), repeat=n):
        s = crf.start_transitions[path[0]] + em[0, path[0]] + crf.end_transitions[path[-1]]
        for t in range(1, n):
            s = s + crf.transitions[path[t - 1], path[t]] + em[t, path[t]]
        scores[path] = s
    stacked = torch.stack(list(scores.values()))
    return torch.logsumexp(stacked, 0), list(max(scores, key=lambda p: scores[p]))


def test_crf_matches_brute_force() -> None:
    torch.manual_seed(0)
    crf = CRF(3)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    em = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    tags = torch.tensor([[0, 2, 1, 1], [2, 0, 0, 0]])
    nll = crf(em, tags, mask, reduction="none")
    paths = crf.decode(em, mask)
    for i, n in enumerate([4, 2]):
        log_z, best = _brute(crf, em[i], n)
        gold = crf.score(em[i: i + 1, :n], tags[i: i + 1, :n], mask[i: i + 1, :n])[0]
        torch.testing.assert_close(nll[i], log_z - gold)
        assert paths[i] == best
    with pytest.raises(ValueError, match="left-aligned"):
        crf(em, tags, torch.tensor([[0, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool))


def test_crf_nll_is_differentiable_and_decreases() -> None:
    torch.manual_seed(0)
    crf = CRF(5)
    em = torch.randn(3, 6, 5, requires_grad=True)
    tags = torch.randint(0, 5, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    opt = torch.optim.SGD([em, *crf.parameters()], lr=0.5)
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = crf(em, tags, mask)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 2
    assert crf.decode(em, mask) == tags.tolist()


# --- alignment -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wordpiece(minilm_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir)


def test_bio_tags_round_trip_to_character_offsets(wordpiece) -> None:
    text = "Peter Blackburn visited the U.S.-based Zwingmann Gmbh in São Paulo ."
    ents = [Entity.at(text, 0, 15, "PER"), Entity.at(text, 28, 32, "LOC"), Entity.at(text, 39, 53, "ORG"),
            Entity.at(text, 57, 66, "LOC")]
    assert [e.text for e in ents] == ["Peter Blackburn", "U.S.", "Zwingmann Gmbh", "São Paulo"]
    enc = wordpiece([text], return_offsets_mapping=True)
    words = words_of(enc[0])
    stats = TagStats()
    tags = word_tags(words, ents, stats)
    assert stats.unaligned == 0 and stats.overlapping == 0
    assert decode_word_tags(text, words, tags) == ents
    # Only the first sub-token of a word is labelled.
    tag_list = bio_tags(["PER", "LOC", "ORG"])
    feat = encode_token_cls(wordpiece, [Example(text, ents)], tag_list, 128)[0]
    labelled = [i for i, lab in enumerate(feat["labels"]) if lab != -100]
    assert labelled == [i for i, m in enumerate(feat["word_mask"]) if m] == words.first_token
    assert len(feat["input_ids"]) > len(labelled)  # "blackburn", "zwingmann" split into sub-tokens
    assert [tag_list[feat["labels"][i]] for i in labelled] == tags


def test_untaggable_entities_are_counted(wordpiece) -> None:
    text = "Bankof America and Banks"
    ents = [Entity.at(text, 0, 4, "ORG"), Entity.at(text, 0, 14, "ORG"), Entity.at(text, 19, 23, "ORG")]
    enc = wordpiece([text], return_offsets_mapping=True)
    stats = TagStats()
    tags = word_tags(words_of(enc[0]), ents, stats)
    assert stats.overlapping == 1 and stats.unaligned == 1  # "Bank" inside "Bankof America"; "Bank" in "Banks"
    assert tags.count("B-ORG") == 1


# --- training and extraction ---------------------------------------------------------------------------


def _tokencls(model_dir, files, out, *extra):
    return tune(TINY, tiny_overrides(model_dir, files, out, "--method.name", "token-cls", "--train.max_steps", "2",
                                     "--train.eval_steps", "0", "--train.save_steps", "2",
                                     "--train.learning_rate", "1e-3", *extra))


@pytest.mark.parametrize("variant", [["--method.crf", "true"], ["--method.token_cls_lora", "true",
                                                                 "--method.lora_r", "4"]],
                         ids=["crf", "lora"])
def test_token_cls_variants_train_and_extract(tiny_bert_dir, synth_files, tmp_path, variant) -> None:
    run = _tokencls(tiny_bert_dir, synth_files, tmp_path / "run", *variant)
    record = json.loads((run / "nerve_run.json").read_text())
    assert record["kind"] == "token-cls" and record["global_step"] == 2
    assert 0.0 <= record["metrics"]["dev"]["micro_f1"] <= 1.0  # scored in-process at the end
    meta = json.loads((run / "final" / "nerve_encoder.json").read_text())
    assert meta["crf"] is ("--method.crf" in variant)
    assert not (run / "final" / "adapter_config.json").exists()  # LoRA is merged into a plain folder
    extractor = Tagger(run / "final")
    texts = [ex.text for ex in synth_examples(4, seed=9)] + ["word " * 300]  # the last needs two windows
    for text, ents in zip(texts, extractor.extract(texts), strict=True):
        for e in ents:  # Entity validates text == text[start:end]; labels come from the task
            assert text[e.start:e.end] == e.text and e.label in {"PER", "LOC", "ORG", "MISC"}


def test_token_cls_learns_entities_with_exact_offsets(tiny_bert_dir, tmp_path) -> None:
    """Overfit a tiny tagger on a few sentences: it must give back their entities at the exact offsets."""
    from nerve.tuning.export import export_checkpoint
    from tests.tuning.conftest import overfit_tagger

    examples = synth_examples(5, seed=4)
    run = overfit_tagger(tiny_bert_dir, examples, tmp_path)
    extractor = Tagger(run / "final")
    preds = extractor.extract([ex.text for ex in examples])
    assert preds == [ex.entities for ex in examples]
    assert json.loads((run / "nerve_run.json").read_text())["metrics"]["dev"]["micro_f1"] == 1.0
    out = export_checkpoint(run, tmp_path / "export", progress=False)
    from nerve.ner.card import TaskCard

    card = TaskCard.load(out)
    assert card.metrics["kind"] == "token-cls" and card.metrics["crf"] is True
    assert card.metrics["dev"]["micro_f1"] == 1.0 and card.chat_template_sha256 is None
    assert Tagger(out).extract([examples[0].text]) == [examples[0].entities]

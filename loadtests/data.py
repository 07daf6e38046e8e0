"""Texts and labelled examples for the load: sampled from the real datasets, or a small built-in set.

The datasets are read from ``$NERVE_DATASETS`` or ``../shared/datasets`` beside the repository (CLUENER dev
for Chinese, CoNLL-2003 testb for English) with nerve's own readers; they are never copied into the repo.
When they (or the ``ner`` package) are missing, a built-in sample keeps the load test runnable.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DATASETS = {
    # language: (task, path under the datasets folder)
    "zh": ("cluener", "cluener/dev.jsonl"),
    "en": ("conll2003", "conll2003/eng.testb"),
}


@dataclass(frozen=True)
class Sample:
    """A text with its gold entities as (label, start, end), code point offsets."""

    text: str
    entities: tuple[tuple[str, int, int], ...] = ()
    id: str = ""


@dataclass
class Corpus:
    by_language: dict[str, list[Sample]] = field(default_factory=dict)
    source: str = "built-in"

    def pick(self, language: str | None) -> list[Sample]:
        """Samples of ``language`` ("zh"/"en"), or all of them for another or unknown language."""
        if language in self.by_language and self.by_language[language]:
            return self.by_language[language]
        return [s for samples in self.by_language.values() for s in samples]


def _builtin() -> dict[str, list[Sample]]:
    def s(text: str, *spans: tuple[str, str]) -> Sample:
        ents = []
        for label, surface in spans:
            start = text.index(surface)
            ents.append((label, start, start + len(surface)))
        return Sample(text, tuple(ents))

    return {
        "en": [
            s("EU rejects German call to boycott British lamb .", ("ORG", "EU"), ("MISC", "German"), ("MISC", "British")),
            s("Peter Blackburn visited Brussels on Monday .", ("PER", "Peter Blackburn"), ("LOC", "Brussels")),
            s("Japan began the defence of their Asian Cup title with a win over Syria .", ("LOC", "Japan"),
              ("MISC", "Asian Cup"), ("LOC", "Syria")),
            s("Angela Merkel met executives of Siemens in Munich .", ("PER", "Angela Merkel"), ("ORG", "Siemens"),
              ("LOC", "Munich")),
            s("Reuters reported that the United Nations will meet in Geneva .", ("ORG", "Reuters"),
              ("ORG", "United Nations"), ("LOC", "Geneva")),
            s("Shares of Microsoft rose 2 percent on Wall Street .", ("ORG", "Microsoft"), ("LOC", "Wall Street")),
            s("The match ended 1-1 .", ),
        ],
        "zh": [
            s("浙商银行企业信贷部叶老桂博士则从另一个角度对五道门槛进行了解读。", ("company", "浙商银行"), ("name", "叶老桂")),
            s("生生不息CSOL生化狂潮让你填弹狂扫", ("game", "CSOL")),
            s("那不勒斯vs锡耶纳以及桑普vs热那亚之上呢？", ("organization", "那不勒斯"), ("organization", "锡耶纳"),
              ("organization", "桑普"), ("organization", "热那亚")),
            s("北京市海淀区的清华大学今天举办了开放日活动。", ("address", "北京市海淀区"), ("organization", "清华大学")),
            s("王小明在腾讯公司担任产品经理。", ("name", "王小明"), ("company", "腾讯公司"), ("position", "产品经理")),
        ],
    }


def datasets_dir(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    for candidate in (explicit, os.environ.get("NERVE_DATASETS"), REPO_ROOT.parent / "shared" / "datasets"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def load_corpus(root: str | os.PathLike[str] | None = None, per_language: int = 500, seed: int = 0,
                max_chars: int = 4000) -> Corpus:
    """Up to ``per_language`` samples of each dataset (a seeded random sample), texts of at most ``max_chars``."""
    folder = datasets_dir(root)
    corpus = Corpus()
    found: list[str] = []
    if folder is not None:
        try:
            from nerve.ner.readers import read_dataset
        except ImportError:  # running outside the repository's environment
            read_dataset = None
        for language, (_task, rel) in DATASETS.items():
            path = folder / rel
            if read_dataset is None or not path.is_file():
                continue
                    # Only the texts are sent: a split without gold entities serves as well.
            examples = [e for e in read_dataset(path, allow_empty=True) if e.text.strip() and len(e.text) <= max_chars]
            rng = random.Random(seed)
            chosen = rng.sample(examples, min(per_language, len(examples)))
            corpus.by_language[language] = [
                Sample(e.text, tuple((x.label, x.start, x.end) for x in e.entities), e.id or "") for e in chosen]
            found.append(str(path))
    builtin = _builtin()
    for language, samples in builtin.items():
        corpus.by_language.setdefault(language, samples)
    corpus.source = ", ".join(found) if found else "built-in sample (datasets not found)"
    return corpus

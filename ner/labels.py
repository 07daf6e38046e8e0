"""Label sets: the entity types a task extracts, each with a short description used in prompts."""

from __future__ import annotations

import re
from dataclasses import dataclass

_LABEL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


@dataclass(frozen=True, slots=True)
class Label:
    name: str
    description: str = ""

    def __post_init__(self) -> None:
        if not _LABEL_RE.match(self.name):
            raise ValueError(
                f"invalid label name {self.name!r}: use 1-64 characters, a letter first, then letters,"
                " digits, '_', '-' or '.'"
            )


@dataclass(frozen=True, slots=True)
class LabelSet:
    """An ordered, duplicate-free set of labels."""

    labels: tuple[Label, ...]

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("a label set needs at least one label")
        names = [lab.name for lab in self.labels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate labels: {', '.join(dupes)}")

    @property
    def names(self) -> list[str]:
        return [lab.name for lab in self.labels]

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self):
        return iter(self.labels)

    def subset(self, names: list[str] | tuple[str, ...]) -> LabelSet:
        """The labels named, in this set's order; unknown names raise ``ValueError``."""
        unknown = [n for n in names if n not in self]
        if unknown:
            raise ValueError(f"unknown labels {unknown}; this task knows {self.names}")
        wanted = set(names)
        return LabelSet(tuple(lab for lab in self.labels if lab.name in wanted))

    @classmethod
    def from_names(cls, names: list[str], descriptions: dict[str, str] | None = None) -> LabelSet:
        descriptions = descriptions or {}
        return cls(tuple(Label(n, descriptions.get(n, "")) for n in names))

    def to_list(self) -> list[dict]:
        return [{"name": lab.name, "description": lab.description} for lab in self.labels]

    @classmethod
    def from_list(cls, items: list[dict | str]) -> LabelSet:
        return cls(
            tuple(Label(i) if isinstance(i, str) else Label(i["name"], i.get("description", "")) for i in items)
        )


CLUENER = LabelSet(
    (
        Label("address", "地址：省、市、区、街道、门牌等地点"),
        Label("book", "书名：小说、杂志、教材、书籍等"),
        Label("company", "公司：企业、银行、公司名称"),
        Label("game", "游戏：电子游戏、网络游戏名称"),
        Label("government", "政府机构：政府部门、法院、议会等"),
        Label("movie", "影视：电影、电视剧、纪录片名称"),
        Label("name", "人名：真实或虚构人物的姓名"),
        Label("organization", "组织机构：球队、学校、协会、乐队等"),
        Label("position", "职位：职务、头衔，如总经理、教授"),
        Label("scene", "景点：旅游景点、公园、山川、名胜"),
    )
)

CONLL2003 = LabelSet(
    (
        Label("PER", "person names"),
        Label("LOC", "locations: countries, cities, regions, geographic features"),
        Label("ORG", "organizations: companies, teams, institutions, agencies"),
        Label("MISC", "other names: nationalities, events, titles, products, languages"),
    )
)

PRESETS: dict[str, LabelSet] = {"cluener": CLUENER, "conll2003": CONLL2003}

CONLL2003_WORDS = {"PER": "person", "LOC": "location", "ORG": "organization", "MISC": "miscellaneous"}
"""CoNLL-2003's tags as plain words: how nerve's tuned default names them (it was tuned with these names)."""

"""Typed settings from layers: defaults < YAML file < environment < command-line flags.

One loader serves ``nerve serve`` (:class:`nerve.service.config.ServeConfig`, flat, with one nested ``engine``) and
``nerve tune`` (:class:`nerve.tuning.config.TuneConfig`, one mapping per section). A settings class is a dataclass
whose fields may themselves be dataclasses; each layer is a mapping of the same shape, merged key by key over
the layers before it, and the result is built and type-checked once:

* the YAML file: a mapping; an error names the file (and the line, for a syntax error);
* the environment: ``PREFIX_FIELD`` for a field, ``PREFIX_SECTION_FIELD`` for a field of a nested dataclass
  (``NERVE_MAX_QUEUE``, ``NERVE_ENGINE_DTYPE``, ``NERVE_TUNE_TRAIN_MAX_STEPS``);
* flags: a mapping (typer options) or ``--section.field value`` / ``--section.field=value`` words.

Values from the environment and from flags are text, read by the field's type (``true``/``false``, integers,
numbers, comma-separated or ``[a, b]`` lists); YAML values keep their YAML type. Unknown fields are errors that
name the closest known one.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A setting, config file or override is invalid."""


def setting(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with a help string (``default`` may be a list or dict: it is copied per instance).
    ``choices=(...)`` in ``metadata`` restricts the values."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **metadata})
    return field(default=default, metadata={"help": help, **metadata})


class Text(str):
    """A value typed as text (environment, command line): read according to the field's type, not as YAML."""


# --- layers --------------------------------------------------------------------------------------------


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file; errors name the file, and the line of a syntax error."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such config file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{line}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of settings, got {type(data).__name__}")
    return data


def from_environment(klass: type, prefix: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The settings of ``klass`` that the environment sets: ``{prefix}{FIELD}``, and for a nested dataclass
    field ``{prefix}{FIELD}_{SUBFIELD}``."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(klass)
    for f in fields(klass):
        tp = hints[f.name]
        if is_dataclass(tp):
            nested = from_environment(tp, f"{prefix}{f.name.upper()}_", environ)
            if nested:
                out[f.name] = nested
        elif (value := environ.get(f"{prefix}{f.name.upper()}")) is not None:
            out[f.name] = Text(value)
    return out


def parse_flags(words: Sequence[str], *, sections: bool = False) -> dict[str, Any]:
    """``["--a.b", "1", "--c.d=x", "--e", "2"]`` -> ``{"a": {"b": "1"}, "c": {"d": "x"}, "e": "2"}`` (values as
    :class:`Text`). With ``sections``, every flag must name a section and a field (``--section.field``)."""
    out: dict[str, Any] = {}
    items = list(words)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or len(item) < 3:
            raise ConfigError(f"override {item!r}: expected --section.field VALUE or --section.field=VALUE")
        key = item[2:]
        if "=" in key:
            key, value = key.split("=", 1)
        else:
            if i + 1 >= len(items):
                raise ConfigError(f"override --{key}: missing value")
            value = items[i + 1]
            i += 1
        *path, name = key.replace("-", "_").split(".")
        if (sections and not path) or not all(path) or not name:
            raise ConfigError(f"override --{key}: expected --section.field VALUE")
        node = out
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override --{key}: {part} is set both as a value and as a section")
        node[name] = Text(value)
        i += 1
    return out


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """The layers merged left to right: a later value wins; mappings merge key by key."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
                out[key] = merge(out[key], value)
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out


def load(klass: type, *, path: str | Path | None = None, env_prefix: str | None = None,
         environ: Mapping[str, str] | None = None, flags: Mapping[str, Any] | Sequence[str] = ()) -> Any:
    """A ``klass`` from its defaults, the YAML file at ``path``, the environment (variables starting with
    ``env_prefix``; None: not read) and ``flags`` (a mapping, or ``--section.field`` words)."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if path is not None:
        layers.append((str(path), read_yaml(path)))
    if env_prefix is not None:
        layers.append(("environment", from_environment(klass, env_prefix, os.environ if environ is None else environ)))
    layers.append(("flags", parse_flags(flags) if not isinstance(flags, Mapping) else
                   {k: v for k, v in flags.items() if v is not None}))
    for where, layer in layers:
        check(klass, layer, where)  # an error names the layer it is in
    return build(klass, merge(*(layer for _, layer in layers)), str(path) if path is not None else "settings")


# --- building ------------------------------------------------------------------------------------------


def suggest(name: str, options: Sequence[str] | Mapping[str, Any]) -> str:
    """`` (did you mean 'x'?)`` for the closest option, or the list of options."""
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(options)})"


def build(klass: type, values: Mapping[str, Any], where: str) -> Any:
    """A ``klass`` from a mapping of its fields (missing ones keep their defaults), every value checked."""
    return klass(**_checked(klass, values, where, make=True))


def check(klass: type, values: Mapping[str, Any], where: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` if ``values`` (one layer, possibly partial) has an unknown
    setting or a value of the wrong type; nothing is constructed, so checks across settings wait for
    :func:`build`."""
    _checked(klass, values, where, make=False)


def _checked(klass: type, values: Mapping[str, Any], where: str, *, make: bool) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping with the fields of {klass.__name__}, got {values!r}")
    hints = typing.get_type_hints(klass)
    known = {f.name: f for f in fields(klass)}
    noun = "section" if all(is_dataclass(hints[n]) for n in known) else "setting"
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key not in known:
            raise ConfigError(f"{where}: unknown {noun} {key!r}{suggest(key, known)}")
        tp = hints[key]
        if is_dataclass(tp):
            value = {} if value is None else value  # an empty section in YAML
            if isinstance(value, tp):
                kwargs[key] = value
            elif not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {noun} {key!r} must be a mapping, got {value!r}")
            else:
                kwargs[key] = _checked(tp, value, f"{where}: {key}", make=make)
                if make:
                    kwargs[key] = tp(**kwargs[key])
            continue
        if value == "" and known[key].metadata.get("keep_empty"):
            kwargs[key] = ""
            continue
        try:
            value = coerce(value, tp)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.{key}: {exc}") from None
        choices = known[key].metadata.get("choices")
        if choices is not None and value is not None and value not in choices:
            raise ConfigError(f"{where}.{key}: {value!r} is not one of {', '.join(map(str, choices))}")
        kwargs[key] = value
    return kwargs


_NONE_WORDS = {"", "null", "none", "~", "auto"}


def coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (bool, int, float, str, a list of these, a dataclass, ``X | None`` of these).

    For an optional field, the empty string, ``null``, ``none``, ``~`` and (except for text) ``auto`` mean None.
    A field whose metadata has ``keep_empty=True`` keeps an empty string instead, so that a check can refuse
    it (an empty secret is a mistake, not an absent one).
    """
    if is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, tp.__name__)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        word = value.strip().lower() if isinstance(value, str) else None
        if value is None or (word in _NONE_WORDS and not (args == [str] and word == "auto")):
            return None
        return coerce(value, args[0])
    if origin is list:
        (item_type,) = typing.get_args(tp)
        if isinstance(value, Text):
            parsed = yaml.safe_load(value) if value.strip().startswith("[") else None
            value = parsed if isinstance(parsed, list) else [v.strip() for v in value.split(",") if v.strip()]
        elif isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {value!r}")
        return [coerce(v, item_type) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in {"true", "yes", "on", "1"}:
            return True
        if isinstance(value, str) and value.strip().lower() in {"false", "no", "off", "0"}:
            return False
        raise TypeError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise TypeError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        raise TypeError(f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise TypeError(f"expected a number, got {value!r}")
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise TypeError(f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, bool | int | float):
            return str(value).lower() if isinstance(value, bool) else str(value)
        if not isinstance(value, str):
            raise TypeError(f"expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported field type {tp!r}")


# --- help ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldHelp:
    flag: str
    type: str
    default: Any
    help: str


def field_help(klass: type, prefix: str = "") -> list[FieldHelp]:
    """Every setting of ``klass`` (nested dataclasses flattened as ``--section.field``) with its type,
    default and help."""
    out: list[FieldHelp] = []
    hints = typing.get_type_hints(klass)
    for f in fields(klass):
        tp = hints[f.name]
        if is_dataclass(tp):
            out += field_help(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        out.append(FieldHelp(f"--{prefix}{f.name}", type_name(tp), default, f.metadata.get("help", "")))
    return out


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return type_name(args[0]) + "?"
    if origin is list:
        return f"list[{type_name(typing.get_args(tp)[0])}]"
    return getattr(tp, "__name__", str(tp))


def help_markdown(klass: type) -> str:
    """A Markdown table of every setting of ``klass``."""
    lines = ["| flag | type | default | help |", "|---|---|---|---|"]
    for h in field_help(klass):
        default = "" if h.default is None else h.default
        lines.append(f"| `{h.flag}` | {h.type} | `{default}` | {h.help} |")
    return "\n".join(lines) + "\n"

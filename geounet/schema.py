"""One config schema mechanism for every command: dataclasses describe the keys, :func:`load` checks them.

A config section is a dataclass; its fields' type hints are the schema: ``int``,
``float``, ``bool``, ``str``, ``Path`` (relative paths resolved against the config
file's folder), ``Literal[...]`` (a fixed set of choices), ``list[X]``,
``dict[str, X]``, nested dataclasses, and unions of these (``X | None``, tried in
order). :func:`check` walks raw YAML values through such a dataclass and collects
every problem at once: unknown keys with a did-you-mean hint, wrong types, bad
choices and missing keys, each as one line that names the dotted key. Checks that
types cannot express stay with each config (``validate`` functions), and report into
the same list, so a user sees everything wrong with a file in one run.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from geounet.errors import GeounetError

T = TypeVar("T")

_TYPE_NAMES = {
    str: "text",
    int: "an integer",
    float: "a number",
    bool: "true/false",
    list: "a list",
    dict: "a mapping",
    type(None): "null",
    Path: "a path",
}


class ConfigError(GeounetError):
    """A config with one or more problems (all of them: one line each from :meth:`lines`)."""

    def __init__(self, path: str | Path | None, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(path, "; ".join(self.problems))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.path, self.problems))

    def lines(self) -> list[str]:
        """``<file>: <problem>`` for each problem."""
        return [f"{self.path}: {p}" if self.path else p for p in self.problems]


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping (empty file: ``{}``); a one-problem :class:`ConfigError` otherwise."""
    import yaml

    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(path, ["config file not found"]) from None
    except IsADirectoryError:
        raise ConfigError(path, ["is a folder, not a config file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read config ({exc})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(path, [f"not valid YAML ({str(exc).splitlines()[0]}{where})"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(path, [f"expected a mapping of settings at the top level, got {type(raw).__name__}"])
    return raw


def apply_setting(raw: dict[str, Any], item: str, option: str = "--set", example: str = "train.lr=0.001") -> str | None:
    """Merge one ``dotted.key=VALUE`` (VALUE read as YAML) into ``raw``; returns the problem, if any.

    ``option``, ``example``: the command-line option the setting came from, and a setting it
    takes, for the messages.
    """
    import yaml

    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        return f"{option} expects KEY=VALUE with a dotted KEY such as {example}, got {item!r}"
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return f"{option} {key}: value {text!r} is not valid YAML"
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            return f"{option} {key}: {'.'.join(parts[: i + 1])} is not a section"
        node = child
    node[parts[-1]] = value
    return None


def unknown_keys(raw: dict[str, Any], known: list[str], where: str) -> list[str]:
    """One problem per key of ``raw`` not in ``known``: the closest known key, else the known ones."""
    problems = []
    for key in raw:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(known))}"
        problems.append(f"{where}: unknown key {key!r} ({hint})" if where else f"unknown key {key!r} ({hint})")
    return problems


def choice_problem(where: str, value: Any, choices: Sequence[str], more: str = "") -> str | None:
    """The problem of ``value`` where it must be one of ``choices`` (None: it is one), worded as a ``Literal``'s.

    ``where``: the dotted key (or option) in the message; ``more``: other values that are
    also accepted, in words (``" or tu-<timm model>"``). A close match is offered.
    """
    if isinstance(value, str) and value in choices:
        return None
    close = difflib.get_close_matches(value, list(choices), n=1) if isinstance(value, str) else []
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: expected one of {', '.join(choices)}{more}, {_got(value)}{hint}"


def config_fields(cls: type) -> list[dataclasses.Field[Any]]:
    """The fields of a config dataclass that are YAML keys (``init=True``)."""
    return [f for f in dataclasses.fields(cls) if f.init]


def check(cls: type[T], raw: Any, where: str = "", base: Path | None = None) -> tuple[T | None, list[str]]:
    """``raw`` (parsed YAML) checked against the dataclass ``cls``: ``(instance or None, problems)``.

    ``where``: the dotted name of this section in messages (``""`` at the top).
    ``base``: the folder relative ``Path`` values are resolved against (default: as given).
    The instance is None when the section has any problem.
    """
    problems: list[str] = []
    value = _convert(cls, raw, where, base, problems)
    return (value if not problems else None), problems


def check_fields(cls: type, raw: Any, where: str = "", base: Path | None = None) -> tuple[dict[str, Any], list[str]]:
    """A raw mapping checked against the config dataclass ``cls`` one field at a time.

    Returns ``(values, problems)``: the converted values of the fields present and right
    (nested sections checked the same way, their wrong fields keeping their defaults), and
    every problem (unknown keys, missing required keys, wrong types). Value rules can then
    run on what was right, so a user sees everything wrong with a file at once.
    """
    if not isinstance(raw, dict):
        return {}, [f"{where or 'config'}: expected a mapping, {_got(raw)}"]
    hints = typing.get_type_hints(cls)
    problems = unknown_keys(raw, [f.name for f in config_fields(cls)], where)
    good: dict[str, Any] = {}
    for f in config_fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{key}: missing")
            continue
        value, found = check_leniently(hints[f.name], raw[f.name], key, base)
        problems += found
        if value is not None or not found:  # None with problems: wrong, the default stays
            good[f.name] = value
    return good, problems


def check_leniently(tp: Any, raw: Any, where: str = "", base: Path | None = None) -> tuple[Any, list[str]]:
    """As :func:`check`, but a mapping for a dataclass is checked field by field (:func:`check_fields`).

    The fields with problems keep their defaults; the value is None when a required field
    is missing or wrong. ``where``: the dotted key in messages.
    """
    cls = _dataclass_for(tp, raw)
    if cls is None:
        return check(tp, raw, where, base)
    good, problems = check_fields(cls, raw, where, base)
    try:
        return cls(**good), problems
    except TypeError:  # a required field missing or wrong (reported above)
        return None, problems


def _dataclass_for(tp: Any, raw: Any) -> type | None:
    """The dataclass a mapping ``raw`` is checked against under the hint ``tp`` (itself or its one union member)."""
    if not isinstance(raw, dict):
        return None
    options = typing.get_args(tp) if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union else (tp,)
    classes = [o for o in options if dataclasses.is_dataclass(o) and isinstance(o, type)]
    return classes[0] if len(classes) == 1 else None


def load(cls: type[T], raw: Any, path: str | Path | None = None, base: Path | None = None) -> T:
    """As :func:`check`, raising one :class:`ConfigError` (naming ``path``) that lists every problem."""
    value, problems = check(cls, raw, "", base)
    if problems:
        raise ConfigError(path, problems)
    assert value is not None
    return value


def describe_type(tp: Any) -> str:
    """A type hint in a user's words (``an integer or null``)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return _TYPE_NAMES.get(origin or tp, getattr(tp, "__name__", str(tp)))


def _got(value: Any) -> str:
    return f"got {type(value).__name__} {value!r}"


def _build(cls: type, raw: Any, where: str, base: Path | None, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{where or 'config'}: expected a mapping, {_got(raw)}")
        return None
    fields = config_fields(cls)
    problems += unknown_keys(raw, [f.name for f in fields], where)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    before = len(problems)
    for f in fields:
        name = f"{where}.{f.name}" if where else f.name
        if f.name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"{name}: missing")
            continue
        kwargs[f.name] = _convert(hints[f.name], raw[f.name], name, base, problems)
    if len(problems) > before:
        return None
    return cls(**kwargs)


def _convert(tp: Any, value: Any, name: str, base: Path | None, problems: list[str]) -> Any:
    """One YAML value checked and converted to the hinted type; problems appended to ``problems``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for option in options:  # the first that takes the value without a problem
            trial: list[str] = []
            out = _convert(option, value, name, base, trial)
            if not trial:
                return out
        scalar = all(typing.get_origin(o) is None and not dataclasses.is_dataclass(o) for o in options)
        if not scalar and (
            len(options) == 1 or (isinstance(value, dict) and any(dataclasses.is_dataclass(o) for o in options))
        ):
            target = next((o for o in options if dataclasses.is_dataclass(o) and isinstance(value, dict)), options[0])
            return _convert(target, value, name, base, problems)  # its own, precise problems
        problems.append(f"{name}: expected {describe_type(tp)}, {_got(value)}")
        return None
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, name, base, problems)  # type: ignore[arg-type]
    if origin is Literal:
        if value not in args or isinstance(value, bool) != any(isinstance(a, bool) for a in args):
            problems.append(f"{name}: expected {describe_type(tp)}, {_got(value)}")
            return None
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{name}: expected a list, {_got(value)}")
            return None
        return [_convert(args[0], v, f"{name}[{i}]", base, problems) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{name}: expected a mapping, {_got(value)}")
            return None
        return {str(k): _convert(args[1], v, f"{name}.{k}", base, problems) for k, v in value.items()}
    return _scalar(tp, value, name, base, problems)


URL_SCHEMES = ("http://", "https://", "s3://")  # as geounet.io.remote: values of Path fields kept as strings


def _scalar(tp: Any, value: Any, name: str, base: Path | None, problems: list[str]) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
        Path: isinstance(value, str) and bool(value),
    }.get(tp)
    if ok is None:  # a type this mechanism does not know: taken as it is
        return value
    if not ok:
        problems.append(f"{name}: expected {describe_type(tp)}, {_got(value)}")
        return None
    if tp is float:
        return float(value)
    if tp is Path:
        if value.lower().startswith(URL_SCHEMES) or value.startswith("/vsi"):
            return value  # a URL or GDAL /vsi path stays the string given (Path would fold "//")
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() or base is None else Path(os.path.normpath(base / p))
    return value

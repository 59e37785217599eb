"""The one config mechanism: every problem at once, did-you-mean, types, choices, paths."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from geounet.schema import ConfigError, apply_setting, check, load, read_yaml


@dataclass
class Inner:
    size: int = 4
    name: str | None = None


@dataclass
class Outer:
    path: Path
    mode: Literal["fast", "exact"] = "fast"
    ratio: float = 0.5
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    items: list[Inner] = field(default_factory=list)
    either: bool | Inner = True


def test_valid_config_builds_with_paths_resolved_and_ints_as_floats(tmp_path):
    cfg = load(
        Outer,
        {"path": "a/b.tif", "ratio": 1, "inner": {"size": 8}, "items": [{"name": "x"}], "either": {"size": 2}},
        base=tmp_path,
    )
    assert cfg.path == tmp_path / "a" / "b.tif" and cfg.ratio == 1.0 and isinstance(cfg.ratio, float)
    assert cfg.inner == Inner(8) and cfg.items == [Inner(4, "x")] and cfg.either == Inner(2)
    assert load(Outer, {"path": "/abs.tif", "either": False}).either is False


def test_every_problem_is_reported_at_once_with_did_you_mean():
    value, problems = check(
        Outer,
        {
            "pth": "x",
            "mode": "slow",
            "ratio": "half",
            "flag": 1,
            "inner": {"sise": 3, "size": True},
            "items": [{"nme": 1}],
            "either": 3,
        },
    )
    assert value is None
    assert "unknown key 'pth' (did you mean 'path'?)" in problems
    assert "path: missing" in problems
    assert "mode: expected one of fast, exact, got str 'slow'" in problems
    assert "ratio: expected a number, got str 'half'" in problems
    assert "flag: expected true/false, got int 1" in problems
    assert "inner: unknown key 'sise' (did you mean 'size'?)" in problems
    assert "inner.size: expected an integer, got bool True" in problems
    assert "items[0]: unknown key 'nme' (did you mean 'name'?)" in problems
    assert "either: expected true/false or a mapping, got int 3" in problems
    assert len(problems) == 9


def test_load_raises_one_error_listing_all(tmp_path):
    with pytest.raises(ConfigError) as err:
        load(Outer, {"mode": "slow"}, path=tmp_path / "c.yaml")
    assert err.value.lines() == [
        f"{tmp_path / 'c.yaml'}: path: missing",
        f"{tmp_path / 'c.yaml'}: mode: expected one of fast, exact, got str 'slow'",
    ]


def test_read_yaml_problems_are_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    for path, text in (
        (tmp_path / "none.yaml", "config file not found"),
        (bad, "not valid YAML"),
        (tmp_path, "folder"),
    ):
        with pytest.raises(ConfigError, match=text) as err:
            read_yaml(path)
        assert "\n" not in str(err.value)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        read_yaml(tmp_path / "list.yaml")


def test_apply_setting_merges_dotted_yaml_values():
    raw: dict = {"inner": {"size": 1}}
    assert apply_setting(raw, "inner.size=3") is None and raw["inner"]["size"] == 3
    assert apply_setting(raw, "items=[{name: a}]") is None and raw["items"] == [{"name": "a"}]
    assert "KEY=VALUE" in (apply_setting(raw, "nothing") or "")
    assert "not a section" in (apply_setting(raw, "inner.size.x=1") or "")


def test_lenient_check_keeps_defaults_for_wrong_fields_and_reports_everything():
    from geounet.schema import check_leniently

    value, problems = check_leniently(Outer, {"path": "x", "ratio": "half", "inner": {"size": "big", "name": "n"}})
    assert value is not None and value.ratio == 0.5 and value.inner == Inner(4, "n")  # wrong fields kept defaults
    assert problems == ["ratio: expected a number, got str 'half'", "inner.size: expected an integer, got str 'big'"]
    value, problems = check_leniently(Outer, {"mode": "fast"})
    assert value is None and problems == ["path: missing"]

"""The damage: section, checked through geounet.schema: every problem at once, one line each."""

from __future__ import annotations

import pytest

from geounet.damage.settings import DamageSettings
from geounet.errors import GeounetError
from geounet.schema import ConfigError


def test_settings_from_a_config_section():
    s = DamageSettings.from_dict({"thresholds": [0.2, 0.4, 0.6], "block": 512})
    assert s.thresholds == [0.2, 0.4, 0.6] and s.block == 512
    with pytest.raises(GeounetError, match="unknown"):
        DamageSettings.from_dict({"treshold": 1})
    with pytest.raises(GeounetError, match="thresholds"):
        DamageSettings.from_dict({"thresholds": [0.7, 0.5, 0.3]})


def test_no_section_is_the_defaults_and_numbers_become_floats():
    assert DamageSettings.from_dict(None) == DamageSettings()
    s = DamageSettings.from_dict({"thresholds": [0, 1, 1], "feature_low": 0, "tile_size": None})
    assert s.thresholds == [0.0, 1.0, 1.0] and isinstance(s.feature_low, float) and s.tile_size is None


def test_unknown_keys_types_and_values_are_reported_together():
    settings, problems = DamageSettings.check(
        {
            "blok": 1,
            "halo": "x",
            "thresholds": [0.7, 0.5, 0.3],
            "match_radiometry": "yes",
            "feature_low": 0.6,
            "batch_size": 0,
        }
    )
    assert settings is None
    assert problems == [  # unknown keys, then wrong types, then broken value rules
        "damage: unknown key 'blok' (did you mean 'block'?)",
        "damage.match_radiometry: expected true/false, got str 'yes'",
        "damage.halo: expected an integer, got str 'x'",
        "damage.thresholds: must be 3 increasing values in [0, 1], got [0.7, 0.5, 0.3]",
        "damage: feature_low (0.6) must be below feature_high (0.4)",
        "damage.batch_size: must be >= 1, got 0",
    ]
    with pytest.raises(ConfigError) as info:
        DamageSettings.from_dict({"blok": 1, "halo": "x"})
    assert info.value.problems == [
        "damage: unknown key 'blok' (did you mean 'block'?)",
        "damage.halo: expected an integer, got str 'x'",
    ]
    assert "\n" not in str(info.value)


def test_a_value_rule_on_a_field_of_the_wrong_type_is_not_reported_twice():
    _, problems = DamageSettings.check({"feature_low": "a", "feature_high": 0.1})
    assert problems == ["damage.feature_low: expected a number, got str 'a'"]


def test_not_a_mapping_and_another_section_name():
    assert DamageSettings.check([1]) == (None, ["damage: expected a mapping, got list [1]"])
    assert DamageSettings.check({"block": 8}, "tasks.damage")[1] == ["tasks.damage.block: must be >= 64, got 8"]


def test_constructed_settings_check_nothing_until_asked():
    s = DamageSettings(block=8, min_valid_fraction=0.0, feature_stages=[0])
    assert s.problems() == [
        "damage.feature_stages: must list encoder stages, 1 = the first, got [0]",
        "damage.min_valid_fraction: must be in (0, 1], got 0.0",
        "damage.block: must be >= 64, got 8",
    ]
    assert DamageSettings().problems() == []


@pytest.mark.parametrize(
    "key, value, valid",
    [("precision", "int8", "one of auto, fp32, bf16, fp16"), ("device", "gpu", "auto, cpu, cuda or cuda:N")],
)
def test_an_unknown_choice_is_refused_listing_the_valid_ones(key, value, valid, tmp_path):
    from tests.helpers import DEMO_SCENE, error_lines, invoke

    _, problems = DamageSettings.check({key: value})
    [problem] = problems
    assert problem.startswith(f"damage.{key}: expected ") and valid in problem and repr(value) in problem
    config = tmp_path / "damage.yaml"
    config.write_text(f"damage: {{{key}: {value}}}\n")
    flags = ["--device", value] if key == "device" else ["--config", config]
    result = invoke("damage", "--pre", DEMO_SCENE, "--post", DEMO_SCENE, "--out", tmp_path / "out", *flags)
    assert result.exit_code == 2
    [line] = error_lines(result)
    assert valid in line and (line.startswith("error: --device: ") or line.startswith(f"error: {config}: damage.{key}"))

"""geounet info: the model card, or one line saying what is wrong with the file."""

from __future__ import annotations

from tests.helpers import error_lines, invoke


def test_info_prints_the_card(tiny_model):
    result = invoke("info", tiny_model)
    assert result.exit_code == 0
    assert "tiny-test" in result.stdout and "resolution:   0.15 m/px" in result.stdout


def test_info_on_a_non_model_fails_cleanly(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04not a model")
    result = invoke("info", bad)
    assert result.exit_code != 0
    [line] = error_lines(result)
    assert str(bad) in line and "not a valid geounet model" in line

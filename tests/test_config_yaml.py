"""The YAML under every config: a key given twice is refused, and every YAML error is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from canvoy.config import read_yaml
from canvoy.errors import ConfigError


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    """A `metrics:` line added at the end of a config that `init` wrote with a `metrics:`
    section was silently the only one read (YAML keeps the last)."""
    path = tmp_path / "agent.yaml"
    path.write_text("metrics:\n  enabled: false\n  port: 9731\n\nmetrics: {enabled: true}\n")
    with pytest.raises(ConfigError) as caught:
        read_yaml(path, "agent config")
    assert str(caught.value) == (
        f"agent config {str(path)!r} is not valid YAML: line 5, column 1: "
        "key 'metrics' is given twice (first on line 1): keep one"
    )


def test_nested_duplicates_are_refused_and_equal_keys_elsewhere_are_not(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("a: {port: 1}\nb: {port: 1}\nc: [{x: 1}, {x: 2}]\n")
    assert read_yaml(path, "config") == {
        "a": {"port": 1},
        "b": {"port": 1},
        "c": [{"x": 1}, {"x": 2}],
    }
    path.write_text("mqtt:\n  host: a\n  host: b\n")
    with pytest.raises(ConfigError, match=r"line 3, column 3: key 'host' is given twice"):
        read_yaml(path, "config")


@pytest.mark.parametrize("text", ["a: [1\nb: 2\n", "\tx: 1\n", "a: b: c\n", "- a\nb: 1\n"])
def test_a_yaml_error_is_one_line_with_its_place(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"is not valid YAML: line \d+, column \d+: ") as caught:
        read_yaml(path, "config")
    assert "\n" not in str(caught.value)

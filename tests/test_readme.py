"""The README's configuration reference is the one the code generates."""

from __future__ import annotations

from pathlib import Path

from pseudoseg.run_config import config_reference

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lists_every_configuration_key() -> None:
    text = README.read_text(encoding="utf-8")
    assert config_reference(built_in_only=True) in text, "regenerate the table: python -m pseudoseg.run_config README.md"


def test_readme_quick_start_has_the_two_commands() -> None:
    text = README.read_text(encoding="utf-8")
    assert "pip install -e . && pseudoseg quickstart" in text
    assert "pip install -e '.[test]' && python -m pytest -q" in text

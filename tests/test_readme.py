"""The configuration reference in docs/configuration.md is the one the code generates."""

from __future__ import annotations

from pathlib import Path

from pseudoseg.run_config import config_reference

CONFIGURATION = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_configuration_page_lists_every_configuration_key() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    assert config_reference(built_in_only=True) in text, (
        "docs/configuration.md's configuration reference is out of date; "
        "regenerate it: python -m pseudoseg.run_config docs/configuration.md"
    )

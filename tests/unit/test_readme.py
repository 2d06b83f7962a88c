"""The README documents every setting and names the two commands."""

from pathlib import Path

from services.core.settings_doc import settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_the_settings():
    text = README.read_text()
    start = text.index("<!-- settings-table:start")
    start = text.index("\n", start) + 1
    end = text.index("<!-- settings-table:end -->")
    assert text[start:end].strip() == settings_table().strip(), (
        "README's settings table is stale: regenerate it with `python -m services.core.settings_doc`"
    )


def test_readme_names_the_two_commands():
    text = README.read_text()
    assert "make demo" in text and "make test" in text

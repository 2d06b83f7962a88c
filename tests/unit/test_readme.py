"""The README is the front door and docs/ holds the rest: the settings table in docs/configuration.md documents
every setting, the README names the commands early and stays short, and every relative link of the project's
Markdown (README.md, docs/, the READMEs of model_repo/ and deploy/) leads to a file (and heading) that exists."""

import re
from dataclasses import fields
from pathlib import Path

from services.core.settings import Settings
from services.core.settings_doc import settings_table

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "model_repo").glob("**/README.md")),
             ROOT / "deploy" / "README.md"]
README_MAX_LINES = 250
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def documented_settings_table() -> str:
    text = CONFIGURATION.read_text()
    start = text.index("<!-- settings-table:start")
    start = text.index("\n", start) + 1
    end = text.index("<!-- settings-table:end -->")
    return text[start:end].strip()


def test_the_settings_table_matches_the_settings():
    assert documented_settings_table() == settings_table().strip(), (
        "docs/configuration.md's settings table is stale: regenerate it with `python -m services.core.settings_doc`"
    )


def test_every_setting_has_a_row_with_its_variable():
    table = documented_settings_table()
    missing = [f.name for f in fields(Settings)
               if f"| `{f.name}` | `WHALEID_{f.name.upper()}` |" not in table]
    assert not missing, f"settings missing from docs/configuration.md: {missing}"


def test_readme_names_the_commands_and_the_install_line_early():
    lines = README.read_text().splitlines()
    head = "\n".join(lines[:40])
    for command in ("make install && source .venv/bin/activate", "make demo", "make test", "make test-fast"):
        assert command in head, f"README's first 40 lines do not name `{command}`"


def test_readme_is_the_front_door_at_most_250_lines():
    count = len(README.read_text().splitlines())
    assert count <= README_MAX_LINES, f"README.md has {count} lines (at most {README_MAX_LINES}): move detail to docs/"


def test_readme_says_how_to_identify_your_own_photos_and_the_gps_rule():
    text = README.read_text()
    section = text[text.index("## Identify your own photos"):]
    section = section[:section.index("\n## ", 1)]
    for needed in ("whaleid up", "--catalogue", "whaleid upload", "--latitude", "--longitude"):
        assert needed in section, f"README's 'Identify your own photos' does not mention {needed}"


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in path.read_text().splitlines() if re.match(r"#{1,6} ", line)}


def test_every_relative_link_resolves():
    broken = []
    for document in DOCUMENTS:
        for target in LINK.findall(document.read_text()):
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            path = (document.parent / file_part).resolve() if file_part else document
            if not path.exists():
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{document.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)

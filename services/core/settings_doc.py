"""The settings table of docs/configuration.md, generated from services/core/settings.py
(`python -m services.core.settings_doc`).

tests/unit/test_readme.py checks that docs/configuration.md holds exactly this table, so the documentation
cannot drift.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import MISSING, fields

from services.core import settings as settings_module
from services.core.settings import ENV_PREFIX, PROFILE_OVERRIDES, Settings

SECRET_WORDS = ("password", "secret", "token")


def field_comments() -> dict[str, str]:
    """The trailing `# comment` of each field in the Settings class body."""
    source = inspect.getsource(settings_module.Settings)
    comments = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+): [\w| ]+ = .*?#\s*(.*)$", line)
        if match:
            comments[match.group(1)] = match.group(2).strip()
    return comments


def _cell(value) -> str:
    return f"`{value}`" if value not in ("", None) else ""


def settings_table() -> str:
    comments = field_comments()
    rows = ["| setting | environment variable | default | local profile | meaning |", "|---|---|---|---|---|"]
    for f in fields(Settings):
        default = "" if f.default is MISSING else f.default
        local = PROFILE_OVERRIDES["local"].get(f.name, "")
        if any(word in f.name for word in SECRET_WORDS) and local:
            local = "(set)"
        meaning = comments.get(f.name, "").replace("|", "\\|")
        rows.append(f"| `{f.name}` | `{ENV_PREFIX}{f.name.upper()}` | {_cell(default)} | {_cell(local)} | {meaning} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())

"""The production profile refuses tokens anyone could know: the local profile's defaults, placeholders shipped
in deploy/ (`change-me`, `placeholder-refused-by-the-gateway`, ...) and anything shorter than MIN_LENGTH."""

from __future__ import annotations

from services.access.credentials import LIST_SETTINGS, TokenEntry, parse_token_list
from services.errors import ConfigError
from services.settings import PROFILE_OVERRIDES, Settings

MIN_LENGTH = 24
PLACEHOLDERS = frozenset({"change-me", "changeme", "change_me", "placeholder-refused-by-the-gateway"})


def local_default_tokens() -> frozenset[str]:
    """The tokens the local profile configures (public: they are in the source and the README)."""
    local = PROFILE_OVERRIDES["local"]
    tokens = {local.get("gateway_token", "")}
    for setting, role in LIST_SETTINGS.items():
        tokens.update(entry.token for entry in parse_token_list(setting, local.get(setting, ""), role))
    return frozenset(tokens - {""})


def unsafe_reason(token: str) -> str | None:
    """Why a token is not fit for production, None when it is."""
    if token in local_default_tokens():
        return "is the local profile's default token"
    if token.lower() in PLACEHOLDERS or "placeholder" in token.lower():
        return "is a placeholder"
    if len(token) < MIN_LENGTH:
        return f"is shorter than {MIN_LENGTH} characters"
    return None


def refuse_unsafe_tokens(settings: Settings, entries: list[TokenEntry]) -> None:
    """With the production profile, ConfigError naming the setting (and entry) of every unsafe token."""
    if settings.profile != "production":
        return
    problems = []
    for entry in entries:
        reason = unsafe_reason(entry.token)
        if reason:
            env = "WHALEID_" + entry.setting.upper()
            problems.append(f"{entry.setting} ({env}), entry {entry.credential.name!r}: the token {reason}")
    if problems:
        raise ConfigError("the production profile refuses unsafe gateway tokens: " + "; ".join(problems)
                          + ". Generate each with e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")

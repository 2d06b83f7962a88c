"""The production profile refuses tokens anyone could know: the local profile's defaults, placeholders shipped
in deploy/ (`change-me`, `placeholder-refused-by-the-gateway`, ...) and anything shorter than MIN_LENGTH. The local
profile refuses to listen beyond loopback while one of its default tokens is configured."""

from __future__ import annotations

import ipaddress

from services.core.access.credentials import LIST_SETTINGS, TokenEntry, parse_token_list
from services.core.errors import ConfigError
from services.core.settings import PROFILE_OVERRIDES, Settings

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
    if settings.redis_password and unsafe_reason(settings.redis_password) == "is a placeholder":
        problems.append("redis_password (WHALEID_REDIS_PASSWORD): is a placeholder (deploy/k8s/settings.yaml)")
    if problems:
        raise ConfigError("the production profile refuses unsafe gateway tokens: " + "; ".join(problems)
                          + ". Generate each with e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses (127.0.0.0/8, ::1); False for 0.0.0.0, '' and other names."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False


def refuse_default_tokens_beyond_loopback(settings: Settings, entries: list[TokenEntry], host: str) -> None:
    """ConfigError when the gateway would listen on `host` beyond loopback while a token is one of the local
    profile's defaults (public: in the source and the README), naming the settings that carry them."""
    if is_loopback(host):
        return
    defaults = local_default_tokens()
    carrying = sorted({"WHALEID_" + entry.setting.upper() for entry in entries if entry.token in defaults})
    if carrying:
        raise ConfigError(
            f"the gateway refuses to listen on {host or 'every address'!r} with the local profile's default tokens "
            f"({', '.join(carrying)}): anyone on the network could use them. Bind 127.0.0.1 (WHALEID_GATEWAY_HOST), "
            "or set your own tokens (WHALEID_PROFILE=production checks them)")

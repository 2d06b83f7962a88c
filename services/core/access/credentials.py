"""Who is calling: the gateway's bearer tokens, read from settings, each naming a role and a name.

    gateway_token              one token of the app named `app` (single-app setups; role app)
    gateway_app_tokens         name=token[,name=token]   role app
    gateway_researcher_tokens  name=token[,name=token]   role researcher (the name is the researcher recorded)
    gateway_admin_tokens       name=token[,name=token]   role admin

A token may contain `=` (base64) but not `,`; a name may contain neither. A token configured twice (even in two
roles) and a name used twice within a role are refused at start, naming the setting; so is an empty table.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from services.core.errors import ConfigError
from services.core.settings import Settings

APP, RESEARCHER, ADMIN = "app", "researcher", "admin"
DEFAULT_APP_NAME = "app"
LIST_SETTINGS = {"gateway_app_tokens": APP, "gateway_researcher_tokens": RESEARCHER,
                 "gateway_admin_tokens": ADMIN}


@dataclass(frozen=True)
class Credential:
    role: str
    name: str


@dataclass(frozen=True)
class TokenEntry:
    setting: str  # where it was configured (named in every refusal; the token itself never is)
    credential: Credential
    token: str


def parse_pairs(setting: str, text: str, key: str = "name", value: str = "token") -> dict[str, str]:
    """`key=value[,key=value]` of one setting, in order; ConfigError naming the setting and the entry on a bad or
    repeated entry (the gateway's tokens, the webhooks' URLs and secrets)."""
    found: dict[str, str] = {}
    for position, item in enumerate((part.strip() for part in text.split(",")), 1):
        if not item:
            continue
        name, equals, text_value = item.partition("=")
        name, text_value = name.strip(), text_value.strip()
        if not equals or not name or not text_value:
            raise ConfigError(f"{setting}: entry {position} is not {key}={value}")
        if name in found:
            raise ConfigError(f"{setting}: the {key} {name!r} is configured twice")
        found[name] = text_value
    return found


def parse_token_list(setting: str, text: str, role: str) -> list[TokenEntry]:
    """`name=token[,name=token]` of one setting; ConfigError naming the setting and entry on a bad entry."""
    return [TokenEntry(setting, Credential(role, name), token)
            for name, token in parse_pairs(setting, text).items()]


def configured_tokens(settings: Settings) -> list[TokenEntry]:
    """Every configured token with its setting, role and name (not checked for safety: see token_policy)."""
    entries = []
    if settings.gateway_token:
        entries.append(TokenEntry("gateway_token", Credential(APP, DEFAULT_APP_NAME), settings.gateway_token))
    for setting, role in LIST_SETTINGS.items():
        entries.extend(parse_token_list(setting, getattr(settings, setting), role))
    return entries


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class CredentialTable:
    """Bearer token -> Credential. Every lookup compares against every entry in constant time."""

    def __init__(self, entries: list[TokenEntry]):
        if not entries:
            raise ConfigError("the gateway needs at least one token: set WHALEID_GATEWAY_TOKEN (the app) and "
                              "WHALEID_GATEWAY_RESEARCHER_TOKENS / _ADMIN_TOKENS (name=token,...)")
        seen: dict[bytes, TokenEntry] = {}
        for entry in entries:
            digest = _digest(entry.token)
            if digest in seen:
                raise ConfigError(f"the same token is configured for {seen[digest].setting} "
                                  f"({seen[digest].credential.name}) and {entry.setting} ({entry.credential.name}); "
                                  "every credential needs its own token")
            seen[digest] = entry
        self._entries = [(digest, entry.credential) for digest, entry in seen.items()]

    def identify(self, authorization: str) -> Credential | None:
        """The credential of an `Authorization: Bearer <token>` header value, None when unknown."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        given = _digest(token)
        found = None
        for digest, credential in self._entries:
            if hmac.compare_digest(given, digest):
                found = credential
        return found

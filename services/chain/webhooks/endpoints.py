"""Which app's webhook is where: settings `webhook_urls` (`app=https://...`) and `webhook_secrets`
(`app=secret`), the app names being the gateway's (`gateway_token` is the app `app`, `gateway_app_tokens`).

Refused at start (ConfigError naming the setting and app, never the secret): a URL that is not http(s), an app
with a URL but no secret (or a secret but no URL), an app the gateway does not know, a name given twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from services.core.access.credentials import APP, configured_tokens, parse_pairs
from services.core.errors import ConfigError

MIN_SECRET_LENGTH = 16


@dataclass(frozen=True)
class Endpoint:
    app: str
    url: str
    secret: str = field(repr=False)


def _pairs(setting: str, text: str) -> dict[str, str]:
    return parse_pairs(setting, text, key="app", value="value")


def endpoints_from_settings(settings) -> dict[str, Endpoint]:
    """{app name: Endpoint} ({} when no webhook is configured)."""
    urls = _pairs("webhook_urls", settings.webhook_urls)
    secrets = _pairs("webhook_secrets", settings.webhook_secrets)
    for app in secrets.keys() - urls.keys():
        raise ConfigError(f"webhook_secrets: the app {app!r} has a secret but no URL in webhook_urls")
    known = {entry.credential.name for entry in configured_tokens(settings) if entry.credential.role == APP}
    out = {}
    for app, url in urls.items():
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"webhook_urls: the URL of {app!r} is not http(s)://host/...")
        if app not in known:
            raise ConfigError(f"webhook_urls: {app!r} is not an app of the gateway (gateway_token is `app`; "
                              "others come from gateway_app_tokens)")
        secret = secrets.get(app, "")
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"webhook_secrets: the app {app!r} needs a secret of at least {MIN_SECRET_LENGTH} "
                              "characters to sign its webhooks")
        out[app] = Endpoint(app, url, secret)
    return out

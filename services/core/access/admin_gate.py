"""The admin credential on pages outside the gateway: the matcher's `POST /gallery/reload/` (its Faust web port).

The same tokens as the gateway's (credentials.py, every role, so a researcher's token is told 403 and an unknown one
401). With the production profile a token token_policy.py calls unsafe (a placeholder, a local default, too short)
authorises nothing here; the gateway refuses to start with one at all. No token configured: every call is 401.
"""

from __future__ import annotations

from services.core.access.credentials import ADMIN, CredentialTable, configured_tokens
from services.core.access.token_policy import unsafe_reason
from services.core.settings import Settings


class AdminGate:
    def __init__(self, settings: Settings):
        entries = configured_tokens(settings)
        if settings.profile == "production":
            entries = [entry for entry in entries if unsafe_reason(entry.token) is None]
        self._table = CredentialTable(entries) if entries else None

    def refusal(self, authorization: str | None) -> tuple[int, str] | None:
        """None when `authorization` (an Authorization header value) carries an admin's bearer token; else the
        HTTP status (401 unknown or missing, 403 another role) and why."""
        credential = self._table.identify(authorization or "") if self._table is not None else None
        if credential is None:
            return 401, "an admin's bearer token is required (Authorization: Bearer <token>)"
        if credential.role != ADMIN:
            return 403, f"the {credential.role} {credential.name!r} may not do this: admins only"
        return None

"""The one rule for ids a caller gives (individual ids, sighting ids in paths, merge ids, encounter ids): at most
MAX_ID_LENGTH characters, printable, no control characters, no surrounding whitespace once stripped. A longer or
unprintable id is refused (400 with the reason) before anything is read or written for it, so no key is made of it.

Gallery ids come from the catalogue (services.curation.catalogue.sources: `[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}`) and new
individuals are `whale-<8 hex>`: both pass. Names given by a rename follow the stricter NAME_PATTERN of
services.curation.operations.identities.
"""

from __future__ import annotations

MAX_ID_LENGTH = 128


def id_problem(value, what: str) -> str | None:
    """Why `value` is not an acceptable id (None when it is). `what` names it in the reason."""
    if not isinstance(value, str):
        return f"{what} must be a string"
    text = value.strip()
    if not text:
        return f"{what} must not be empty"
    if len(text) > MAX_ID_LENGTH:
        return f"{what} is {len(text)} characters long; at most {MAX_ID_LENGTH} are allowed"
    if not text.isprintable():
        return f"{what} contains control or unprintable characters"
    return None

"""What each role may see of a sighting.

- app: only the sightings it created (`owner` = its name; others, and sightings created before owners were
  recorded, answer 404 exactly as an unknown id, so ids of other apps cannot be probed), and their metadata
  without the GPS position (GPS_FIELDS): positions of animals are for researchers only.
- researcher: every sighting, with the GPS position.
"""

from __future__ import annotations

from typing import Any, Mapping

from services.core.access.credentials import APP, Credential

GPS_FIELDS = ("latitude", "longitude")


def may_read(credential: Credential, sighting: Mapping[str, str]) -> bool:
    if credential.role == APP:
        return bool(sighting.get("owner")) and sighting.get("owner") == credential.name
    return True


def visible_metadata(credential: Credential, metadata: dict[str, Any]) -> dict[str, Any]:
    if credential.role == APP:
        return {k: v for k, v in metadata.items() if k not in GPS_FIELDS}
    return metadata

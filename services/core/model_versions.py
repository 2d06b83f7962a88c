"""Which model made an embedding, and whether a gallery version may rank it.

The worker tags each embedding with `model_version` = `<model>:<version>[:<build_id>]` of the Triton ensemble
(`EmbeddingClient.model_version()`, e.g. `ensemble:1:3f2a9c01b7de`). A gallery records the export model ids its
embeddings came from (`model_ids` in its `manifest.json`, e.g. `["lite0-f0-e019"]`); the ensemble records the
export model ids it blends in its config parameter `model_ids` (and in `repository.json`). The worker links the
two in Redis when it first sees a served build (the key: services.core.keys.model_version_key):

    model-version:<model_version>   JSON {"model_version", "model_ids": [...], "registered_at"}
                                    (TTL redis_embedding_ttl_s, refreshed while the build is served)

An embedding with `model_version` V matches a gallery with model ids G when
  1. G is empty (the gallery does not say which models made it: accepted, as before versions were checked), or
  2. V itself, or its build id, is listed in G (a gallery may name the ensemble build it was made with), or
  3. the model ids registered for V are, as a set, exactly G (the same models blended).
Anything else does not match: the matcher parks the sighting (services.chain.parking) and `whaleid reindex`
leaves the confirmed sighting out, with the reason.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Sequence

import redis

from services.core.errors import TransientFailure
from services.core.keys import model_version_key


def build_id(model_version: str) -> str:
    """The build id part of `<model>:<version>:<build_id>` ("" when there is none)."""
    parts = str(model_version or "").split(":")
    return parts[2] if len(parts) >= 3 else ""


def register(client: redis.Redis, model_version: str, model_ids: Sequence[str], ttl_s: int) -> None:
    """Record which export model ids the served `model_version` blends (the worker, before it publishes)."""
    value = json.dumps({"model_version": model_version, "model_ids": list(model_ids), "registered_at": time.time()})
    try:
        client.set(model_version_key(model_version), value, ex=ttl_s or None)
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None


def registered_model_ids(client: redis.Redis, model_version: str) -> list[str] | None:
    """The model ids the worker registered for `model_version`; None when it never did (or the entry expired)."""
    try:
        raw = client.get(model_version_key(model_version))
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None
    if raw is None:
        return None
    try:
        ids = json.loads(raw).get("model_ids")
    except (ValueError, AttributeError):
        return None
    return [str(i) for i in ids] if isinstance(ids, list) else None


def named_by_gallery(model_version: str, gallery_model_ids: Sequence[str]) -> bool:
    """Rules 1 and 2: the gallery lists no models, or lists this version or its build id."""
    gallery = [str(m) for m in gallery_model_ids or ()]
    if not gallery:
        return True
    build = build_id(model_version)
    return bool(model_version) and (model_version in gallery or bool(build and build in gallery))


@dataclass(frozen=True)
class VersionCheck:
    ok: bool
    reason: str  # "" | unknown_model_version | model_mismatch
    detail: str = ""


def check(model_version: str | None, gallery_model_ids: Sequence[str],
          registered: Sequence[str] | None) -> VersionCheck:
    """The matching rule of the module docstring; `registered` = registered_model_ids(model_version)."""
    gallery = [str(m) for m in gallery_model_ids or ()]
    version = str(model_version or "")
    if named_by_gallery(version, gallery):
        return VersionCheck(True, "")
    if registered is None:
        return VersionCheck(False, "unknown_model_version",
                            f"model version {version or '(none)'!r} is not registered (no model ids known); "
                            f"the gallery holds embeddings of {gallery}")
    if set(registered) == set(gallery):
        return VersionCheck(True, "")
    return VersionCheck(False, "model_mismatch",
                        f"model version {version!r} blends {sorted(set(registered))}; the gallery holds "
                        f"embeddings of {sorted(set(gallery))}")


class VersionChecker:
    """`check` with the registry read from Redis; positive look-ups are cached (a build id names fixed content),
    unknown versions are asked again each time (the worker may register them later)."""

    def __init__(self, client: redis.Redis, cache_size: int = 256):
        self.client = client
        self.cache_size = cache_size
        self._known: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def model_ids(self, model_version: str) -> list[str] | None:
        with self._lock:
            if model_version in self._known:
                return self._known[model_version]
        ids = registered_model_ids(self.client, model_version) if model_version else None
        if ids is not None:
            with self._lock:
                if len(self._known) >= self.cache_size:
                    self._known.clear()
                self._known[model_version] = ids
        return ids

    def check(self, model_version: str | None, gallery_model_ids: Sequence[str]) -> VersionCheck:
        version = str(model_version or "")
        if named_by_gallery(version, gallery_model_ids):  # no look-up needed
            return VersionCheck(True, "")
        return check(version, gallery_model_ids, self.model_ids(version))

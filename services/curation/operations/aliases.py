"""The alias map of merged and renamed individuals: which live id an id stands for.

Written by services.curation.operations.identities (merge, rename, undo); read by every reader of ids (confirmations,
re-indexing, the gateway), so that this module needs neither.

    identities:aliases   hash: old id -> surviving id (flattened: the value is always a live id)
    identities:names     set: every id that took part in a merge or rename, and the new names
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

from services.core import keys

ORIGINAL_KEY = "original_individual_id"  # gallery row metadata: the id the row was catalogued / confirmed with


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: Mapping) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in (raw or {}).items()}


def resolve_in(aliases: Mapping[str, str], individual_id: str) -> str:
    """The live id an id stands for (itself when not merged or renamed)."""
    seen = set()
    while individual_id in aliases and individual_id not in seen:  # flattened: one step; loops are impossible
        seen.add(individual_id)
        individual_id = aliases[individual_id]
    return individual_id


def aliases_of(aliases: Mapping[str, str], individual_id: str) -> list[str]:
    """The ids that now resolve to `individual_id` (merged into it, or its old names), sorted."""
    return sorted(k for k in aliases if resolve_in(aliases, k) == individual_id)


def live_ids(ids: Iterable[str], aliases: Mapping[str, str]) -> set[str]:
    """`ids` (gallery ids, new ids, names) as the live ids they stand for."""
    return {resolve_in(aliases, i) for i in ids}


def relabel_gallery(gallery, aliases: Mapping[str, str]):
    """(gallery with every row labelled with the live id of its original id, {"old -> new": rows}); the same
    gallery object when nothing changes. The original id stays in the row's metadata while it differs."""
    if not aliases and not any(ORIGINAL_KEY in m for m in gallery.metadata):
        return gallery, {}
    ids, metadata, changed = [], [], {}
    for individual_id, meta in zip(gallery.individual_ids, gallery.metadata, strict=True):
        base = str(meta.get(ORIGINAL_KEY) or individual_id)
        new = resolve_in(aliases, base)
        meta = row_metadata(meta, base, new)
        if new != individual_id:
            key = f"{individual_id} -> {new}"
            changed[key] = changed.get(key, 0) + 1
        ids.append(new)
        metadata.append(meta)
    if not changed and metadata == list(gallery.metadata):
        return gallery, {}
    return dataclasses.replace(gallery, individual_ids=ids, metadata=metadata), changed


def row_metadata(meta: Mapping[str, Any], base: str, new: str) -> dict[str, Any]:
    """A gallery row's metadata recording its original id `base` while it is labelled `new` (!= base)."""
    out = dict(meta)
    if new != base:
        out[ORIGINAL_KEY] = base
    else:
        out.pop(ORIGINAL_KEY, None)
    return out


def read_aliases(redis) -> dict[str, str]:
    return _decode(redis.hgetall(keys.IDENTITY_ALIASES_KEY))


def resolve(redis, individual_id: str) -> str:
    return resolve_in(read_aliases(redis), individual_id) if individual_id else individual_id


def read_names(redis) -> set[str]:
    return {_text(m) for m in redis.smembers(keys.IDENTITY_NAMES_KEY)}

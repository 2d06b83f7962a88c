"""Merging and renaming individuals, with undo; the "too similar individuals" list. One implementation, used by
the gateway (services/chain/gateway/identities.py), the CLI (`whaleid individuals ...`) and `whaleid reindex`.

Nothing already recorded is rewritten: a merge or a rename only adds an alias, and every reader resolves ids
through the alias map. So a past decision naming the old id follows the survivor, and undoing restores both ids
exactly as before.

Redis (durable, like the confirmations; never expires):

    identities:aliases   hash: old id -> surviving id (flattened: the value is always a live id)
    identities:names     set: every id that took part in a merge or rename, and the new names (valid targets of
                         later confirmations, like confirmations:new-ids)
    identities:ops       sorted set: operation (merge) id by time
    identities:op:<id>   hash: kind (merge|rename), source, target, researcher, at, note, gallery_version,
                         changes (JSON {alias: its value before, null = none}), undone, undone_by, undone_at
    identities:log       stream: every attempt, accepted or refused, and every undo: event, merge_id, source,
                         target, researcher, outcome (accepted | refusal code), reason, note, at

Rules:
- merge A into B: both resolve to live ids (the served gallery's, confirmed new ones, names), and differ; A and
  every alias of A then resolve to B.
- rename A to N: N is a new name (`NAME_PATTERN`), not an existing id in any spelling (case-insensitive): not in
  the served gallery, not a confirmed new id, not a name or an alias, else 409 `name_taken` naming where it exists.
- undo: restores the alias entries the operation changed. Refused (409 `undo_blocked`) while a later operation
  that is not undone involves the same ids (undo that one first), and, for a rename, while decisions were recorded
  into the new name since (merge it back instead). Decisions made after a merge into the old id were stored under
  the survivor (confirmations resolve the id first) and stay there.
- re-indexing (`relabel_gallery`): each gallery row's id is the alias of its *original* id (kept in the row's
  metadata `original_individual_id` while it differs), so a merge, a rename and their undo all reach the next
  gallery version, which is published even when only the labels changed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import redis as redis_lib

from services.core import keys
from services.core.errors import WhaleIdError
from services.core.identification import NEW_INDIVIDUAL
from services.core.ids import MAX_ID_LENGTH as _MAX_ID_LENGTH
from services.core.ids import id_problem
from services.curation.operations.aliases import (  # noqa: F401 - re-exported: the identities API
    ORIGINAL_KEY,
    aliases_of,
    live_ids,
    read_aliases,
    read_names,
    relabel_gallery,
    resolve,
    resolve_in,
    row_metadata,
)
from services.curation.operations.confirmations import (
    AUDIT_MAXLEN,
    KnownIndividuals,
    read_stream,
)

log = logging.getLogger(__name__)

KINDS = ("merge", "rename")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
RESERVED = frozenset({NEW_INDIVIDUAL, "similar"})  # `similar` is a route: /v1/individuals/similar
MAX_ID_LENGTH = _MAX_ID_LENGTH  # 128: the gateway's limit on every id (services.core.ids)
LOG_VALUE_MAX = 600  # characters kept of each logged value (a note is at most 500)
MAX_NOTE_LENGTH = 500


class IdentityRefused(WhaleIdError):
    """A merge, rename or undo that cannot be done; `status` is the HTTP status, `code` a short reason."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


# --------------------------------------------------------------------------- requests (handlers + OpenAPI)
_ID = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": r"\S"}
_NOTE = {"type": "string", "maxLength": MAX_NOTE_LENGTH, "description": "why (kept in the log)"}
REQUESTS: dict[str, dict[str, tuple[bool, dict]]] = {
    "MergeRequest": {"into": (True, {**_ID, "description": "the surviving individual id"}), "note": (False, _NOTE)},
    "RenameRequest": {"new_id": (True, {"type": "string", "pattern": NAME_PATTERN,
                                        "description": "a new name (refused if it exists in any spelling)"}),
                      "note": (False, _NOTE)},
}


def request_schema(name: str) -> dict:
    """JSON Schema of a request body, from the same table `parse_request` checks."""
    fields = REQUESTS[name]
    return {"type": "object", "additionalProperties": False, "required": [k for k, (req, _) in fields.items() if req],
            "properties": {k: dict(schema) for k, (_, schema) in fields.items()}}


def parse_request(name: str, body: Any) -> dict[str, str]:
    """The validated body (strings stripped); IdentityRefused(400) listing the first problem."""
    if not isinstance(body, dict):
        raise IdentityRefused(400, "invalid", "the body must be a JSON object")
    fields = REQUESTS[name]
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise IdentityRefused(400, "invalid", f"unknown field(s): {', '.join(unknown)}")
    out = {}
    for key, (required, schema) in fields.items():
        if key not in body:
            if required:
                raise IdentityRefused(400, "invalid", f"{key} is required")
            continue
        value = body[key]
        if not isinstance(value, str):
            raise IdentityRefused(400, "invalid", f"{key} must be a string")
        if not value.strip():
            if required:
                raise IdentityRefused(400, "invalid", f"{key} must not be empty")
            continue
        if len(value) > schema.get("maxLength", MAX_ID_LENGTH):
            raise IdentityRefused(400, "invalid", f"{key} is longer than {schema.get('maxLength', MAX_ID_LENGTH)}")
        if "pattern" in schema and not re.match(schema["pattern"], value):
            raise IdentityRefused(400, "invalid", f"{key} {value!r} is not a valid name: letters, digits, '.', '_', "
                                                  "'-', starting with a letter or digit, at most 128 characters")
        out[key] = value.strip()
    return out


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class IdentityOperation:
    merge_id: str
    kind: str  # merge | rename
    source: str  # the id that goes away (merged, or the old name)
    target: str  # the survivor (or the new name)
    researcher: str
    at: float
    note: str = ""
    gallery_version: str = ""
    undone: bool = False
    undone_by: str = ""
    undone_at: float | None = None

    def asdict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SCHEMA_TYPES = {"str": {"type": "string"}, "float": {"type": "number"}, "bool": {"type": "boolean"},
                 "float | None": {"type": ["number", "null"]}}


def operation_schema() -> dict:
    """JSON Schema of IdentityOperation.asdict() (its dataclass fields)."""
    fields = dataclasses.fields(IdentityOperation)
    props = {f.name: dict(_SCHEMA_TYPES[str(f.type)]) for f in fields}
    props["kind"]["enum"] = list(KINDS)
    return {"type": "object", "properties": props,
            "required": [f.name for f in fields if f.default is dataclasses.MISSING]}


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(raw: Mapping) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in (raw or {}).items()}


def _operation(fields: dict[str, str]) -> IdentityOperation:
    return IdentityOperation(
        merge_id=fields["merge_id"], kind=fields["kind"], source=fields["source"], target=fields["target"],
        researcher=fields.get("researcher", ""), at=float(fields.get("at") or 0), note=fields.get("note", ""),
        gallery_version=fields.get("gallery_version", ""), undone=fields.get("undone") == "1",
        undone_by=fields.get("undone_by", ""),
        undone_at=float(fields["undone_at"]) if fields.get("undone_at") else None)


# --------------------------------------------------------------------------- the service
class IdentityService:
    """Merges, renames and undoes them. `known` returns the served gallery's individuals (KnownIndividuals)."""

    def __init__(self, redis, known: Callable[[], KnownIndividuals], log_maxlen: int = AUDIT_MAXLEN):
        self.redis = redis
        self.known = known
        self.log_maxlen = int(log_maxlen)

    # --- reading
    def aliases(self) -> dict[str, str]:
        return read_aliases(self.redis)

    def resolve(self, individual_id: str) -> str:
        return resolve(self.redis, individual_id)

    def live_ids(self) -> set[str]:
        known = self.known()
        new_ids = {_text(m) for m in self.redis.smembers(keys.CONFIRMATIONS_NEW_IDS_KEY)}
        return live_ids(set(known.ids) | new_ids | read_names(self.redis), self.aliases())

    def get(self, merge_id: str) -> IdentityOperation:
        fields = _decode(self.redis.hgetall(keys.identity_op_key(merge_id)))
        if not fields:
            raise IdentityRefused(404, "unknown_merge", f"no merge or rename {merge_id!r}")
        return _operation(fields)

    def operations(self, individual: str | None = None, limit: int = 50) -> list[IdentityOperation]:
        """Newest first; with `individual`, those involving it or an id that resolves to it."""
        members = [_text(m) for m in self.redis.zrevrange(keys.IDENTITY_OPS_KEY, 0, -1)]
        wanted = None
        if individual:
            aliases = self.aliases()
            live = resolve_in(aliases, individual)
            wanted = {individual, live, *aliases_of(aliases, live)}
        out = []
        with self.redis.pipeline(transaction=False) as pipe:
            for merge_id in members:
                pipe.hgetall(keys.identity_op_key(merge_id))
            rows = pipe.execute()
        for raw in rows:
            fields = _decode(raw)
            if not fields:
                continue
            op = _operation(fields)
            if wanted is None or {op.source, op.target} & wanted:
                out.append(op)
            if len(out) >= limit:
                break
        return out

    def log_entries(self) -> list[dict[str, str]]:
        return list(read_stream(self.redis, keys.IDENTITY_LOG_STREAM))

    # --- changing
    def merge(self, source: str, body: Any, researcher: str) -> IdentityOperation:
        """Merge `source` into body["into"]. Raises IdentityRefused."""
        return self._guarded("merge", source, body, researcher, self._merge)

    def rename(self, source: str, body: Any, researcher: str) -> IdentityOperation:
        """Rename `source` to body["new_id"]. Raises IdentityRefused."""
        return self._guarded("rename", source, body, researcher, self._rename)

    def undo(self, merge_id: str, researcher: str) -> IdentityOperation:
        try:
            op = self._undo(merge_id, researcher)
        except IdentityRefused as exc:
            self._log({"event": "undo", "merge_id": merge_id, "researcher": researcher, "outcome": exc.code,
                       "reason": str(exc)})
            raise
        return op

    # --- steps
    def _guarded(self, kind, source, body, researcher, step) -> IdentityOperation:
        request = "MergeRequest" if kind == "merge" else "RenameRequest"
        target = ""
        try:
            if not researcher or not str(researcher).strip():
                raise IdentityRefused(400, "invalid", "a researcher is required (who merges or renames)")
            if problem := id_problem(source, "the individual id"):
                raise IdentityRefused(400, "invalid", problem)
            fields = parse_request(request, body)
            target = fields["into" if kind == "merge" else "new_id"]
            if problem := id_problem(target, "into" if kind == "merge" else "new_id"):
                raise IdentityRefused(400, "invalid", problem)
            return step(str(source).strip(), target, str(researcher).strip(), fields.get("note", ""))
        except IdentityRefused as exc:
            self._log({"event": kind, "merge_id": "", "source": str(source), "target": target or _target(body, kind),
                       "researcher": str(researcher or ""), "outcome": exc.code, "reason": str(exc)})
            raise

    def _where(self, name: str, known: KnownIndividuals, aliases, names, new_ids) -> str | None:
        """Where an id exists, case-insensitively ('' when it does not)."""
        lowered = name.lower()
        for existing, survivor in aliases.items():
            if existing.lower() == lowered:
                return f"{existing!r} was merged or renamed into {survivor!r}"
        for label, ids in ((f"an individual of gallery version {known.version}", known.ids),
                           ("a confirmed new individual", new_ids), ("a merged or renamed id", names)):
            for existing in ids:
                if existing.lower() == lowered:
                    return f"{existing!r} is {label}"
        return None

    def _live_or_refuse(self, individual_id: str, known, aliases, names, new_ids, what: str) -> str:
        live = resolve_in(aliases, individual_id)
        if individual_id == NEW_INDIVIDUAL or not (live in known.ids or live in new_ids or live in names):
            raise IdentityRefused(404, "unknown_individual",
                                  f"{what} {individual_id!r} is neither in gallery version {known.version}, nor a "
                                  "confirmed new individual, nor a merged or renamed id")
        return live

    def _transaction(self, compute) -> IdentityOperation:
        """Run `compute(pipe, aliases, names, new_ids, known)` under WATCH; it queues its writes and returns the
        operation (retried when another writer changed the watched keys meanwhile)."""
        known = self.known()
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(keys.IDENTITY_ALIASES_KEY, keys.IDENTITY_NAMES_KEY, keys.CONFIRMATIONS_NEW_IDS_KEY)
                    aliases = _decode(pipe.hgetall(keys.IDENTITY_ALIASES_KEY))
                    names = {_text(m) for m in pipe.smembers(keys.IDENTITY_NAMES_KEY)}
                    new_ids = {_text(m) for m in pipe.smembers(keys.CONFIRMATIONS_NEW_IDS_KEY)}
                    op = compute(pipe, aliases, names, new_ids, known)
                    pipe.execute()
                    return op
                except redis_lib.WatchError:
                    continue

    def _merge(self, source, into, researcher, note) -> IdentityOperation:
        def compute(pipe, aliases, names, new_ids, known):
            src = self._live_or_refuse(source, known, aliases, names, new_ids, "individual")
            dst = self._live_or_refuse(into, known, aliases, names, new_ids, "target")
            if src == dst:
                raise IdentityRefused(409, "same_individual",
                                      f"{source!r} and {into!r} are already one individual ({dst!r})")
            changes = {k: v for k, v in aliases.items() if v == src}
            changes[src] = None
            return self._record(pipe, "merge", src, dst, researcher, note, known.version, changes, [src, dst])

        return self._transaction(compute)

    def _rename(self, source, new_id, researcher, note) -> IdentityOperation:
        def compute(pipe, aliases, names, new_ids, known):
            src = self._live_or_refuse(source, known, aliases, names, new_ids, "individual")
            if new_id in RESERVED:
                raise IdentityRefused(400, "invalid", f"{new_id!r} is reserved and cannot name an individual")
            where = self._where(new_id, known, aliases, names, new_ids)
            if where:
                raise IdentityRefused(409, "name_taken", f"cannot rename {src!r} to {new_id!r}: the name exists "
                                                         f"({where}); merge into it instead, or choose another name")
            changes = {k: v for k, v in aliases.items() if v == src}
            changes[src] = None
            return self._record(pipe, "rename", src, new_id, researcher, note, known.version, changes,
                                [src, new_id])

        return self._transaction(compute)

    def _record(self, pipe, kind, source, target, researcher, note, version, changes, names) -> IdentityOperation:
        op = IdentityOperation(merge_id=f"m-{uuid.uuid4().hex[:12]}", kind=kind, source=source, target=target,
                               researcher=researcher, at=time.time(), note=note, gallery_version=version)
        pipe.multi()
        for alias in changes:
            pipe.hset(keys.IDENTITY_ALIASES_KEY, alias, target)
        pipe.sadd(keys.IDENTITY_NAMES_KEY, *names)
        pipe.hset(keys.identity_op_key(op.merge_id), mapping={
            "merge_id": op.merge_id, "kind": kind, "source": source, "target": target, "researcher": researcher,
            "at": repr(op.at), "note": note, "gallery_version": version, "changes": json.dumps(changes),
            "undone": "0"})
        pipe.zadd(keys.IDENTITY_OPS_KEY, {op.merge_id: op.at})
        self._log_on(pipe, {"event": kind, "merge_id": op.merge_id, "source": source, "target": target,
                            "researcher": researcher, "outcome": "accepted", "reason": "", "note": note})
        log.info("identities: %s %s -> %s by %s (%s)", kind, source, target, researcher, op.merge_id)
        return op

    def _undo(self, merge_id: str, researcher: str) -> IdentityOperation:
        if not researcher or not str(researcher).strip():
            raise IdentityRefused(400, "invalid", "a researcher is required (who undoes)")
        if problem := id_problem(merge_id, "the merge id"):
            raise IdentityRefused(400, "invalid", problem)
        key = keys.identity_op_key(merge_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(keys.IDENTITY_ALIASES_KEY, keys.IDENTITY_NAMES_KEY, key, keys.IDENTITY_OPS_KEY)
                    fields = _decode(pipe.hgetall(key))
                    if not fields:
                        raise IdentityRefused(404, "unknown_merge", f"no merge or rename {merge_id!r}")
                    op = _operation(fields)
                    if op.undone:
                        raise IdentityRefused(409, "already_undone",
                                              f"{op.kind} {merge_id} was already undone by {op.undone_by}")
                    self._refuse_blocked(pipe, op)
                    now = time.time()
                    pipe.multi()
                    for alias, before in json.loads(fields.get("changes") or "{}").items():
                        if before is None:
                            pipe.hdel(keys.IDENTITY_ALIASES_KEY, alias)
                        else:
                            pipe.hset(keys.IDENTITY_ALIASES_KEY, alias, before)
                    if op.kind == "rename":
                        pipe.srem(keys.IDENTITY_NAMES_KEY, op.target)
                    pipe.hset(key, mapping={"undone": "1", "undone_by": researcher, "undone_at": repr(now)})
                    self._log_on(pipe, {"event": "undo", "merge_id": merge_id, "source": op.source,
                                        "target": op.target, "researcher": researcher, "outcome": "accepted",
                                        "reason": f"undo {op.kind}"})
                    pipe.execute()
                    log.info("identities: undo %s %s (%s -> %s) by %s", op.kind, merge_id, op.source, op.target,
                             researcher)
                    return dataclasses.replace(op, undone=True, undone_by=researcher, undone_at=now)
                except redis_lib.WatchError:
                    continue

    def _refuse_blocked(self, pipe, op: IdentityOperation) -> None:
        involved = {op.source, op.target}
        for member in pipe.zrangebyscore(keys.IDENTITY_OPS_KEY, op.at, "+inf"):
            other_id = _text(member)
            if other_id == op.merge_id:
                continue
            other = _decode(pipe.hgetall(keys.identity_op_key(other_id)))
            if other and other.get("undone") != "1" and float(other.get("at") or 0) >= op.at \
                    and {other["source"], other["target"]} & involved:
                raise IdentityRefused(409, "undo_blocked",
                                      f"a later {other['kind']} ({other_id}: {other['source']} -> {other['target']}) "
                                      f"involves {', '.join(sorted({other['source'], other['target']} & involved))};"
                                      f" undo it first")
        if op.kind == "rename":
            named = [sid for sid in (_text(m) for m in pipe.zrange(keys.CONFIRMATIONS_INDEX_KEY, 0, -1))
                     if _text(pipe.hget(keys.confirmation_key(sid), "individual_id") or "") == op.target]
            if named:
                raise IdentityRefused(409, "undo_blocked",
                                      f"{len(named)} decision(s) were recorded into {op.target!r} since the rename "
                                      f"(e.g. sighting {named[0]}); undoing would orphan them: merge "
                                      f"{op.target!r} into another id instead")

    def _log_on(self, pipe, fields: dict[str, str]) -> None:
        entry = {"event": "", "merge_id": "", "source": "", "target": "", "researcher": "", "outcome": "",
                 "reason": "", "note": "", **{k: str(v)[:LOG_VALUE_MAX] for k, v in fields.items()},
                 "at": repr(time.time())}
        pipe.xadd(keys.IDENTITY_LOG_STREAM, entry, maxlen=self.log_maxlen or None, approximate=True)

    def _log(self, fields: dict[str, str]) -> None:
        with self.redis.pipeline() as pipe:
            self._log_on(pipe, fields)
            pipe.execute()


def _target(body: Any, kind: str) -> str:
    if isinstance(body, dict):
        value = body.get("into" if kind == "merge" else "new_id")
        return value if isinstance(value, str) else ""
    return ""


# --------------------------------------------------------------------------- too similar individuals
def similar_individuals(gallery, tuning, aliases: Mapping[str, str] | None = None, *, neighbours: int = 10,
                        limit: int = 200) -> list[dict[str, Any]]:
    """Pairs of catalogued individuals whose mean embeddings (services.core.identification.gallery.individual_means,
    after resolving merges and renames) score at least the `new_individual` threshold of their species (the tuned
    global one when the species has none; the lower of the two for two species): one would likely be taken for
    the other. Most similar first; each individual is compared with its `neighbours` nearest (FAISS, exact)."""
    import faiss

    from services.core.identification.gallery import individual_means

    aliases = aliases or {}
    ids = [resolve_in(aliases, str(i)) for i in gallery.individual_ids]
    means, names, kinds, counts, _ = individual_means(gallery.embeddings, ids, gallery.species)
    if len(names) < 2:
        return []
    index = faiss.IndexFlatIP(means.shape[1])
    index.add(np.ascontiguousarray(means, dtype=np.float32))
    scores, rows = index.search(np.ascontiguousarray(means, dtype=np.float32), min(neighbours + 1, len(names)))

    def threshold(kind: str) -> float:
        return float(tuning.per_species.get(kind, tuning.threshold))

    pairs: dict[tuple[int, int], dict[str, Any]] = {}
    for i in range(len(names)):
        for score, j in zip(scores[i], rows[i], strict=True):
            if j < 0 or j == i:
                continue
            a, b = sorted((i, int(j)))
            limit_score = min(threshold(kinds[a]), threshold(kinds[b]))
            if float(score) >= limit_score and (a, b) not in pairs:
                pairs[(a, b)] = {"a": names[a], "b": names[b], "score": round(float(score), 4),
                                 "threshold": round(limit_score, 4), "species": [kinds[a], kinds[b]],
                                 "photos": [int(counts[a]), int(counts[b])]}
    return sorted(pairs.values(), key=lambda p: (-p["score"], p["a"], p["b"]))[:limit]


SIMILAR_PAIR_SCHEMA = {
    "type": "object", "required": ["a", "b", "score", "threshold"],
    "properties": {"a": {"type": "string"}, "b": {"type": "string"}, "score": {"type": "number"},
                   "threshold": {"type": "number"}, "species": {"type": "array", "items": {"type": "string"}},
                   "photos": {"type": "array", "items": {"type": "integer"}}}}


class ServedSimilarities:
    """Callable -> (gallery version, tuning threshold, pairs) for the served version and the current alias map;
    the version's gallery is downloaded once, the pairs recomputed only when the version or the aliases change."""

    def __init__(self, store, redis):
        import threading

        self.store, self.redis = store, redis
        self._lock = threading.Lock()
        self._version = None
        self._gallery = self._tuning = None
        self._key = None
        self._pairs: list[dict[str, Any]] = []

    def __call__(self, limit: int = 200) -> tuple[str, float, list[dict[str, Any]]]:
        import tempfile
        from pathlib import Path

        from services.core.identification.gallery import Gallery
        from services.core.identification.tuning import Tuning
        from services.curation.operations.gallery_versions import TUNING_FILE, ModelStoreError

        with self._lock:
            pointer = self.store.pointer()
            if pointer is None:
                raise ModelStoreError("no gallery version is published yet")
            if pointer.version != self._version:
                with tempfile.TemporaryDirectory(prefix="whaleid-similar-") as tmp:
                    folder = self.store.download(pointer.version, Path(tmp) / "g")
                    self._gallery, self._tuning = Gallery.load(folder), Tuning.load(folder / TUNING_FILE)
                self._version, self._key = pointer.version, None
            aliases = read_aliases(self.redis)
            key = (limit, tuple(sorted(aliases.items())))
            if key != self._key:
                self._pairs = similar_individuals(self._gallery, self._tuning, aliases, limit=limit)
                self._key = key
            return self._version, float(self._tuning.threshold), list(self._pairs)

"""Researchers' confirmations: validated, stored durably in Redis with an audit trail, one decision per sighting.

Redis (the embedded stack's, or production's with AOF `appendfsync everysec` + replicas; a relational store
such as PostgreSQL would be the production system of record for curation, with this Redis layout as its cache):

    confirmation:<id>      hash: action, individual_id, researcher, predicted (JSON), confirmed_at,
                           gallery_version, published (1 once announced on the `confirmations` topic)
    confirmations:index    sorted set: sighting id by confirmed_at (what re-indexing reads)
    confirmations:new-ids  set: individual ids assigned by `new` (valid targets of later confirmations)
    confirmations:individual:<individual_id>  sorted set: sighting id -> confirmed_at of the `confirm`/`new`
                           decisions recorded with that id (an individual's page reads these, not the whole index)
    review:awaiting        sorted set: sighting id -> created_at of every sighting not decided yet (the gateway adds
                           it when the sighting is created, a stored decision removes it): the review queue's index
    confirmations:audit    stream: every attempt, accepted or refused, with who/when/what/why (trimmed to about
                           `audit_maxlen` entries, setting redis_audit_maxlen)
    confirmations:audit:<id>  stream: the same entries of one existing sighting (its trail, whatever the global
                           size), trimmed to about `sighting_audit_maxlen` entries (setting
                           redis_sighting_audit_maxlen). An attempt on an unknown sighting, or with an invalid id,
                           goes to the global stream only: no key is made of an id nobody created.

The confirmations, the index and each sighting's trail are the catalogue's record: they never expire. Ids are
bounded (services.core.ids: at most 128 printable characters, else 400) and audited values are cut to
AUDIT_VALUE_MAX characters, so no attempt writes an unbounded entry.

Actions: `confirm` (into an id of the current gallery, a previously assigned new id or a name given by a rename;
an id merged or renamed away is resolved to its survivor first, services.curation.operations.identities), `new` (the system
assigns `whale-<8 hex>`), `reject` (the predicted id — by default the top candidate — is wrong). A sighting
takes one decision; repeating the same decision is answered with the stored one; a different decision is
refused, except that a `reject` may be followed by `confirm`/`new` naming another individual.

Who confirms: callers that authenticated the researcher (the gateway) pass `researcher=`; the body may then
omit `researcher`, and a body `researcher` that differs is refused (403 researcher_mismatch). Callers that did
not (Python, tests) name the researcher in the body, as before.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import redis as redis_lib

from services.core import keys
from services.core.errors import WhaleIdError
from services.core.identification import NEW_INDIVIDUAL
from services.core.ids import id_problem
from services.core.metrics import CONFIRMATIONS
from services.core.topics import Confirmation
from services.curation.operations import records
from services.curation.operations.aliases import resolve

log = logging.getLogger(__name__)

ACTIONS = ("confirm", "new", "reject")
AUDIT_PAGE = 1000
AUDIT_MAXLEN = 1_000_000  # == Settings.redis_audit_maxlen's default
SIGHTING_AUDIT_MAXLEN = 1000  # == Settings.redis_sighting_audit_maxlen's default
AUDIT_VALUE_MAX = 256  # characters kept of each audited value (a refused body may hold anything)
NEW_ID_PREFIX = "whale-"


class ConfirmationRefused(WhaleIdError):
    """A confirmation that cannot be accepted; `status` is the HTTP status, `code` a short reason."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class KnownIndividuals:
    """Ids a confirmation may name: those of the served gallery version (+ its name)."""

    version: str
    ids: frozenset[str]


def new_individual_id() -> str:
    return f"{NEW_ID_PREFIX}{uuid.uuid4().hex[:8]}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stored_confirmation(redis, sighting_id: str) -> Confirmation | None:
    raw = redis.hgetall(keys.confirmation_key(sighting_id))
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    return Confirmation(sighting_id=sighting_id, action=fields["action"], individual_id=fields["individual_id"],
                        researcher=fields.get("researcher", ""), predicted=json.loads(fields.get("predicted") or "null"),
                        confirmed_at=float(fields.get("confirmed_at", 0.0)))


def confirmed_sightings(redis, since: float = 0.0) -> list[tuple[Confirmation, str]]:
    """(confirmation, gallery_version at the time) of every `confirm`/`new`, oldest first."""
    out = []
    for member in redis.zrangebyscore(keys.CONFIRMATIONS_INDEX_KEY, since, "+inf"):
        sighting_id = _text(member)
        conf = stored_confirmation(redis, sighting_id)
        if conf is not None and conf.action in ("confirm", "new"):
            version = _text(redis.hget(keys.confirmation_key(sighting_id), "gallery_version") or "")
            out.append((conf, version))
    return out


class ConfirmationService:
    """Validates and records confirmations. `known` returns the served gallery's individuals."""

    def __init__(self, redis, known: Callable[[], KnownIndividuals], audit_maxlen: int = AUDIT_MAXLEN,
                 sighting_audit_maxlen: int = SIGHTING_AUDIT_MAXLEN):
        self.redis = redis
        self.known = known
        self.audit_maxlen = int(audit_maxlen)
        self.sighting_audit_maxlen = int(sighting_audit_maxlen)

    # --- the one entry point
    def submit(self, sighting_id: str, body: dict[str, Any],
               researcher: str | None = None) -> tuple[Confirmation, bool]:
        """Returns (the stored confirmation, True when this call created it). Raises ConfirmationRefused.
        `researcher`: the authenticated researcher (recorded instead of the body's claim)."""
        action = str(body.get("action", "")) if isinstance(body, dict) else ""
        try:
            conf, created = self._submit(sighting_id, body, researcher)
        except ConfirmationRefused as exc:
            CONFIRMATIONS.labels(action=action if action in ACTIONS else "invalid", outcome=exc.code).inc()
            audited = dict(body) if isinstance(body, dict) else {}
            if researcher:
                audited["researcher"] = researcher
            own_trail = exc.code != "invalid_id" and self._known_sighting(sighting_id)  # no key of an unknown id
            self._audit(sighting_id, audited, outcome=exc.code, reason=str(exc), own_trail=own_trail)
            raise
        CONFIRMATIONS.labels(action=conf.action, outcome="accepted" if created else "repeated").inc()
        return conf, created

    def _known_sighting(self, sighting_id: str) -> bool:
        """A sighting that exists or was decided (its trail may be written)."""
        return records.sighting_exists(self.redis, sighting_id) \
            or bool(self.redis.exists(keys.confirmation_key(sighting_id)))

    def mark_published(self, sighting_id: str) -> None:
        self.redis.hset(keys.confirmation_key(sighting_id), "published", "1")

    def is_published(self, sighting_id: str) -> bool:
        return _text(self.redis.hget(keys.confirmation_key(sighting_id), "published") or "0") == "1"

    # --- steps
    def _submit(self, sighting_id: str, body: Any, authenticated: str | None) -> tuple[Confirmation, bool]:
        problem = id_problem(sighting_id, "the sighting id")
        if problem:
            raise ConfirmationRefused(400, "invalid_id", problem)
        action, individual_id, researcher = self._parse(body, authenticated)
        if not records.sighting_exists(self.redis, sighting_id):
            raise ConfirmationRefused(404, "unknown_sighting", f"unknown sighting {sighting_id!r}")
        identification = records.read_identification(self.redis, sighting_id)
        predicted = (identification or {}).get("candidates")
        if action in ("confirm", "new") and not self.redis.exists(keys.embedding_key(sighting_id)):
            raise ConfirmationRefused(409, "no_embedding",
                                      f"sighting {sighting_id} has no stored embedding yet (not processed, or "
                                      "failed); it cannot enter the gallery")
        known = self.known()
        if individual_id:  # a merged or renamed id stands for its survivor (services.curation.operations.identities)
            individual_id = _resolve(self.redis, individual_id)
        if action == "confirm":
            self._check_known(individual_id, known)
        elif action == "reject":
            individual_id = individual_id or self._top_prediction(sighting_id, predicted)
        return self._store(sighting_id, action, individual_id, researcher, predicted, known.version)

    @staticmethod
    def _parse(body: Any, authenticated: str | None = None) -> tuple[str, str, str]:
        if not isinstance(body, dict):
            raise ConfirmationRefused(400, "invalid", "the body must be a JSON object")
        unknown = sorted(set(body) - {"action", "individual_id", "researcher"})
        if unknown:
            raise ConfirmationRefused(400, "invalid", f"unknown field(s): {', '.join(unknown)}")
        action = body.get("action")
        if action not in ACTIONS:
            raise ConfirmationRefused(400, "invalid", f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
        individual_id = body.get("individual_id") or ""
        researcher = body.get("researcher") or ""
        if not isinstance(individual_id, str) or not isinstance(researcher, str):
            raise ConfirmationRefused(400, "invalid", "individual_id and researcher must be strings")
        if individual_id and (problem := id_problem(individual_id, "individual_id")):
            raise ConfirmationRefused(400, "invalid", problem)
        if len(researcher) > AUDIT_VALUE_MAX:
            raise ConfirmationRefused(400, "invalid", f"researcher is longer than {AUDIT_VALUE_MAX} characters")
        if authenticated:
            if researcher.strip() and researcher.strip() != authenticated:
                raise ConfirmationRefused(403, "researcher_mismatch",
                                          f"the body names researcher {researcher.strip()!r} but the credential "
                                          f"is {authenticated!r}; the researcher comes from the credential "
                                          "(omit the field)")
            researcher = authenticated
        if not researcher.strip():
            raise ConfirmationRefused(400, "invalid", "researcher is required (who confirms)")
        if action == "confirm" and not individual_id:
            raise ConfirmationRefused(400, "invalid", "action 'confirm' needs an individual_id")
        if action == "new" and individual_id:
            raise ConfirmationRefused(400, "invalid", "action 'new' takes no individual_id: the system assigns one")
        if individual_id == NEW_INDIVIDUAL:
            raise ConfirmationRefused(400, "invalid", f"{NEW_INDIVIDUAL!r} is not an individual; use action 'new'")
        return action, individual_id.strip(), researcher.strip()

    def _check_known(self, individual_id: str, known: KnownIndividuals) -> None:
        if individual_id in known.ids or self.redis.sismember(keys.CONFIRMATIONS_NEW_IDS_KEY, individual_id) \
                or self.redis.sismember(keys.IDENTITY_NAMES_KEY, individual_id):
            return
        raise ConfirmationRefused(409, "unknown_individual",
                                  f"individual {individual_id!r} is neither in gallery version {known.version} nor "
                                  "among previously confirmed new individuals")

    @staticmethod
    def _top_prediction(sighting_id: str, predicted) -> str:
        for cand in predicted or []:
            if cand.get("individual_id") and cand["individual_id"] != NEW_INDIVIDUAL:
                return cand["individual_id"]
        raise ConfirmationRefused(409, "nothing_to_reject",
                                  f"sighting {sighting_id} has no predicted individual to reject; name one")

    def _store(self, sighting_id, action, individual_id, researcher, predicted, version):
        key = keys.confirmation_key(sighting_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    existing = stored_confirmation(pipe, sighting_id)
                    if existing is not None:
                        if self._same(existing, action, individual_id) or (
                                action == existing.action == "confirm"
                                and _resolve(pipe, existing.individual_id) == individual_id):
                            pipe.unwatch()
                            return existing, False
                        if not (existing.action == "reject" and action != "reject"
                                and individual_id != existing.individual_id):
                            pipe.unwatch()
                            raise ConfirmationRefused(
                                409, "conflict",
                                f"sighting {sighting_id} was already decided: {existing.action} "
                                f"{existing.individual_id!r} by {existing.researcher} at "
                                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(existing.confirmed_at))}")
                    assigned = new_individual_id() if action == "new" else individual_id
                    conf = Confirmation(sighting_id=sighting_id, action=action, individual_id=assigned,
                                        researcher=researcher, predicted=predicted, confirmed_at=time.time())
                    pipe.multi()
                    pipe.hset(key, mapping={
                        "action": action, "individual_id": assigned, "researcher": researcher,
                        "predicted": json.dumps(predicted), "confirmed_at": repr(conf.confirmed_at),
                        "gallery_version": version, "published": "0"})
                    pipe.zadd(keys.CONFIRMATIONS_INDEX_KEY, {sighting_id: conf.confirmed_at})
                    pipe.zrem(keys.REVIEW_AWAITING_KEY, sighting_id)  # decided: off the review queue
                    if action == "new":
                        pipe.sadd(keys.CONFIRMATIONS_NEW_IDS_KEY, assigned)
                    if action in ("confirm", "new"):  # final: a sighting's confirm/new is never replaced
                        pipe.zadd(keys.individual_confirmations_key(assigned), {sighting_id: conf.confirmed_at})
                    _append_audit(pipe, sighting_id,
                                  self._audit_fields(sighting_id, conf.asdict(), "accepted", "", version),
                                  self.audit_maxlen, self.sighting_audit_maxlen)
                    pipe.execute()
                    log.info("confirmation %s: %s %s by %s", sighting_id, action, assigned, researcher)
                    return conf, True
                except redis_lib.WatchError:
                    continue

    @staticmethod
    def _same(existing: Confirmation, action: str, individual_id: str) -> bool:
        return existing.action == action and (action == "new" or existing.individual_id == individual_id)

    @staticmethod
    def _audit_fields(sighting_id, body, outcome, reason, version="") -> dict[str, str]:
        cut = lambda value: str(value)[:AUDIT_VALUE_MAX]  # noqa: E731 - a refused body may hold anything
        return {"sighting_id": cut(sighting_id), "action": cut(body.get("action", "")),
                "individual_id": cut(body.get("individual_id", "")), "researcher": cut(body.get("researcher", "")),
                "predicted": json.dumps(body.get("predicted")), "outcome": outcome, "reason": cut(reason),
                "gallery_version": version, "at": repr(time.time())}

    def _audit(self, sighting_id, body, outcome, reason, own_trail: bool = True) -> None:
        with self.redis.pipeline() as pipe:
            _append_audit(pipe, sighting_id, self._audit_fields(sighting_id, body, outcome, reason), self.audit_maxlen,
                          self.sighting_audit_maxlen if own_trail else None)
            pipe.execute()


def _resolve(redis, individual_id: str) -> str:
    return resolve(redis, individual_id)


def _append_audit(pipe, sighting_id: str, fields: dict[str, str], maxlen: int = AUDIT_MAXLEN,
                  sighting_maxlen: int | None = SIGHTING_AUDIT_MAXLEN) -> None:
    """One attempt into the global stream (trimmed to about `maxlen`; 0 = never) and the sighting's own (trimmed to
    about `sighting_maxlen`; 0 = never; None = not written: an unknown sighting gets no stream), queued on a MULTI
    pipeline: both or neither."""
    pipe.xadd(keys.CONFIRMATIONS_AUDIT_STREAM, fields, maxlen=maxlen or None, approximate=True)
    if sighting_maxlen is not None:
        pipe.xadd(keys.confirmation_audit_stream(sighting_id), fields, maxlen=sighting_maxlen or None,
                  approximate=True)


def _next_id(entry_id: str) -> str:
    """The smallest stream id after `entry_id` (an exclusive XRANGE start that every Redis version accepts)."""
    millis, _, sequence = entry_id.partition("-")
    return f"{millis}-{int(sequence or 0) + 1}"


def read_stream(redis, key: str, page_size: int = AUDIT_PAGE):
    """Every entry of a stream, oldest first, as {"id", **fields}, read in pages of `page_size` (XRANGE cursor)."""
    start = "-"
    while True:
        page = redis.xrange(key, min=start, max="+", count=page_size)
        for entry_id, fields in page:
            yield {"id": _text(entry_id), **{_text(k): _text(v) for k, v in fields.items()}}
        if len(page) < page_size:
            return
        start = _next_id(_text(page[-1][0]))


def audit_trail(redis, sighting_id: str | None = None, page_size: int = AUDIT_PAGE) -> list[dict[str, str]]:
    """Every audit entry (oldest first), or those of one sighting, wherever they are in the global stream.

    A sighting's trail is its own stream; a sighting without one (attempts recorded before per-sighting streams
    existed) is looked up by paging through the whole global stream."""
    if sighting_id is not None and redis.exists(keys.confirmation_audit_stream(sighting_id)):
        return list(read_stream(redis, keys.confirmation_audit_stream(sighting_id), page_size))
    return [entry for entry in read_stream(redis, keys.CONFIRMATIONS_AUDIT_STREAM, page_size)
            if sighting_id is None or entry.get("sighting_id") == sighting_id]

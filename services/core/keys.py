"""The Redis keys of the chain, in one place (as services.core.topics is for the Kafka topics), and the S3 key of
an uploaded photo.

The key strings are a contract with the data already in Redis (and S3): changing one orphans that data. Every
module builds its keys here; tests/unit/test_keys.py fails on a key literal written anywhere else under services/.
docs/interfaces.md "Redis keys" has the same table, with each key's expiry.

    key                                      type   holds (written by -> read by)
    sighting:<id>                            hash   metadata (SightingMetadata JSON), content_type, bucket, key,
                                                    declared_size, owner, upload_method, created_at; the bridge adds
                                                    uploaded_at, size, etag (gateway, bridge, reconciler -> every
                                                    stage, reindex, re-embed, webhooks)
    sightings:index                          zset   sighting id -> created_at: every sighting (gateway -> listing,
                                                    review queue, individuals)
    sightings:owner:<app>                    zset   sighting id -> created_at: one app's sightings (gateway ->
                                                    listing)
    sightings:open                           zset   sighting id -> created_at: sightings that may still need the
                                                    reconciler (gateway, bridge -> reconciler, which removes them)
    encounter:<app>:<encounter>              set    the sighting ids of one app's encounter (gateway -> gateway)
    quota:sightings:<app>:<window>:<n>       string INCR counter of an app's sightings in minute or day n (epoch //
                                                    span) (gateway -> gateway)
    review:awaiting                          zset   sighting id -> created_at: sightings awaiting a decision
                                                    (gateway; confirmations remove -> review queue)
    review:awaiting:built                    string marker: review:awaiting was built from sightings:index (gateway
                                                    -> gateway)
    bridge:seen:<s3 key>:<etag>              string "claimed:<owner>" | "done" (older bridges: "claimed"): an upload
                                                    event's dedupe claim (bridge -> bridge)
    bridge:alive:<owner>                     string "<host>:<pid>": the bridge process with this owner token is alive
                                                    (short TTL, refreshed) (bridge -> bridge: claims of a gone owner
                                                    are taken over)
    embedded:<id>                            string model version: the worker produced the embedding (worker ->
                                                    worker, reconciler)
    failure:<id>                             string JSON {stage, reason, detail, failed_at}: a permanent failure
                                                    (any stage -> gateway, reconciler, chaos)
    model-version:<model_version>            string JSON {model_version, model_ids, registered_at} (worker ->
                                                    matcher, reindex)
    embedding:<id>                           string JSON of the SightingEmbedded record (matcher -> reindex,
                                                    confirmations, review queue, re-embed)
    identification:<id>                      string JSON of topics.Identification (SET NX: the first result is kept)
                                                    (matcher -> gateway, reconciler, chaos)
    announced:<id>                           string marker: the identification was announced (matcher, reconciler ->
                                                    matcher, reconciler)
    identifications:unannounced              zset   sighting id -> identified_at: stored, not yet announced (matcher
                                                    -> reconciler)
    identifications                          stream {sighting_id, identification}: one entry per announced
                                                    identification (matcher, reconciler -> reconciler's topic audit)
    matcher:parked                           zset   sighting id -> first parked at: sightings of a model the gallery
                                                    was not built with (matcher -> matcher, reconciler)
    matcher:parked:records                   hash   sighting id -> JSON {record, reason, detail, parked_at} (matcher
                                                    -> matcher)
    reconciler:lease                         string the token of the reconciler running a pass (Lua scripts,
                                                    KEYS[1]) (reconciler -> reconciler)
    reconciler:seen:<topic>                  zset   record key -> record timestamp: what the topic audit read
                                                    (reconciler -> reconciler)
    reconciler:position:<topic>              hash   "partitions" and "<p>" -> the topic audit's read positions
                                                    (reconciler -> reconciler)
    reconciler:checked:<topic>               string the identifications stream id the audit checked up to
                                                    (reconciler -> reconciler)
    webhooks:pending                         hash   delivery id -> JSON of a job, from hand-over to outcome
                                                    (webhooks -> webhooks)
    webhooks:retry:<app>                     zset   delivery id -> due time (webhooks -> webhooks)
    webhooks:retry                           zset   the single retry set of older releases ((older releases) ->
                                                    webhooks (moves it into the per-app sets))
    webhooks:delivered:<delivery id>         string attempts: the delivery succeeded (webhooks -> webhooks)
    webhooks:dead-letter                     stream {delivery_id, app, event, sighting_id, reason, attempts,
                                                    last_error, body, dead_at} (webhooks -> operators, chaos)
    confirmation:<id>                        hash   a decision: action, individual_id, researcher, predicted,
                                                    confirmed_at, gallery_version, published (confirmations ->
                                                    gateway, reindex, identities)
    confirmations:index                      zset   sighting id -> confirmed_at (confirmations -> reindex,
                                                    identities, gateway)
    confirmations:new-ids                    set    individual ids assigned by `new` decisions (confirmations ->
                                                    confirmations, gateway, identities)
    confirmations:audit                      stream every attempt, accepted or refused, with the reason
                                                    (confirmations -> `whaleid confirmations audit`)
    confirmations:audit:<id>                 stream the attempts on one sighting (confirmations -> `whaleid
                                                    confirmations audit`)
    confirmations:individual:<individual_id> zset   sighting id -> confirmed_at: confirm/new decisions naming the
                                                    individual (confirmations, gateway -> gateway (individual
                                                    pages))
    confirmations:individual:built           string marker: the per-individual sets were built (gateway -> gateway)
    identities:aliases                       hash   old id -> live id (merges, renames; flattened) (identities ->
                                                    gateway, confirmations, reindex)
    identities:names                         set    ids that took part in edits + new names (identities -> gateway,
                                                    confirmations)
    identities:ops                           zset   merge id -> at (identities -> identities)
    identities:op:<merge_id>                 hash   one identity edit (+ `changes`: the alias entries before, for
                                                    undo) (identities -> identities)
    identities:log                           stream every identity edit attempt (identities -> identities)
    chaos:maxmemory:filler:<n>               string filler of the chaos suite's Redis-full scenario (chaos -> chaos)

    S3, settings.sightings_bucket:
    uploads/<sighting_id>.<ext>              the uploaded photo, ext jpg | png | webp from its content type (the app's
                                             presigned PUT -> bridge, worker, reconciler, re-embed)
"""

from __future__ import annotations

# --- S3: the uploaded photo --------------------------------------------------------------------------------------

UPLOAD_PREFIX = "uploads/"
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
CONTENT_TYPES = {ext: content_type for content_type, ext in EXTENSIONS.items()}


class BadUploadKey(ValueError):
    """An S3 key that is not `uploads/<sighting_id>.<ext>`."""


def upload_key(sighting_id: str, content_type: str) -> str:
    return f"{UPLOAD_PREFIX}{sighting_id}.{EXTENSIONS[content_type]}"


def parse_upload_key(key: str) -> tuple[str, str]:
    """(sighting_id, extension) of a decoded key `uploads/<sighting_id>.<ext>`; BadUploadKey otherwise."""
    if not key.startswith(UPLOAD_PREFIX):
        raise BadUploadKey(f"key {key!r} is not under {UPLOAD_PREFIX}")
    name = key[len(UPLOAD_PREFIX):]
    sighting_id, dot, ext = name.rpartition(".")
    if "/" in name or not dot or not sighting_id:
        raise BadUploadKey(f"key {key!r} is not {UPLOAD_PREFIX}<sighting_id>.<ext>")
    if ext not in CONTENT_TYPES:
        raise BadUploadKey(f"key {key!r} has extension {ext!r}; expected one of {', '.join(CONTENT_TYPES)}")
    return sighting_id, ext


# --- sightings (gateway, bridge) ---------------------------------------------------------------------------------

SIGHTINGS_INDEX_KEY = "sightings:index"
OPEN_SIGHTINGS_KEY = "sightings:open"
REVIEW_AWAITING_KEY = "review:awaiting"
REVIEW_AWAITING_BUILT_KEY = "review:awaiting:built"


def sighting_key(sighting_id: str) -> str:
    return f"sighting:{sighting_id}"


def owner_sightings_key(owner: str) -> str:
    return f"sightings:owner:{owner}"


def encounter_key(owner: str, encounter: str) -> str:
    """One app's encounter (app-scoped: two apps' encounter ids never mix)."""
    return f"encounter:{owner}:{encounter}"


def quota_key(app: str, window: str, slot: int) -> str:
    """The counter of `app`'s sightings in window `window` ("minute" | "day") number `slot` (epoch // span)."""
    return f"quota:sightings:{app}:{window}:{slot}"


def bridge_seen_key(s3_key: str, token: str) -> str:
    return f"bridge:seen:{s3_key}:{token}"


def bridge_alive_key(owner: str) -> str:
    """A bridge process's liveness key (its owner token names its claims); `bridge_alive_key("")` is the prefix."""
    return f"bridge:alive:{owner}"


# --- worker and matcher ------------------------------------------------------------------------------------------

MODEL_VERSION_PREFIX = "model-version:"
UNANNOUNCED_INDEX = "identifications:unannounced"
IDENTIFICATIONS_STREAM = "identifications"
PARKED_INDEX = "matcher:parked"
PARKED_RECORDS = "matcher:parked:records"


def embedded_key(sighting_id: str) -> str:
    return f"embedded:{sighting_id}"


def failure_key(sighting_id: str) -> str:
    return f"failure:{sighting_id}"


def model_version_key(model_version: str) -> str:
    return MODEL_VERSION_PREFIX + model_version


def identification_key(sighting_id: str) -> str:
    return f"identification:{sighting_id}"


def embedding_key(sighting_id: str) -> str:
    return f"embedding:{sighting_id}"


def announced_key(sighting_id: str) -> str:
    return f"announced:{sighting_id}"


# --- reconciler ----------------------------------------------------------------------------------------------------

RECONCILER_LEASE_KEY = "reconciler:lease"


def reconciler_seen_key(topic: str) -> str:
    return f"reconciler:seen:{topic}"


def reconciler_position_key(topic: str) -> str:
    return f"reconciler:position:{topic}"


def reconciler_checked_key(topic: str) -> str:
    return f"reconciler:checked:{topic}"


# --- webhooks ------------------------------------------------------------------------------------------------------

WEBHOOKS_PENDING_KEY = "webhooks:pending"
WEBHOOKS_LEGACY_RETRY_KEY = "webhooks:retry"
WEBHOOKS_DEAD_LETTER_STREAM = "webhooks:dead-letter"


def webhooks_retry_key(app: str) -> str:
    return f"webhooks:retry:{app}"


def webhooks_delivered_key(delivery_id: str) -> str:
    return f"webhooks:delivered:{delivery_id}"


# --- confirmations and identities (curation) -----------------------------------------------------------------------

CONFIRMATIONS_INDEX_KEY = "confirmations:index"
CONFIRMATIONS_NEW_IDS_KEY = "confirmations:new-ids"
CONFIRMATIONS_AUDIT_STREAM = "confirmations:audit"
INDIVIDUAL_CONFIRMATIONS_BUILT_KEY = "confirmations:individual:built"
IDENTITY_ALIASES_KEY = "identities:aliases"
IDENTITY_NAMES_KEY = "identities:names"
IDENTITY_OPS_KEY = "identities:ops"
IDENTITY_LOG_STREAM = "identities:log"


def confirmation_key(sighting_id: str) -> str:
    return f"confirmation:{sighting_id}"


def confirmation_audit_stream(sighting_id: str) -> str:
    return f"confirmations:audit:{sighting_id}"


def individual_confirmations_key(individual_id: str) -> str:
    return f"confirmations:individual:{individual_id}"


def identity_op_key(op_id: str) -> str:
    return f"identities:op:{op_id}"


# --- chaos suite ---------------------------------------------------------------------------------------------------


def chaos_filler_key(n: int) -> str:
    return f"chaos:maxmemory:filler:{n}"

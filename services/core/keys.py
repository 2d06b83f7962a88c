"""The Redis keys of the chain, in one place (as services.core.topics is for the Kafka topics), and the S3 key of
an uploaded photo.

The key strings are a contract with the data already in Redis (and S3): changing one loses that data. Every
module builds its keys here; tests/unit/test_keys.py fails on a key written anywhere else under services/.

Redis (type; written by -> read by):

    sighting:<id>                       hash: metadata (SightingMetadata JSON), content_type, bucket, key,
                                        declared_size, created_at, owner; the bridge adds uploaded_at, size, etag
                                        (gateway, bridge, reconciler -> every stage, reindex, re-embed)
    sightings:index                     sorted set, sighting id -> created_at: every sighting (gateway -> listing,
                                        review queue)
    sightings:owner:<app>               sorted set, sighting id -> created_at: one app's sightings (gateway -> listing)
    sightings:open                      sorted set, sighting id -> created_at: sightings that may still need the
                                        reconciler (gateway, bridge -> reconciler, which removes them)
    encounter:<app>:<encounter>         set of sighting ids: one app's encounter (gateway -> gateway)
    quota:sightings:<app>:<window>:<n>  string counter (INCR, TTL 2 windows): sightings created by an app in minute
                                        or day n (gateway)
    review:awaiting                     sorted set, sighting id -> created_at: sightings awaiting a decision
                                        (gateway adds, confirmations remove -> review queue)
    review:awaiting:built               marker string: review:awaiting was built from sightings:index (gateway)
    bridge:seen:<s3 key>:<etag>         string "claimed" | "done": an upload event's dedupe claim (bridge)
    embedded:<id>                       string, the model version: the worker produced its embedding (worker ->
                                        worker, reconciler)
    failure:<id>                        string, JSON {stage, reason, detail, failed_at}: a permanent failure (any
                                        stage -> gateway, reconciler, chaos)
    model-version:<model_version>       string, JSON {model_version, model_ids, registered_at} (worker -> matcher,
                                        reindex)
    embedding:<id>                      string, JSON of the SightingEmbedded record (matcher -> reindex,
                                        confirmations, review queue, re-embed)
    identification:<id>                 string, JSON of topics.Identification (matcher, SET NX -> gateway,
                                        reconciler, webhooks, chaos)
    announced:<id>                      marker string: the identification was announced (matcher, reconciler)
    identifications:unannounced         sorted set, sighting id -> identified_at (matcher -> reconciler)
    identifications                     stream: one entry per announced identification {sighting_id,
                                        identification} (matcher -> reconciler's audit)
    matcher:parked                      sorted set, sighting id -> parked_at: sightings of an unserved model (matcher
                                        -> matcher, reconciler)
    matcher:parked:records              hash, sighting id -> JSON {record, reason, detail, parked_at} (matcher)
    reconciler:lease                    string, the holder's token (PX TTL): one reconciler pass at a time
    reconciler:seen:<topic>             hash, sighting id -> when the reconciler's topic audit saw it on <topic>
    reconciler:position:<topic>         hash, partition -> next offset of the reconciler's topic audit
    reconciler:checked:<topic>          string, the identifications stream id the audit has checked up to
    webhooks:pending                    hash, delivery id -> JSON of a pending delivery job (webhooks)
    webhooks:retry:<app>                sorted set, delivery id -> when it is due (webhooks)
    webhooks:retry                      sorted set of the releases before per-app lanes (webhooks migrates it)
    webhooks:delivered:<delivery id>    string, attempts: the delivery succeeded (webhooks, TTL)
    webhooks:dead-letter                stream: deliveries given up {delivery_id, app, reason, ...} (webhooks ->
                                        operators, chaos)
    confirmation:<id>                   hash: a researcher's decision (confirmations -> gateway, reindex,
                                        identities)
    confirmations:index                 sorted set, sighting id -> confirmed_at (confirmations -> reindex,
                                        identities, gateway)
    confirmations:new-ids               set: individual ids created by "new" decisions (confirmations -> gateway,
                                        identities)
    confirmations:audit                 stream: every decision (confirmations -> `whaleid confirmations audit`)
    confirmations:audit:<id>            stream: the decisions on one sighting (confirmations)
    confirmations:individual:<ind>      sorted set, sighting id -> confirmed_at: decisions naming one individual
                                        (confirmations, gateway -> gateway's individuals)
    confirmations:individual:built      marker string: the per-individual indexes were built (gateway)
    identities:aliases                  hash, alias -> individual id it was merged/renamed into (identities)
    identities:names                    set: individual ids created by renames and merges (identities)
    identities:ops                      sorted set, op id -> at: identity edits (identities)
    identities:op:<op id>               hash: one identity edit (identities)
    identities:log                      stream: the identity edits' log (identities)
    chaos:maxmemory:filler:<n>          string: filler written by the chaos suite's maxmemory scenario (chaos)

S3 (settings.sightings_bucket):

    uploads/<sighting_id>.<ext>         the uploaded photo (ext from its content type: jpg, png, webp)
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

"""What openapi.py says about each route (by route name) and the response schemas not generated from a record.

The request schemas and the record schemas (SightingMetadata, Identification, Confirmation) are generated in
openapi.components; the ones here describe the JSON the handlers assemble (tests validate real answers).
"""

from __future__ import annotations

from services.chain.gateway import encounters
from services.chain.gateway.listing import STATUSES
from services.curation.operations import identities
from services.curation.operations.confirmations import ACTIONS


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(kind: str) -> dict:
    return {"type": [kind, "null"]}


def _nullable_ref(name: str) -> dict:
    return {"oneOf": [_ref(name), {"type": "null"}]}


_STR = {"type": "string"}
_NUM = {"type": "number"}
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}

SCHEMAS = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": _STR, "code": _STR, "problems": {"type": "array", "items": _STR},
                             "retry_after_s": {"type": "integer", "description": "429: seconds to wait (= Retry-After)"}}},
    "ConfirmationRequest": {
        "type": "object", "required": ["action"], "additionalProperties": False,
        "properties": {"action": {"type": "string", "enum": list(ACTIONS)},
                       "individual_id": {"type": "string", "maxLength": 128,
                                         "description": "required by confirm; refused by new"},
                       "researcher": {"type": "string", "description": "optional; must be the credential's name"}}},
    "ConfirmationAnswer": {"type": "object", "required": ["confirmation"],
                           "properties": {"confirmation": _ref("Confirmation"), "created": {"type": "boolean"}}},
    "SightingCreated": {
        "type": "object",
        "required": ["sighting_id", "upload_method", "upload_url", "upload_headers", "upload_max_bytes", "key",
                     "expires_in"],
        "properties": {"sighting_id": _STR, "upload_method": {"type": "string", "enum": ["PUT", "POST"]},
                       "upload_url": _STR, "upload_headers": _STRINGS, "upload_fields": _STRINGS,
                       "upload_max_bytes": {"type": "integer"}, "key": _STR, "expires_in": {"type": "integer"}}},
    "Sighting": {
        "type": "object", "required": ["sighting_id", "status", "metadata", "key", "owner", "created_at"],
        "properties": {"sighting_id": _STR, "status": {"type": "string", "enum": list(STATUSES)},
                       "metadata": _ref("SightingMetadata"), "key": _STR, "owner": _STR, "created_at": _NUM,
                       "uploaded_at": _nullable("number"), "identification": _ref("Identification"),
                       "failure": {"type": "object"}, "encounter": _nullable_ref("Encounter")},
        "description": "metadata has no latitude/longitude for the app role; `encounter` only when the sighting "
                       "was sent with one (GET /v1/sightings/{id})"},
    "Encounter": encounters.SCHEMA,
    "SightingPage": {"type": "object", "required": ["items", "next_cursor"],
                     "properties": {"items": {"type": "array", "items": _ref("Sighting")},
                                    "next_cursor": _nullable("string")}},
    "ReviewCandidate": {"type": "object", "required": ["individual_id", "score", "new_individual", "above_threshold"],
                        "properties": {"individual_id": _STR, "score": _NUM, "new_individual": {"type": "boolean"},
                                       "above_threshold": {"type": "boolean"},
                                       "reference_photos": {"type": "array", "items": _STR,
                                                            "description": "presigned GETs, newest first"}}},
    "ReviewItem": {
        "type": "object",
        "required": ["sighting_id", "photo_url", "crop_box", "metadata", "species", "threshold", "margin",
                     "candidates"],
        "properties": {"sighting_id": _STR, "photo_url": _nullable("string"), "photo_expires_in": {"type": "integer"},
                       "crop_box": {"type": ["array", "null"], "items": _NUM},
                       "crop_source": _nullable("string"), "metadata": _ref("SightingMetadata"), "species": _STR,
                       "threshold": _nullable("number"), "margin": _nullable("number"),
                       "candidates": {"type": "array", "items": _ref("ReviewCandidate")},
                       "gallery_version": _STR, "identified_at": _NUM,
                       "encounter": {
                           "type": "object", "required": ["id", "sightings", "photos"],
                           "description": "an encounter's photos as one item: the candidates are pooled over "
                                          "them; a decision is recorded for each of `sightings`",
                           "properties": {"id": _STR, "sightings": {"type": "array", "items": _STR},
                                          "photos": {"type": "array", "items": {
                                              "type": "object", "required": ["sighting_id", "photo_url"],
                                              "properties": {"sighting_id": _STR,
                                                             "photo_url": _nullable("string"),
                                                             "crop_box": {"type": ["array", "null"],
                                                                          "items": _NUM}}}}}}}},
    "ReviewQueue": {"type": "object", "required": ["items", "total"],
                    "properties": {"items": {"type": "array", "items": _ref("ReviewItem")},
                                   "total": {"type": "integer"}}},
    "Individuals": {"type": "object", "required": ["individuals", "total"],
                    "properties": {"individuals": {"type": "array", "items": _STR}, "total": {"type": "integer"},
                                   "gallery_version": _nullable("string")}},
    "IndividualSighting": {
        "type": "object", "required": ["sighting_id", "action", "confirmed_at", "metadata", "photo_url"],
        "properties": {"sighting_id": _STR, "action": {"type": "string", "enum": ["confirm", "new"]},
                       "researcher": _STR, "confirmed_at": _NUM, "metadata": _ref("SightingMetadata"),
                       "photo_url": _nullable("string"),
                       "recorded_as": {"type": "string", "description": "the id the decision named (a merged "
                                                                        "or old id resolves to this individual)"}}},
    "Individual": {
        "type": "object", "required": ["individual_id", "in_gallery", "gallery_photos", "sightings"],
        "properties": {"individual_id": _STR, "in_gallery": {"type": "boolean"},
                       "requested_id": {"type": "string", "description": "the id asked for (merged or renamed "
                                                                          "ids resolve to the survivor)"},
                       "merged_from": {"type": "array", "items": _STR,
                                       "description": "ids merged into it or its old names"},
                       "gallery_version": _nullable("string"),
                       "gallery_photos": {"type": "array", "items": _STR},
                       "sightings": {"type": "array", "items": _ref("IndividualSighting"),
                                     "description": "confirmed sightings, oldest photo first"}}},
    "GalleryState": {"type": "object", "required": ["current"],
                     "properties": {"current": {"type": ["object", "null"]},
                                    "versions": {"type": "array", "items": {"type": "object"}}}},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": _STR, "redis": _STR}},
    "MergeRequest": identities.request_schema("MergeRequest"),
    "RenameRequest": identities.request_schema("RenameRequest"),
    "IdentityOperation": identities.operation_schema(),
    "IdentityAnswer": {"type": "object", "required": ["operation"],
                       "properties": {"operation": _ref("IdentityOperation")}},
    "IdentityLog": {"type": "object", "required": ["operations"],
                    "properties": {"operations": {"type": "array", "items": _ref("IdentityOperation"),
                                                  "description": "newest first"}}},
    "SimilarPair": identities.SIMILAR_PAIR_SCHEMA,
    "SimilarIndividuals": {"type": "object", "required": ["gallery_version", "threshold", "pairs"],
                           "properties": {"gallery_version": _STR, "threshold": _NUM, "total": {"type": "integer"},
                                          "pairs": {"type": "array", "items": _ref("SimilarPair"),
                                                    "description": "most similar first"}}},
}

_HTML = ("text/html", None)
_SIGHTING_404 = ("unknown sighting (or another app's)", "Error")

OPERATIONS = {
    "healthz": {"summary": "Liveness: Redis reachable", "responses": {"200": ("healthy", "Health"),
                                                                       "503": ("Redis unavailable", "Health")}},
    "metrics": {"summary": "Prometheus metrics", "responses": {"200": ("text exposition format", ("text/plain", None))}},
    "create_sighting": {
        "summary": "Create a sighting and get its one presigned upload",
        "request": "SightingRequest",
        "responses": {"201": ("created: send the photo as upload_method says", "SightingCreated"),
                      "400": ("invalid body (every problem listed)", "Error"),
                      "409": ("encounter_full: the encounter has encounter_max_members sightings", "Error"),
                      "429": ("quota_exceeded: the app's sightings quota for this minute or day is spent; "
                              "Retry-After says when to retry", "Error")}},
    "list_sightings": {
        "summary": "Sightings newest first (apps: their own without GPS; researchers: all), cursor-paginated",
        "query": {"observer": "only this observer", "status": "pending | identified | failed",
                  "since": "created at or after (ISO 8601 date-time or epoch seconds)",
                  "cursor": "next_cursor of the previous page", "limit": "items per page (default 50)"},
        "responses": {"200": ("a page; next_cursor null at the end", "SightingPage"),
                      "400": ("bad parameter", "Error")}},
    "get_sighting": {"summary": "One sighting with its status and identification (top-5 candidates)",
                     "responses": {"200": ("the sighting", "Sighting"), "404": _SIGHTING_404}},
    "confirmation": {
        "summary": "Record a researcher's decision: confirm, new (individual) or reject",
        "request": "ConfirmationRequest",
        "responses": {"201": ("stored and announced", "ConfirmationAnswer"),
                      "200": ("the same decision was already stored", "ConfirmationAnswer"),
                      "400": ("invalid body", "Error"), "404": _SIGHTING_404,
                      "409": ("refused: unknown individual, conflicting decision, no embedding", "Error"),
                      "503": ("model store or Kafka unavailable; repeat the request", "Error")}},
    "confirmation_get": {"summary": "The stored decision of a sighting",
                         "responses": {"200": ("the decision", "ConfirmationAnswer"),
                                       "404": ("no decision yet", "Error")}},
    "gallery": {"summary": "The served gallery pointer and every complete version",
                "responses": {"200": ("pointer and versions", "GalleryState"), "409": ("model store refused", "Error")}},
    "gallery_rollback": {"summary": "Move the gallery pointer back one version",
                         "responses": {"200": ("the new pointer", "GalleryState"),
                                       "409": ("nothing to roll back to", "Error")}},
    "review_queue": {
        "summary": "Identified sightings awaiting a decision, most uncertain first, with presigned photos",
        "query": {"species": "the identification's species or the species hint", "since": "taken on or after (date)",
                  "until": "taken on or before (date)", "observer": "this observer (case-insensitive)",
                  "near": "lat,lon", "radius_km": "with near (default 50)", "limit": "items (default 20)"},
        "responses": {"200": ("the queue", "ReviewQueue"), "400": ("bad parameter", "Error")}},
    "individuals": {"summary": "Individual ids (served gallery + confirmed new ones) containing q",
                    "query": {"q": "substring of the id"},
                    "responses": {"200": ("matching ids (at most 50)", "Individuals")}},
    "individual": {"summary": "One individual: its gallery photos and confirmed sightings on a timeline",
                   "responses": {"200": ("the individual", "Individual"), "404": ("unknown individual", "Error")}},
    "individual_merge": {
        "summary": "Merge this individual into another: every past decision and gallery entry follows the survivor",
        "description": "The merged id resolves to the survivor from now on (confirmations, the individual page); "
                       "the next `whaleid reindex` publishes the gallery with its rows under the survivor. "
                       "Undo with POST /v1/merges/{merge_id}/undo.",
        "request": "MergeRequest",
        "responses": {"201": ("merged", "IdentityAnswer"), "400": ("invalid body", "Error"),
                      "404": ("unknown individual", "Error"), "409": ("already one individual", "Error"),
                      "503": ("model store or Redis unavailable", "Error")}},
    "individual_rename": {
        "summary": "Give an individual a new name (refused when the name exists, in any spelling)",
        "request": "RenameRequest",
        "responses": {"201": ("renamed", "IdentityAnswer"), "400": ("invalid body or name", "Error"),
                      "404": ("unknown individual", "Error"),
                      "409": ("the name exists (the answer says where)", "Error"),
                      "503": ("model store or Redis unavailable", "Error")}},
    "merge_undo": {
        "summary": "Undo a merge or rename: both ids are restored as before, also in the next re-index",
        "responses": {"200": ("undone", "IdentityAnswer"), "404": ("unknown merge id", "Error"),
                      "409": ("already undone, or a later operation involving the same ids must be undone first",
                              "Error")}},
    "merges": {"summary": "The merge and rename log, newest first",
               "query": {"individual": "only operations involving this id (or an id resolving to it)",
                         "limit": "items (default 50)"},
               "responses": {"200": ("the operations", "IdentityLog"), "400": ("bad parameter", "Error")}},
    "individuals_similar": {
        "summary": "Catalogued individuals too similar to each other (candidates for a merge)",
        "description": "Pairs whose mean embeddings in the served gallery score at least the new_individual "
                       "threshold of their species (the tuned global one otherwise), merges applied.",
        "query": {"limit": "pairs (default 50)"},
        "responses": {"200": ("the pairs", "SimilarIndividuals"), "400": ("bad parameter", "Error"),
                      "503": ("no gallery served", "Error")}},
    "review_page": {"summary": "The review page (HTML; sign in with a researcher token)",
                    "responses": {"200": ("the page", _HTML)}},
    "review_js": {"summary": "The review page's script", "responses": {"200": ("JavaScript", ("text/javascript", None))}},
    "review_css": {"summary": "The review page's style", "responses": {"200": ("CSS", ("text/css", None))}},
    "openapi": {"summary": "This document (OpenAPI 3.1)", "responses": {"200": ("the document", ("application/json", None))}},
    "docs": {"summary": "This document as HTML", "responses": {"200": ("the reference", _HTML)}},
}

"""Merging and renaming individuals, with undo, and the "too similar individuals" list (services.curation.operations.identities)
against the session's real Redis and S3: the alias map and the log in Redis, confirmations resolving merged ids,
`reindex` relabelling old and new gallery rows (and restoring them after an undo), the gateway's routes (in-process
aiohttp server, answers validated against /openapi.json) and the `whaleid individuals` commands."""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid

import jsonschema
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from services.cli.main import main as whaleid
from services.core import keys
from services.core.identification import Tuning, build_gallery
from services.curation.operations.confirmations import ConfirmationService, stored_confirmation
from services.curation.operations.identities import (
    ORIGINAL_KEY,
    IdentityRefused,
    IdentityService,
    parse_request,
    read_aliases,
    request_schema,
    similar_individuals,
)
from services.curation.operations.known import CurrentGalleryIndividuals
from services.curation.operations.publish import publish_gallery
from services.curation.operations.reindex import reindex
from services.devtools.stack.ports import free_port
from support.operations import Clusters, isolated_catalogue, seed_sighting

INDIVIDUALS = [f"ind-{i}" for i in range(4)]
PER_INDIVIDUAL = 3
_db_numbers = itertools.cycle(range(6, 11))  # a Redis database of its own per test (flushed first)
APP_TOKEN = "identities-app-token"
RESEARCHER_TOKEN = "identities-researcher-token"  # the researcher dr-fluke


@pytest.fixture
def env(stack, monkeypatch):
    with isolated_catalogue(stack.settings, monkeypatch, next(_db_numbers), "galleries-id", APP_TOKEN,
                            RESEARCHER_TOKEN) as env:
        yield env


def _publish(store, clusters, tmp_path, twins: bool = False) -> str:
    """INDIVIDUALS (PER_INDIVIDUAL rows each); with `twins`, ind-3's photos are ind-2's centre (a duplicate)."""
    rows = [(ind, clusters.sample("ind-2" if twins and ind == "ind-3" else ind))
            for ind in INDIVIDUALS for _ in range(PER_INDIVIDUAL)]
    gallery = build_gallery(np.stack([v for _, v in rows]), [i for i, _ in rows], ["humpback_whale"] * len(rows),
                            [f"train-{n}.jpg" for n in range(len(rows))])
    tuning = Tuning(threshold=0.5).save(tmp_path / f"tuning-{uuid.uuid4().hex[:6]}.json")
    return publish_gallery(store, gallery, tuning, reason="identities test gallery")


def _services(store, client):
    known = CurrentGalleryIndividuals(store, refresh_s=0)
    return IdentityService(client, known), ConfirmationService(client, known)


def _entries(store, version) -> list[dict]:
    raw = store._get_bytes(store._key(version, "entries.jsonl")).decode()
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def _labels(store, version) -> dict[str, list[str]]:
    """image -> [individual_id, original id or '']."""
    return {e["image"]: [e["individual_id"], e["metadata"].get(ORIGINAL_KEY, "")] for e in _entries(store, version)}


# --------------------------------------------------------------------------- requests
BODIES = [
    ("MergeRequest", {"into": "IND-7"}), ("MergeRequest", {"into": "IND-7", "note": "same notch"}),
    ("MergeRequest", {"into": "IND-7", "note": ""}), ("MergeRequest", {}), ("MergeRequest", {"into": ""}),
    ("MergeRequest", {"into": "   "}), ("MergeRequest", {"into": 7}), ("MergeRequest", {"into": None}),
    ("MergeRequest", {"into": "x", "extra": 1}), ("MergeRequest", {"into": "x" * 257}),
    ("MergeRequest", {"into": "x", "note": "n" * 501}), ("MergeRequest", {"into": "x", "note": None}),
    ("RenameRequest", {"new_id": "Moby-Dick_2.0"}), ("RenameRequest", {"new_id": "has space"}),
    ("RenameRequest", {"new_id": "-leading"}), ("RenameRequest", {"new_id": "x" * 128}),
    ("RenameRequest", {"new_id": "x" * 129}), ("RenameRequest", {"new_id": "a/b"}), ("RenameRequest", {}),
    ("MergeRequest", []),
]


@pytest.mark.parametrize(("name", "body"), BODIES, ids=[str(n) for n in range(len(BODIES))])
def test_the_request_schemas_agree_with_the_validation(name, body):
    try:
        parse_request(name, body)
        accepted = True
    except IdentityRefused as exc:
        assert exc.status == 400
        accepted = False
    assert jsonschema.Draft202012Validator(request_schema(name)).is_valid(body) == accepted


# --------------------------------------------------------------------------- merge, reindex, undo, reindex
def test_merge_follows_decisions_and_gallery_then_undo_restores_both(env, tmp_path):
    _, store, client = env
    clusters = Clusters()
    v1 = _publish(store, clusters, tmp_path)
    ids, confirmations = _services(store, client)
    before = seed_sighting(client, clusters.sample("ind-1"), [("ind-1", 0.9)])
    confirmations.submit(before, {"action": "confirm", "individual_id": "ind-1", "researcher": "dr-fluke"})
    v2 = reindex(store, client).new_version  # the confirmed sighting enters under ind-1
    assert _labels(store, v2)[f"sighting/{before}"] == ["ind-1", ""]

    op = ids.merge("ind-1", {"into": "ind-0", "note": "same dorsal notch"}, "dr-fluke")
    assert (op.kind, op.source, op.target, op.researcher, op.gallery_version) == ("merge", "ind-1", "ind-0",
                                                                                  "dr-fluke", v2)
    assert read_aliases(client) == {"ind-1": "ind-0"} and ids.resolve("ind-1") == "ind-0"
    assert "ind-1" not in ids.live_ids() and "ind-0" in ids.live_ids()
    # the past decision is untouched (it still names ind-1) and follows the survivor wherever ids are resolved
    assert stored_confirmation(client, before).individual_id == "ind-1"
    # a confirmation into the old id resolves to the survivor; repeating the old decision is not a conflict
    after = seed_sighting(client, clusters.sample("ind-1"), [("ind-1", 0.8)])
    conf, created = confirmations.submit(after, {"action": "confirm", "individual_id": "ind-1",
                                                 "researcher": "dr-fluke"})
    assert created and conf.individual_id == "ind-0"
    assert confirmations.submit(before, {"action": "confirm", "individual_id": "ind-1",
                                         "researcher": "dr-fluke"})[1] is False

    # the next gallery version: every row of ind-1 (catalogue and confirmed) is ind-0, its origin kept
    report = reindex(store, client)
    v3 = report.new_version
    assert v3 and report.added == [after] and report.relabelled == {"ind-1 -> ind-0": PER_INDIVIDUAL + 1}
    labels = _labels(store, v3)
    assert labels[f"sighting/{before}"] == ["ind-0", "ind-1"] and labels[f"sighting/{after}"] == ["ind-0", ""]
    assert [v for k, v in labels.items() if k.startswith("train-")].count(["ind-0", "ind-1"]) == PER_INDIVIDUAL
    assert "ind-1" not in store.individuals(v3) and store.version_info(v3)["parent"] == v2
    assert "relabelled" in store.pointer().reason
    assert reindex(store, client).new_version is None  # nothing more to do: same version

    # undo: both ids as before, also in the next version (the decision made after the merge stays ind-0)
    undone = ids.undo(op.merge_id, "dr-tail")
    assert undone.undone and undone.undone_by == "dr-tail" and read_aliases(client) == {}
    assert {"ind-0", "ind-1"} <= ids.live_ids() and ids.resolve("ind-1") == "ind-1"
    report = reindex(store, client)
    assert report.relabelled == {"ind-0 -> ind-1": PER_INDIVIDUAL + 1} and report.added == []
    labels = _labels(store, report.new_version)
    assert labels[f"sighting/{before}"] == ["ind-1", ""] and labels[f"sighting/{after}"] == ["ind-0", ""]
    assert [v for k, v in labels.items() if k.startswith("train-")].count(["ind-1", ""]) == PER_INDIVIDUAL
    assert _entries(store, report.new_version) and "ind-1" in store.individuals(report.new_version)
    with pytest.raises(IdentityRefused) as refused:
        ids.undo(op.merge_id, "dr-fluke")
    assert refused.value.code == "already_undone"

    # the log: who and when, accepted and refused
    events = [(e["event"], e["outcome"], e["researcher"]) for e in ids.log_entries()]
    assert events == [("merge", "accepted", "dr-fluke"), ("undo", "accepted", "dr-tail"),
                      ("undo", "already_undone", "dr-fluke")]
    assert all(float(e["at"]) > 0 for e in ids.log_entries()) and v1 != v2


def test_merge_a_new_individual_and_only_a_merge_publishes(env, tmp_path):
    _, store, client = env
    clusters = Clusters()
    _publish(store, clusters, tmp_path)
    ids, confirmations = _services(store, client)
    sid = seed_sighting(client, clusters.sample("fresh"), [("new_individual", 0.5)])
    new_id = confirmations.submit(sid, {"action": "new", "researcher": "dr-fluke"})[0].individual_id
    v2 = reindex(store, client).new_version
    ids.merge(new_id, {"into": "ind-3"}, "dr-fluke")  # whale-xxxxxxxx into ind-3
    report = reindex(store, client)  # no new confirmation: the merge alone makes a new version
    assert report.added == [] and report.relabelled == {f"{new_id} -> ind-3": 1}
    assert report.new_version not in (None, v2) and new_id not in store.individuals(report.new_version)
    assert reindex(store, client, dry_run=True).new_version is None


def test_rename_refuses_existing_names_and_undo_rules(env, tmp_path):
    _, store, client = env
    clusters = Clusters()
    _publish(store, clusters, tmp_path)
    ids, confirmations = _services(store, client)

    for name, where in (("ind-0", "gallery version"), ("IND-0", "gallery version")):
        with pytest.raises(IdentityRefused) as refused:
            ids.rename("ind-2", {"new_id": name}, "dr-fluke")
        assert (refused.value.status, refused.value.code) == (409, "name_taken") and where in str(refused.value)
    renamed = ids.rename("ind-2", {"new_id": "Moby"}, "dr-fluke")
    assert ids.resolve("ind-2") == "Moby" and "Moby" in ids.live_ids() and "ind-2" not in ids.live_ids()
    with pytest.raises(IdentityRefused) as refused:  # the old name is taken too (it resolves to Moby)
        ids.rename("ind-1", {"new_id": "ind-2"}, "dr-fluke")
    assert refused.value.code == "name_taken" and "merged or renamed into 'Moby'" in str(refused.value)
    with pytest.raises(IdentityRefused) as refused:
        ids.rename("ind-1", {"new_id": "moby"}, "dr-fluke")
    assert refused.value.code == "name_taken"

    # chains flatten; undo goes in reverse order
    merged = ids.merge("ind-3", {"into": "ind-2"}, "dr-fluke")  # ind-2 is Moby now
    assert (merged.source, merged.target) == ("ind-3", "Moby")
    again = ids.rename("Moby", {"new_id": "Moby-Dick"}, "dr-fluke")
    assert read_aliases(client) == {"ind-2": "Moby-Dick", "ind-3": "Moby-Dick", "Moby": "Moby-Dick"}
    with pytest.raises(IdentityRefused) as refused:
        ids.undo(merged.merge_id, "dr-fluke")
    assert refused.value.code == "undo_blocked" and again.merge_id in str(refused.value)
    ids.undo(again.merge_id, "dr-fluke")
    assert read_aliases(client) == {"ind-2": "Moby", "ind-3": "Moby"} and "Moby-Dick" not in ids.live_ids()
    ids.undo(merged.merge_id, "dr-fluke")
    assert read_aliases(client) == {"ind-2": "Moby"}

    # a decision recorded into the new name blocks undoing the rename (it would be orphaned)
    sid = seed_sighting(client, clusters.sample("ind-2"), [("ind-2", 0.9)])
    assert confirmations.submit(sid, {"action": "confirm", "individual_id": "ind-2",
                                      "researcher": "dr-fluke"})[0].individual_id == "Moby"
    with pytest.raises(IdentityRefused) as refused:
        ids.undo(renamed.merge_id, "dr-fluke")
    assert refused.value.code == "undo_blocked" and sid in str(refused.value)
    labels = _labels(store, reindex(store, client).new_version)
    assert labels[f"sighting/{sid}"] == ["Moby", ""]
    assert [v for k, v in labels.items() if k.startswith("train-")].count(["Moby", "ind-2"]) == PER_INDIVIDUAL

    # refusals
    for call, code in ((lambda: ids.merge("nobody", {"into": "ind-0"}, "dr-fluke"), "unknown_individual"),
                       (lambda: ids.merge("ind-0", {"into": "nobody"}, "dr-fluke"), "unknown_individual"),
                       (lambda: ids.merge("ind-2", {"into": "Moby"}, "dr-fluke"), "same_individual"),
                       (lambda: ids.merge("ind-0", {"into": "ind-1"}, ""), "invalid"),
                       (lambda: ids.rename("ind-0", {"new_id": "new_individual"}, "dr-fluke"), "invalid"),
                       (lambda: ids.undo("m-nope", "dr-fluke"), "unknown_merge")):
        with pytest.raises(IdentityRefused) as refused:
            call()
        assert refused.value.code == code
    assert [e["outcome"] for e in ids.log_entries()][-6:] == ["unknown_individual", "unknown_individual",
                                                              "same_individual", "invalid", "invalid",
                                                              "unknown_merge"]
    assert [op.kind for op in ids.operations("ind-3")] == ["merge"]
    assert [op.merge_id for op in ids.operations("Moby")][-1] == renamed.merge_id


def test_similar_individuals_are_listed_until_merged(env, tmp_path):
    _, store, client = env
    clusters = Clusters()
    _publish(store, clusters, tmp_path, twins=True)
    folder = store.download(store.current_version(), tmp_path / "g")
    from services.core.identification.gallery import Gallery

    gallery, tuning = Gallery.load(folder), Tuning.load(folder / "tuning.json")
    pairs = similar_individuals(gallery, tuning)
    assert [(p["a"], p["b"]) for p in pairs] == [("ind-2", "ind-3")]
    assert pairs[0]["score"] > 0.9 and pairs[0]["threshold"] == 0.5 and pairs[0]["photos"] == [3, 3]
    strict = Tuning(threshold=0.5, per_species={"humpback_whale": 0.999})
    assert similar_individuals(gallery, strict) == []  # the species' own threshold applies
    assert similar_individuals(gallery, tuning, {"ind-3": "ind-2"}) == []  # merged: one individual


def test_the_cli_prints_and_undoes(env, tmp_path, capsys):
    _, store, client = env
    _publish(store, Clusters(), tmp_path, twins=True)
    assert whaleid(["individuals", "similar", "--json"]) == 0
    assert [(p["a"], p["b"]) for p in json.loads(capsys.readouterr().out)["pairs"]] == [("ind-2", "ind-3")]
    assert whaleid(["individuals", "merge", "ind-3", "--into", "ind-2", "--researcher", "dr-cli", "--json"]) == 0
    op = json.loads(capsys.readouterr().out)
    assert op["researcher"] == "dr-cli" and client.hget(keys.IDENTITY_ALIASES_KEY, "ind-3") == b"ind-2"
    assert whaleid(["individuals", "similar", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == []
    assert whaleid(["individuals", "rename", "ind-2", "ind-0", "--researcher", "dr-cli"]) == 2
    assert "the name exists ('ind-0' is an individual of gallery version" in capsys.readouterr().err
    assert whaleid(["individuals", "log"]) == 0
    assert op["merge_id"] in capsys.readouterr().out
    assert whaleid(["individuals", "undo", op["merge_id"], "--researcher", "dr-cli"]) == 0
    assert "restores both ids" in capsys.readouterr().out and read_aliases(client) == {}


# --------------------------------------------------------------------------- the gateway's routes
def test_gateway_routes_merge_rename_undo_similar(env, tmp_path):
    from services.chain.gateway.app import build_app
    from services.chain.gateway.openapi import build_document

    settings, store, client = env
    clusters = Clusters()
    _publish(store, clusters, tmp_path, twins=True)
    _, confirmations = _services(store, client)
    sid = seed_sighting(client, clusters.sample("ind-3"), [("ind-3", 0.9)])
    confirmations.submit(sid, {"action": "confirm", "individual_id": "ind-3", "researcher": "dr-fluke"})
    researcher = {"Authorization": f"Bearer {RESEARCHER_TOKEN}"}

    async def run():
        app = build_app(settings)
        document = build_document(app)

        def check(answer_schema, data):
            jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{answer_schema}",
                                             "components": document["components"]}).validate(data)

        async with TestClient(TestServer(app, host="127.0.0.1", port=free_port())) as http:
            async def call(method, path, body=None, headers=researcher):
                response = await http.request(method, path, json=body, headers=headers)
                return response.status, await response.json()

            status, similar = await call("GET", "/v1/individuals/similar")
            assert status == 200 and [(p["a"], p["b"]) for p in similar["pairs"]] == [("ind-2", "ind-3")]
            check("SimilarIndividuals", similar)
            assert (await call("POST", "/v1/individuals/ind-3/merge", {"into": "ind-2"},
                               {"Authorization": f"Bearer {APP_TOKEN}"}))[0] == 403
            assert (await call("POST", "/v1/individuals/ind-3/merge", {"into": "ind-2", "x": 1}))[0] == 400
            status, merged = await call("POST", "/v1/individuals/ind-3/merge", {"into": "ind-2"})
            assert status == 201 and merged["operation"]["researcher"] == "dr-fluke"
            check("IdentityAnswer", merged)
            status, page = await call("GET", "/v1/individuals/ind-3")  # the old id's page is the survivor's
            assert status == 200 and page["individual_id"] == "ind-2" and page["merged_from"] == ["ind-3"]
            assert page["requested_id"] == "ind-3" and page["in_gallery"]
            assert [(s["sighting_id"], s["recorded_as"]) for s in page["sightings"]] == [(sid, "ind-3")]
            check("Individual", page)
            status, found = await call("GET", "/v1/individuals?q=ind-")
            assert found["individuals"] == ["ind-0", "ind-1", "ind-2"]
            assert (await call("GET", "/v1/individuals/similar"))[1]["pairs"] == []
            status, refused = await call("POST", "/v1/individuals/ind-2/rename", {"new_id": "ind-0"})
            assert status == 409 and refused["code"] == "name_taken" and "'ind-0'" in refused["error"]
            status, renamed = await call("POST", "/v1/individuals/ind-2/rename", {"new_id": "Moby"})
            assert status == 201 and renamed["operation"]["target"] == "Moby"
            assert (await call("GET", "/v1/individuals/ind-3"))[1]["individual_id"] == "Moby"
            status, log = await call("GET", "/v1/merges?individual=Moby")
            assert status == 200 and [o["kind"] for o in log["operations"]] == ["rename", "merge"]
            check("IdentityLog", log)
            assert (await call("GET", "/v1/merges?limit=0"))[0] == 400
            status, blocked = await call("POST", f"/v1/merges/{merged['operation']['merge_id']}/undo")
            assert status == 409 and blocked["code"] == "undo_blocked"
            for op in (renamed, merged):
                status, undone = await call("POST", f"/v1/merges/{op['operation']['merge_id']}/undo")
                assert status == 200 and undone["operation"]["undone"] is True
            assert (await call("POST", "/v1/merges/m-nope/undo"))[0] == 404
            assert (await call("GET", "/v1/individuals/ind-3"))[1]["individual_id"] == "ind-3"

    asyncio.run(run())
    assert read_aliases(client) == {}

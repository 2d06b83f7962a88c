"""End to end on real servers: app -> gateway -> presigned PUT to S3 -> SQS event -> bridge -> Kafka -> worker
(S3, validate, crop, Triton ensemble built from an exported b0-tiny snapshot) -> matcher (gallery from the model
store) -> Redis -> gateway GET. The live predictions must equal the offline ones of the same model
(training.embed.Embedder + services.core.identification.Identifier) on the same photos."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
import redis

from services.chain.gateway.client import AppClient
from services.core import keys
from services.devtools.demo.run import app_metadata, hostile_uploads, read_truth, result_row, wait_for_results
from services.devtools.stack.ports import free_port
from support.chain import ServiceProcess, chain_env, stream_counts, wait_announced
from support.model_repo import EPOCHS

TOKEN = "chain-test-token"
SNAPSHOT = EPOCHS[-1]  # the snapshot `exported` holds: served by Triton and evaluated offline


@pytest.fixture(scope="module")
def e2e(stack, tmp_path_factory, exported, snapshot_run, synth_dataset):
    from services.core.identification import Gallery, Tuning, build_gallery
    from services.curation.operations.gallery_versions import GalleryStore
    from services.devtools.demo.model import offline_predictions
    from services.devtools.stack.triton import launch_triton
    from services.serving.model_repo.builder import build_repository
    from training.data import load_dataset
    from training.embed import Embedder

    root = tmp_path_factory.mktemp("chain-e2e")
    data_dir, _ = synth_dataset(individuals=10, seed=21, misspelt_share=0.0)
    data = load_dataset(data_dir)
    run = snapshot_run
    embedder = Embedder.from_run(run, snapshot=SNAPSHOT)
    one_export = root / "exports"
    shutil.copytree(exported / embedder.model_id, one_export / embedder.model_id)
    repository = root / "model_repository"
    build_repository(one_export, repository)

    # the gallery: every train image, embedded offline by the same snapshot; a threshold inside the score range
    images = [row.image for row in data.train]
    embeddings = embedder.embed_files([data.image_path(i) for i in images],
                                      [data.eval_box(i, embedder.eval_box_source) for i in images])
    gallery = build_gallery(embeddings, [r.individual_id for r in data.train], [r.species for r in data.train],
                            images, model_ids=[embedder.model_id])
    gallery_dir = root / "gallery"
    gallery.save(gallery_dir)
    top = gallery.search(embeddings[:10], 2)[0][:, 1]  # nearest other image: a realistic score level
    Tuning(threshold=float(sorted(top)[len(top) // 2])).save(gallery_dir / "tuning.json")
    offline = offline_predictions(embedder, data, gallery_dir, embedder.eval_box_source)

    settings = stack.settings.with_overrides(models_bucket=f"models-{uuid.uuid4().hex[:8]}")
    import boto3

    boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=settings.models_bucket)
    store = GalleryStore.from_settings(settings)
    store.set_current(store.publish(gallery_dir, parent=None, added_sightings=[], individuals=gallery.individual_ids,
                                    size=len(Gallery.load(gallery_dir))), "test_chain")

    triton = launch_triton(repository, root / "triton")
    services: list[ServiceProcess] = []
    try:
        triton.wait_healthy(120)
        port = free_port()
        env = chain_env(stack.state, root / "run", triton.grpc, models_bucket=settings.models_bucket,
                        gateway_port=port, gateway_token=TOKEN)
        for name in ("worker", "matcher", "bridge", "gateway"):
            services.append(ServiceProcess(name, env, root / "logs").start())
        for service in services:
            service.wait_ready()
        client = AppClient(f"http://127.0.0.1:{port}", TOKEN)
        client.wait_healthy(60)
        yield {"client": client, "data": data, "data_dir": data_dir, "offline": offline, "embedder": embedder,
               "redis": redis.Redis.from_url(settings.redis_url), "services": services}
    finally:
        for service in reversed(services):
            service.stop()
        triton.stop()


def upload_test_photos(e2e):
    data, client = e2e["data"], e2e["client"]
    uploads = []
    for index, image in enumerate(sorted(data.test_images)):
        metadata = app_metadata(data, image, e2e["embedder"].eval_box_source, index)
        uploads.append(client.upload(data.image_path(image).read_bytes(), image, "image/jpeg", metadata))
    return uploads


def test_uploads_through_the_gateway_are_identified_as_offline(e2e):
    uploads = upload_test_photos(e2e)
    answers = wait_for_results(e2e["client"], uploads, 180, lambda message: None)
    rows = [result_row(u, answers.get(u.sighting_id)) for u in uploads]
    assert [r["status"] for r in rows] == ["identified"] * len(uploads)
    live = {r["image"]: r["predictions"] for r in rows}
    assert live == {image: e2e["offline"]["predictions"][image] for image in live}

    from services.devtools.demo.report import summarise

    summary = summarise(rows, read_truth(e2e["data_dir"]), e2e["offline"]["predictions"], [])
    assert summary["identified"] == len(uploads)
    assert summary["live_map5"] == pytest.approx(summary["offline_map5"], abs=1e-9)
    assert summary["live_map5"] == pytest.approx(e2e["offline"]["map5"], abs=1e-9)
    wait_announced(e2e["redis"], [u.sighting_id for u in uploads], 60)  # the stream entry follows the result
    assert all(stream_counts(e2e["redis"])[u.sighting_id] == 1 for u in uploads)
    assert summary["p50_ms"] is not None and summary["p50_ms"] > 0


def _with_exif(source: Path, target: Path, latitude: float, longitude: float) -> Path:
    """The photo re-saved with EXIF DateTimeOriginal and GPS (south and west: negative), as a phone writes them."""
    from PIL import Image

    with Image.open(source) as image:
        exif = image.getexif()
        exif.get_ifd(0x8769)[0x9003] = "2026:11:30 09:15:00"
        gps = exif.get_ifd(0x8825)
        gps.update({1: "S", 2: (abs(latitude), 0.0, 0.0), 3: "W", 4: (abs(longitude), 30.0, 0.0)})
        image.save(target, quality=100, exif=exif)
    return target


def test_whaleid_upload_answers_as_the_app_does(e2e, tmp_path, capsys):
    """`whaleid upload` on the photo an app sends: the same five candidates; when and where from its EXIF."""
    from services.cli.main import main

    data, client = e2e["data"], e2e["client"]
    image = sorted(data.test_images)[0]
    box = data.eval_box(image, e2e["embedder"].eval_box_source)
    argv = ["upload", str(data.image_path(image)), "--url", client.base_url, "--token", TOKEN, "--json",
            "--latitude", "64.1", "--longitude", "-21.9", "--observer", "cli-test", "--wait", "120"]
    assert main(argv + (["--crop-box", ",".join(str(v) for v in box)] if box is not None else [])) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["status"] == "identified" and row["photo"] == image
    live = [c["individual_id"] for c in row["answer"]["identification"]["candidates"]]
    assert live == e2e["offline"]["predictions"][image]
    assert json.loads(e2e["redis"].hget(keys.sighting_key(row['sighting_id']), "metadata"))["observer"] == "cli-test"

    photo = _with_exif(data.image_path(image), tmp_path / "phone.jpg", latitude=-12.5, longitude=-45.0)
    assert main(["upload", str(photo), "--url", client.base_url, "--token", TOKEN, "--wait", "120"]) == 0
    printed = capsys.readouterr().out
    assert "phone.jpg: sighting " in printed and " -> " in printed
    sighting_id = printed.split("sighting ")[1].split()[0]
    answer = client.sighting(sighting_id)
    assert answer["status"] == "identified"
    from datetime import datetime, timezone

    taken_at = datetime.fromisoformat(answer["metadata"]["taken_at"].replace("Z", "+00:00"))
    assert taken_at == datetime(2026, 11, 30, 9, 15, tzinfo=timezone.utc)  # from the photo's EXIF
    stored = json.loads(e2e["redis"].hget(keys.sighting_key(sighting_id), "metadata"))  # GPS: researchers only
    assert stored["latitude"] == pytest.approx(-12.5) and stored["longitude"] == pytest.approx(-45.5)

    no_gps = tmp_path / "no-gps.jpg"
    no_gps.write_bytes(data.image_path(image).read_bytes())
    assert main(["upload", str(no_gps), "--url", client.base_url, "--token", TOKEN]) == 2
    assert "no GPS position" in capsys.readouterr().err


def test_an_encounters_photos_are_pooled_in_each_answer(e2e, capsys):
    """Photos sent with one `encounter` id: each answer carries the encounter, its candidates pooled from the
    photos' own identifications by the identification core (best score per individual)."""
    from services.cli.main import main
    from services.core.identification.encounters import pool_predictions

    data, client = e2e["data"], e2e["client"]
    truth = read_truth(e2e["data_dir"])
    by_individual: dict[str, list[str]] = {}
    for image in sorted(data.test_images):
        if truth.get(image, "new_individual") != "new_individual":
            by_individual.setdefault(truth[image], []).append(image)
    group = max(by_individual.values(), key=len, default=[])
    images = (group if len(group) >= 2 else sorted(data.test_images))[:3]
    paths = [str(data.image_path(image)) for image in images]
    encounter = f"dive-{uuid.uuid4().hex[:6]}"
    assert main(["upload", *paths, "--url", client.base_url, "--token", TOKEN, "--latitude", "64.1",
                 "--longitude", "-21.9", "--encounter", encounter, "--wait", "120"]) == 0
    printed = capsys.readouterr().out
    assert f"encounter {encounter} ({len(images)} of {len(images)} photos identified)" in printed
    ids = [line.split("sighting ")[1].split()[0] for line in printed.splitlines() if ": sighting " in line]
    assert len(ids) == len(images)
    answers = [client.sighting(i) for i in ids]
    blocks = [a["encounter"] for a in answers]
    assert all(b == blocks[0] for b in blocks) and sorted(blocks[0]["sightings"]) == sorted(ids)
    photos = [[(c["individual_id"], c["score"]) for c in a["identification"]["candidates"]] for a in answers]
    thresholds = sorted(a["identification"]["threshold"] for a in answers)
    expected = pool_predictions(photos, thresholds[len(thresholds) // 2])
    assert [(c["individual_id"], pytest.approx(c["score"], abs=1e-6)) for c in blocks[0]["candidates"]] == \
        [(i, pytest.approx(s, abs=1e-6)) for i, s in expected]
    best = {}
    for photo in photos:
        for individual, score in photo:
            if individual != "new_individual":
                best[individual] = max(best.get(individual, -1.0), score)
    top = blocks[0]["candidates"][0]
    assert top["individual_id"] == "new_individual" or top["score"] == pytest.approx(max(best.values()), abs=1e-6)
    image = sorted(data.test_images)[0]
    single = client.upload(data.image_path(image).read_bytes(), image, "image/jpeg", app_metadata(data, image, None, 0))
    alone = client.sighting(single.sighting_id)  # no encounter id: no block
    assert "encounter" not in alone


def test_hostile_uploads_through_the_gateway_fail_with_reasons(e2e):
    client = e2e["client"]
    hostile = [client.upload(payload, label, content_type, app_metadata(e2e["data"], "", None, 0))
               for label, payload, content_type in hostile_uploads(e2e["data_dir"])]
    good = upload_test_photos(e2e)[:2]
    answers = wait_for_results(client, hostile + good, 120, lambda message: None)
    reasons = {u.name: answers[u.sighting_id].get("failure", {}).get("reason") for u in hostile}
    assert reasons == {"hostile:text-file": "not_an_image", "hostile:truncated-jpeg": "truncated"}
    assert all(answers[u.sighting_id]["status"] == "identified" for u in good)

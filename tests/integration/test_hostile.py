"""The hostile-input corpus of `whaleid chaos` (services/devtools/chaos/hostile.py): first at the decoder (every body is
refused with a reason or decodes upright to the photo it shows), then through the real chain (gateway, moto S3,
SQS, bridge, Kafka, worker, Triton serving the toy ensemble, matcher, Redis): every case ends as a correct system
ends it, with a reason for every refusal and dead letter, and nothing accepted is left pending."""

from __future__ import annotations

import uuid

import boto3
import numpy as np
import pytest

from services.chain.gateway.client import AppClient
from services.core.imaging import ImageRejected, decode_image
from services.devtools.chaos.hostile import (
    DEAD_LETTER,
    IDENTIFIED,
    KINDS,
    REFUSED,
    good_cases,
    hostile_cases,
    mixed_cases,
    photo,
    settle,
    submit_all,
    summarise,
)
from services.devtools.stack.ports import free_port
from support.chain import ServiceProcess, chain_env, png_bytes, write_toy_repository

KNOWN = 6  # gallery individuals: photo(0..5) as whale-0..whale-5
MAX_UPLOAD = 300_000
TOKENS = {"app": "hostile-app-token", "researcher": "hostile-researcher-token", "admin": "hostile-admin-token"}
# where the chain decides: the decoder refuses these bodies (the others are refused earlier, or decode)
DECODER_REFUSES = {"truncated", "empty", "random", "bomb", "huge_dimensions"}


def individual_of(seed: int) -> str:
    return f"whale-{seed}"


# --------------------------------------------------------------------------- the corpus at the decoder
def test_the_corpus_is_deterministic_covers_every_kind_and_has_unique_labels():
    cases = hostile_cases(count=10, seed=3, individuals=KNOWN, max_upload_bytes=MAX_UPLOAD)
    assert len(cases) == len(KINDS)  # every kind at least once, whatever the count
    assert [c.label.rsplit("-", 1)[0] for c in cases] == list(KINDS)
    assert [(c.label, c.body, c.metadata, c.raw_body) for c in cases] == [
        (c.label, c.body, c.metadata, c.raw_body) for c in hostile_cases(count=10, seed=3, individuals=KNOWN,
                                                                          max_upload_bytes=MAX_UPLOAD)]
    many = hostile_cases(count=300, individuals=KNOWN, max_upload_bytes=MAX_UPLOAD)
    assert len(many) == 300 and len({c.label for c in many}) == 300
    assert all(c.expect in (REFUSED, DEAD_LETTER, IDENTIFIED) and c.expect in c.outcomes for c in many)
    categories = {c.category for c in many}
    assert {"truncated", "empty", "random", "wrong_type", "bomb", "huge_dimensions", "16bit", "cmyk", "palette",
            "animated", "exif", "bad_metadata", "bad_body", "oversize", "wrong_token", "missing_token",
            "wrong_role", "replay", "overwrite"} <= categories
    mixed = mixed_cases(100, 20, individuals=KNOWN, max_upload_bytes=MAX_UPLOAD)
    assert len(mixed) == 120 and sum(c.category == "good" for c in mixed) == 20
    assert all(c.photo_seed in range(KNOWN) for c in good_cases(12, individuals=KNOWN))


def test_the_decoder_refuses_each_bad_body_with_a_reason_and_decodes_each_valid_one_upright():
    for case in hostile_cases(count=2 * len(KINDS), individuals=KNOWN, max_upload_bytes=MAX_UPLOAD):
        if case.category in DECODER_REFUSES or case.label.startswith(("text_as", "gif_as")):
            with pytest.raises(ImageRejected) as refused:
                decode_image(case.body)
            assert refused.value.reason and refused.value.detail, case.label
        elif case.expect == IDENTIFIED:
            pixels = decode_image(case.body)
            assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3, case.label
            if case.photo_seed is not None:  # the photo as a viewer shows it: upright, colours kept
                height, width = pixels.shape[:2]
                difference = np.abs(pixels.astype(int) - photo(case.photo_seed, (width, height)).astype(int))
                assert difference.mean() < 8, (case.label, difference.mean())
            if case.category == "16bit" and case.photo_seed is None:  # 16-bit gray is scaled, not clipped white
                assert 30 < pixels.mean() < 225, (case.label, pixels.mean())


# --------------------------------------------------------------------------- the corpus through the chain
@pytest.fixture(scope="module")
def chain(stack, tmp_path_factory):
    """Toy Triton + a gallery of photo(0..5) + the worker, matcher, bridge and gateway as processes."""
    from services.core.identification import Tuning, build_gallery
    from services.curation.operations.gallery_versions import GalleryStore
    from services.devtools.stack.triton import launch_triton
    from services.serving.triton_client import EmbeddingClient

    root = tmp_path_factory.mktemp("hostile")
    triton = launch_triton(write_toy_repository(root / "repo"), root / "triton")
    services: list[ServiceProcess] = []
    try:
        triton.wait_healthy(90)
        settings = stack.settings.with_overrides(models_bucket=f"models-{uuid.uuid4().hex[:8]}")
        boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                     aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(
            Bucket=settings.models_bucket)
        with EmbeddingClient(triton.grpc) as client:
            client.wait_ready(60)
            embeddings = client.embed([png_bytes(photo(i)) for i in range(KNOWN)])
        gallery = build_gallery(embeddings, [individual_of(i) for i in range(KNOWN)], ["humpback_whale"] * KNOWN,
                                [f"g{i}.png" for i in range(KNOWN)], model_ids=["toy-embedder"])
        gallery.save(root / "gallery")
        Tuning(threshold=0.9).save(root / "gallery" / "tuning.json")
        store = GalleryStore.from_settings(settings)
        store.set_current(store.publish(root / "gallery", parent=None, added_sightings=[],
                                        individuals=gallery.individual_ids, size=len(gallery)), "test_hostile")

        port = free_port()
        env = chain_env(stack.state, root / "run", triton.grpc, models_bucket=settings.models_bucket,
                        max_upload_bytes=MAX_UPLOAD, retry_backoff_max_s=1.0, gateway_port=port,
                        gateway_token=TOKENS["app"], gateway_researcher_tokens=f"dr-h={TOKENS['researcher']}",
                        gateway_admin_tokens=f"ops-h={TOKENS['admin']}")
        for name in ("worker", "matcher", "bridge", "gateway"):
            services.append(ServiceProcess(name, env, root / "logs").start())
        for service in services:
            service.wait_ready()
        url = f"http://127.0.0.1:{port}"
        AppClient(url, TOKENS["app"]).wait_healthy(60)
        yield {"url": url, "services": services}
    finally:
        for service in reversed(services):
            service.stop()
        triton.stop()


def test_every_hostile_upload_ends_as_expected_with_a_reason_and_none_is_lost(chain):
    cases = hostile_cases(count=len(KINDS), seed=1, individuals=KNOWN, max_upload_bytes=MAX_UPLOAD)
    cases += good_cases(10, seed=1, individuals=KNOWN)
    submissions = submit_all(cases, chain["url"], TOKENS, parallel=4)
    verdicts = settle(submissions, chain["url"], TOKENS, timeout_s=90, individual_of=individual_of)
    summary = summarise(verdicts)
    assert summary["mismatches"] == [], "\n".join(str(m) for m in summary["mismatches"])
    assert summary["lost"] == 0 and summary["passed"]
    assert summary["with_reason"] == summary["bad_inputs"] == sum(c.bad_input for c in cases)
    assert summary["good_identified"] == summary["good"] == 10
    assert summary["unusual_identified"] == summary["unusual_valid"] > 0
    by_label = {v.label.rsplit("-", 1)[0]: v for v in verdicts}
    # where each kind is stopped, and why (the reasons a user sees)
    assert by_label["truncated_png"].reason == "truncated"
    assert by_label["real_png_bomb"].reason == by_label["png_header_bomb"].reason == "too_many_pixels"
    assert by_label["huge_strip"].reason == "bad_dimensions"
    assert by_label["gif_as_webp"].reason == "unsupported_format"
    assert by_label["crop_box_outside"].reason == "bad_box"
    assert by_label["latitude_out_of_range"].status == 400 and "latitude" in by_label["latitude_out_of_range"].reason
    assert by_label["huge_string"].status == 413
    assert by_label["wrong_token"].status == by_label["missing_token"].status == 401
    assert by_label["researcher_token"].status == by_label["admin_token"].status == 403
    for kind in ("replayed_upload", "overwrite_right_after", "overwrite_after_identified"):
        assert by_label[kind].status == 412 and "PreconditionFailed" in by_label[kind].reason, by_label[kind]

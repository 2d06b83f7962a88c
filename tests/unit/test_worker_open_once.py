"""The worker opens each upload once (services.core.imaging.OpenedImage): the header, the decode and the
plain-upload check share one Pillow open, and give what three separate opens gave."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from services.chain.failures import PermanentFailure
from services.chain.worker.cropping import UploaderBox
from services.chain.worker.pipeline import prepare
from services.core import topics
from services.core.imaging import OpenedImage, decode_scaled, read_header
from services.core.settings import load_settings


def _scene(width: int = 320, height: int = 200, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.BILINEAR)


def _saved(image: Image.Image, image_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _uploads() -> dict[str, bytes]:
    scene = _scene()
    return {
        "jpeg": _saved(scene, "JPEG", quality=90),
        "jpeg orientation 1": _saved(scene, "JPEG", exif=_exif(1)),
        "jpeg orientation 6": _saved(scene, "JPEG", exif=_exif(6)),
        "jpeg orientation 0 (invalid)": _saved(scene, "JPEG", exif=_exif(0)),
        "jpeg cmyk": _saved(scene.convert("CMYK"), "JPEG"),
        "jpeg grey": _saved(scene.convert("L"), "JPEG"),
        "png": _saved(scene, "PNG"),
        "png orientation 6": _saved(scene, "PNG", exif=_exif(6)),
        "png with transparency": _saved(scene, "PNG", transparency=(1, 2, 3)),
        "png rgba": _saved(scene.convert("RGBA"), "PNG"),
        "png palette": _saved(scene.convert("P"), "PNG"),
        "animated png": _saved(scene, "PNG", save_all=True, append_images=[_scene(seed=1)]),
        "webp": _saved(scene, "WEBP", lossless=True),
    }


def _plain_by_a_fresh_open(data: bytes) -> bool:
    """The plain-upload rule, on an open of its own (what the worker did before it shared one open)."""
    with Image.open(io.BytesIO(data)) as image:
        return (image.format in ("JPEG", "PNG") and image.mode == "RGB"
                and not getattr(image, "is_animated", False) and getattr(image, "n_frames", 1) == 1
                and "transparency" not in image.info and image.getexif().get(0x0112, 1) in (1, None))


@pytest.mark.parametrize("name", list(_uploads()))
def test_the_shared_open_tells_plain_uploads_as_a_fresh_open_does(name):
    data = _uploads()[name]
    assert decode_scaled(data).plain == _plain_by_a_fresh_open(data)


def test_only_upright_one_frame_rgb_jpegs_and_pngs_without_transparency_are_plain():
    plain = {name for name, data in _uploads().items() if decode_scaled(data).plain}
    assert plain == {"jpeg", "jpeg orientation 1", "png"}


def test_the_header_is_read_from_the_same_open():
    data = _saved(_scene(), "JPEG", exif=_exif(6))
    with OpenedImage(data) as opened:
        assert opened.header == read_header(data)
        assert opened.header.stored == (320, 200) and opened.header.size == (200, 320)
        decoded = opened.decode()
    assert decoded.size == (200, 320) and decoded.pixels.shape == (320, 200, 3) and not decoded.plain


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "empty"),
    (b"not an image" * 10, "not_an_image"),
    (_saved(_scene(), "GIF"), "unsupported_format"),
    (_saved(_scene(), "JPEG")[:1500], "truncated"),
])
def test_an_opened_upload_is_refused_with_the_reason_of_its_decode(data, reason):
    with OpenedImage(data) as opened, pytest.raises(Exception) as refused:
        opened.decode()
    assert refused.value.reason == reason


class _S3:
    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def fetch(self, bucket, key, max_bytes):
        return self.objects[key]


def test_prepare_opens_each_upload_once_and_sends_plain_uploads_as_they_are(monkeypatch):
    settings = load_settings(profile="local", environ={})
    uploads = _uploads()
    opens = []
    real_open = Image.open

    def counted_open(*args, **kwargs):
        opens.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr(Image, "open", counted_open)
    for name, data in uploads.items():
        opens.clear()
        event = topics.SightingUploaded(sighting_id="s", bucket=settings.sightings_bucket, key=name)
        prepared = prepare(event, _S3(uploads), settings, [UploaderBox()])
        assert len(opens) == 1, name
        assert (prepared.original == data) == _plain_by_a_fresh_open(data), name
        assert np.array_equal(prepared.crop.pixels, decode_scaled(data).pixels), name
    opens.clear()
    event = topics.SightingUploaded(sighting_id="s", bucket=settings.sightings_bucket, key="jpeg",
                                    metadata={"crop_box": [3, 3, 3, 3]})
    with pytest.raises(PermanentFailure) as refused:
        prepare(event, _S3(uploads), settings, [UploaderBox()])
    assert refused.value.reason == "bad_box" and len(opens) == 1

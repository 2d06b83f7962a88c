"""Bounded worker memory (issue #22, item 2): 16-bit decodes without 64-bit copies, large JPEGs decoded at the
reduced size the model needs (draft mode), and a decode budget per worker. Images are generated here (a 40 MP
16-bit grey PNG of a ramp is ~90 KB); peak memory is the process's peak RSS, measured in a fresh interpreter."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.chain.worker.cropping import UploaderBox
from services.chain.worker.decode_budget import DecodeBudget, decode_cost
from services.chain.worker.pipeline import MODEL_PIXELS_MIN_SIDE, draft_reduction, prepare
from services.core import topics
from services.core.imaging import (
    UPRIGHT,
    ImageRejected,
    _rgb,
    _upright,
    decode_image,
    decode_scaled,
    read_header,
)
from services.core.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
BOMB_SIZE = (8000, 5000)  # 40 MP: exactly the default max_image_pixels, so a valid photo


def _legacy_rgb(image: Image.Image) -> np.ndarray:
    """The 16-bit conversion before the fix (int64 copies), the reference for the pixels."""
    values = np.asarray(image).astype(np.int64)
    gray = ((np.clip(values, 0, 65535) + 128) // 257).astype(np.uint8)
    return np.asarray(Image.fromarray(gray, mode="L").convert("RGB"))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def _jpeg(image: Image.Image, orientation: int | None = None, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    kwargs = {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif.tobytes()
    image.save(buffer, format="JPEG", quality=quality, **kwargs)
    return buffer.getvalue()


def bomb_png(size=BOMB_SIZE) -> bytes:
    """A 16-bit grey PNG of a horizontal ramp: tens of KB for 40 MP."""
    width, height = size
    ramp = (np.arange(width, dtype=np.uint32) * 65535 // max(1, width - 1)).astype(np.uint16)
    return _png(Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()))


class _S3:
    def __init__(self, objects: dict[str, bytes]):
        self.objects = objects

    def fetch(self, bucket, key, max_bytes):
        return self.objects[key]


@pytest.fixture(scope="module")
def settings():
    return load_settings(profile="local", environ={})


def _event(settings, key, metadata=None) -> topics.SightingUploaded:
    return topics.SightingUploaded(sighting_id=key, bucket=settings.sightings_bucket, key=key, metadata=metadata)


# ----------------------------------------------------------------------------- 16-bit grey: same pixels
def test_16bit_modes_give_the_legacy_pixels():
    rng = np.random.default_rng(5)
    values = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    values[0, :6] = [0, 128, 129, 385, 65407, 65535]  # the rounding edges of round(v / 257)
    images = {"I;16": Image.fromarray(values),
              "I;16B": Image.frombytes("I;16B", (53, 37), values.astype(">u2").tobytes()),
              "I": Image.fromarray(values.astype(np.int32) * 2 - 30000)}  # out of 0..65535 both ways: clipped
    assert {name: image.mode for name, image in images.items()} == {n: n for n in images}
    for image in images.values():
        assert np.array_equal(_rgb(image), _legacy_rgb(image))
    data = _png(images["I;16"])
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    assert np.array_equal(decode_image(data), _legacy_rgb(images["I;16"]))


def test_16bit_rows_are_converted_in_bands(monkeypatch):
    """Several bands (the row count does not divide the height) give the pixels of one."""
    import services.core.imaging as imaging

    values = np.random.default_rng(1).integers(0, 65536, (101, 64), dtype=np.uint16)
    image = Image.fromarray(values)
    monkeypatch.setattr(imaging, "SIXTEEN_BIT_ROWS_PIXELS", 64 * 7)
    assert np.array_equal(imaging._rgb(image), _legacy_rgb(image))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_is_pillows_transpose(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    turn = UPRIGHT.get(orientation)
    expected = pixels if turn is None else np.asarray(Image.fromarray(pixels).transpose(turn))
    assert np.array_equal(_upright(pixels, orientation), expected)
    data = _png(Image.fromarray(np.random.default_rng(9).integers(0, 65536, (6, 10), dtype=np.uint16)))
    image = Image.open(io.BytesIO(data))
    legacy = Image.fromarray(_legacy_rgb(image))
    assert np.array_equal(_upright(decode_image(data), orientation),
                          np.asarray(legacy if turn is None else legacy.transpose(turn)))


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    from services.core.imaging import decode_image

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    data = open(sys.argv[2], "rb").read()
    base = rss("VmRSS:")
    pixels = decode_image(data)
    print(json.dumps({"peak": rss("VmHWM:") - base, "out": pixels.nbytes, "shape": list(pixels.shape),
                      "corner": pixels[::2500, ::4000, 0].tolist()}))
""")


def _peak(tmp_path, data: bytes) -> dict:
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(ROOT), str(path)], capture_output=True,
                         text=True, timeout=120, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
def test_a_40mp_16bit_png_decodes_within_3x_its_8bit_output(tmp_path):
    data = bomb_png()
    assert len(data) < 200_000 and read_header(data).mode == "I;16"
    measured = _peak(tmp_path, data)
    width, height = BOMB_SIZE
    assert measured["shape"] == [height, width, 3] and measured["out"] == width * height * 3
    assert measured["corner"] == [[0, 128], [0, 128]]  # the ramp: 0 on the left, mid-grey half-way
    # before the fix: ~760 MB (6.3x the 120 MB output); now the decoded 16-bit image (2 bytes a pixel) beside
    # the 8-bit RGB output (3) and one band of rows
    assert measured["peak"] < 3 * measured["out"], measured


# ----------------------------------------------------------------------------- draft mode for large JPEGs
def _scene(width: int, height: int) -> Image.Image:
    """A smooth picture with structure at every place (a box mapped wrongly crops other pixels)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 127 + 120 * np.sin(x / 97.0)
    green = 127 + 120 * np.cos(y / 61.0)
    blue = (x + y) * 255 / (width + height)
    return Image.fromarray(np.stack([red, green, blue], -1).astype(np.uint8))


def test_draft_reduction_keeps_enough_pixels_on_both_sides():
    n = MODEL_PIXELS_MIN_SIDE
    assert draft_reduction((n * 8, n * 8)) == 8
    assert draft_reduction((n * 8, n * 4)) == 4
    assert draft_reduction((n * 4 - 1, n * 100)) == 2
    assert draft_reduction((2 * n - 1, 2 * n - 1)) == 1


def test_a_draft_decode_is_validated_on_the_uploaded_size():
    data = _jpeg(_scene(4200, 2100))
    full, reduced = decode_scaled(data), decode_scaled(data, 2)
    assert reduced.scale == 2 and reduced.size == full.size == (4200, 2100)
    assert reduced.pixels.shape == (1050, 2100, 3)
    expected = np.asarray(Image.fromarray(full.pixels).reduce(2), dtype=np.float32)
    assert np.abs(reduced.pixels.astype(np.float32) - expected).mean() < 3
    with pytest.raises(ImageRejected) as refused:  # the header's pixel count, not the reduced one
        decode_scaled(data, 8, max_pixels=4200 * 2100 - 1)
    assert refused.value.reason == "too_many_pixels"
    with pytest.raises(ImageRejected) as refused:  # the whole stream is still decoded at 1/8
        decode_scaled(data[: len(data) // 2], 8)
    assert refused.value.reason == "truncated"
    png = _png(_scene(300, 200))  # not a JPEG: full size whatever is allowed
    assert decode_scaled(png, 8).scale == 1 and np.array_equal(decode_scaled(png, 8).pixels, decode_image(png))


@pytest.mark.parametrize("orientation", [None, 6])
def test_a_box_on_a_large_jpeg_is_cropped_from_a_draft_decode(settings, orientation):
    """The box is in the uploaded image's upright coordinates; the crop keeps >= MODEL_PIXELS_MIN_SIDE on each
    side, shows the same region as a full decode's crop, and the record keeps the box as given."""
    stored = _scene(6400, 4800)
    data = _jpeg(stored, orientation)
    upright = decode_image(data)  # full size, EXIF applied
    height, width = upright.shape[:2]
    box = [width - 4300.0, 200.0, width - 100.0, 200.0 + 4100.0]  # 4200 x 4100: decoded at 1/4
    prepared = prepare(_event(settings, "big.jpg", {"crop_box": box}), _S3({"big.jpg": data}), settings,
                       [UploaderBox()])
    assert prepared.crop.box == box and prepared.crop.source == "uploader" and prepared.original is None
    pixels = prepared.crop.pixels
    assert min(pixels.shape[:2]) >= MODEL_PIXELS_MIN_SIDE and pixels.shape[0] < 4100 / 2
    x0, y0, x1, y1 = (int(v) for v in box)
    reference = Image.fromarray(upright[y0:y1, x0:x1]).resize((pixels.shape[1], pixels.shape[0]), Image.BOX)
    difference = np.abs(pixels.astype(np.float32) - np.asarray(reference, dtype=np.float32)).mean()
    assert difference < 4, difference
    shifted = Image.fromarray(upright[y0:y1, x0 - 400:x1 - 400]).resize((pixels.shape[1], pixels.shape[0]))
    assert np.abs(pixels.astype(np.float32) - np.asarray(shifted, dtype=np.float32)).mean() > 4 * difference


def test_small_photos_are_decoded_as_before(settings):
    data = _jpeg(_scene(1500, 1000))
    prepared = prepare(_event(settings, "a.jpg"), _S3({"a.jpg": data}), settings, [UploaderBox()])
    assert prepared.original == data and np.array_equal(prepared.crop.pixels, decode_image(data))
    box = [10.0, 20.0, 1400.0, 900.0]
    prepared = prepare(_event(settings, "a.jpg", {"crop_box": box}), _S3({"a.jpg": data}), settings,
                       [UploaderBox()])
    assert np.array_equal(prepared.crop.pixels, decode_image(data)[20:900, 10:1400])
    assert prepared.crop.pixels.base is None  # its own pixels: the whole photo is not kept alive by a view


def test_with_a_ready_detector_the_whole_photo_is_decoded(settings):
    """A ready detector's box is unknown before decoding: no draft reduction then; one that is not loaded finds
    no box (the whole photo, reduced); one that becomes ready in between gets its box mapped back."""
    seen = []

    class Detector:
        source = "detector"

        def __init__(self, answers):
            self.answers = list(answers)  # what ready() says, in turn

        def ready(self):
            return self.answers.pop(0)

        def find_box(self, image, metadata):
            seen.append(image.shape)
            if not self.ready():
                return None
            height, width = image.shape[:2]
            return [width / 4, height / 4, width / 2, height / 2]  # in the pixels it was given

    data = _jpeg(_scene(4200, 2100))
    prepared = prepare(_event(settings, "d.jpg"), _S3({"d.jpg": data}), settings,
                       [UploaderBox(), Detector([True, True])])
    assert seen == [(2100, 4200, 3)] and prepared.crop.box == [1050.0, 525.0, 2100.0, 1050.0]
    assert np.array_equal(prepared.crop.pixels, decode_image(data)[525:1050, 1050:2100])
    prepared = prepare(_event(settings, "d.jpg"), _S3({"d.jpg": data}), settings,
                       [UploaderBox(), Detector([False, False])])
    assert seen[1] == (1050, 2100, 3) and prepared.crop.box is None and prepared.original == data
    prepared = prepare(_event(settings, "d.jpg"), _S3({"d.jpg": data}), settings,
                       [UploaderBox(), Detector([False, True])])
    assert seen[2] == (1050, 2100, 3) and prepared.crop.source == "detector"
    assert prepared.crop.box == [1050.0, 525.0, 2100.0, 1050.0]  # the uploaded image's coordinates


# ----------------------------------------------------------------------------- the decode budget
def test_the_cost_is_estimated_from_the_header():
    header = read_header(bomb_png((800, 500)))
    assert decode_cost(header) == 800 * 500 * (2 + 6)
    assert decode_cost(header, max_pixels=1000) == 0  # refused before decoding: costs nothing
    jpeg = read_header(_jpeg(_scene(800, 400)))
    assert decode_cost(jpeg, 4) == 200 * 100 * (4 + 6) and decode_cost(jpeg) == 800 * 400 * 10
    assert decode_cost(None) == 0


def test_a_decode_over_the_whole_budget_runs_alone_and_is_not_refused():
    budget = DecodeBudget(100)
    order = []
    with budget.hold(60):
        started = threading.Event()

        def big():
            started.set()
            with budget.hold(500):
                order.append("big")

        thread = threading.Thread(target=big)
        thread.start()
        started.wait()
        thread.join(0.2)
        assert thread.is_alive() and not order  # waits for the one in flight
    thread.join(5)
    assert order == ["big"] and budget.used == 0 and budget.peak == 500 and budget.waited == 1


BATCH_SCRIPT = textwrap.dedent("""
    import json, sys, threading
    from concurrent.futures import ThreadPoolExecutor
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[1] + "/tests/unit")
    import tracemalloc
    from test_worker_memory import _S3, _event
    from services.chain.failures import PermanentFailure
    from services.core.settings import load_settings
    from services.chain.worker.cropping import UploaderBox
    from services.chain.worker.decode_budget import DecodeBudget
    from services.chain.worker.pipeline import prepare

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    objects = json.load(open(sys.argv[2]))
    objects = {key: bytes.fromhex(value) for key, value in objects.items()}
    budget_mb = float(sys.argv[3])
    settings = load_settings(profile="local", environ={})
    budget = DecodeBudget(int(budget_mb * 2**20) if budget_mb > 0 else 1 << 62)  # <= 0: no limit

    def one(key):
        try:
            prepared = prepare(_event(settings, key), _S3(objects), settings, [UploaderBox()], budget=budget)
            return key, {"shape": list(prepared.crop.pixels.shape)}
        except PermanentFailure as exc:
            return key, {"reason": exc.reason}

    base = rss("VmRSS:")
    tracemalloc.start()
    with ThreadPoolExecutor(len(objects)) as pool:  # a whole batch at once, as the worker's fetch pool does
        results = dict(pool.map(one, objects))
    traced = tracemalloc.get_traced_memory()[1]
    print(json.dumps({"results": results, "peak_rss": rss("VmHWM:") - base, "traced_peak": traced,
                      "budget_peak": budget.peak, "waited": budget.waited}))
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="peak RSS is read from /proc")
def test_a_batch_of_bombs_is_decoded_within_the_budget(tmp_path):
    """Four 40 MP 16-bit PNGs, a 40 MP CMYK JPEG, a bomb over max_image_pixels and a truncated one, prepared
    at once: every one ends with its pixels or its reason, and the decodes in flight stay within the budget."""
    bomb = bomb_png()
    cmyk = io.BytesIO()
    Image.new("CMYK", BOMB_SIZE, (10, 200, 30, 5)).save(cmyk, format="JPEG", quality=50)
    objects = {f"bomb{i}.png": bomb for i in range(4)}
    objects["cmyk.jpg"] = cmyk.getvalue()
    objects["over.png"] = bomb_png((8000, 5001))
    objects["truncated.png"] = bomb[: len(bomb) // 2]
    path = tmp_path / "batch.json"
    path.write_text(json.dumps({key: value.hex() for key, value in objects.items()}))
    budget_mb = 400  # one 16-bit bomb (estimated 320 MB) at a time

    def batch(budget):
        run = subprocess.run([sys.executable, "-c", BATCH_SCRIPT, str(ROOT), str(path), str(budget)],
                             capture_output=True, text=True, timeout=300, check=True)
        return json.loads(run.stdout.strip().splitlines()[-1])

    report = batch(budget_mb)
    results = report["results"]
    assert set(results) == set(objects)
    for i in range(4):  # valid photos, kept reduced for the Triton call (4x: 2000 x 1250)
        assert results[f"bomb{i}.png"] == {"shape": [1250, 2000, 3]}
    assert results["cmyk.jpg"] == {"shape": [1250, 2000, 3]}  # decoded at 1/4 (draft)
    assert results["over.png"] == {"reason": "too_many_pixels"}
    assert results["truncated.png"] == {"reason": "truncated"}
    assert report["budget_peak"] <= budget_mb * 2**20 and report["waited"] >= 3
    # measured (here ~250 MB): the whole batch's peak RSS and traced allocations stay within the budget
    assert report["peak_rss"] < budget_mb * 2**20, report
    assert report["traced_peak"] < budget_mb * 2**20, report
    # the same batch without a limit: the bombs decode at once (here ~800 MB), so the bound above means something
    unbounded = batch(0)
    assert unbounded["results"] == results and unbounded["waited"] == 0
    assert unbounded["peak_rss"] > budget_mb * 2**20, unbounded


def test_held_pixels_are_reduced_in_bands_like_one_reduce(monkeypatch):
    import services.chain.worker.pipeline as pipeline

    pixels = np.random.default_rng(2).integers(0, 256, (64 * 5 + 7, 64 * 3 + 2, 3), dtype=np.uint8)
    monkeypatch.setattr(pipeline, "REDUCE_BAND_PIXELS", 1000)  # several bands, the last one partial
    held = pipeline._held(pixels, view=False, min_side=64)  # 3x: 327 rows in bands of 3 rows
    assert held.shape == (109, 65, 3)
    assert np.array_equal(held, np.asarray(Image.fromarray(pixels).reduce(3)))
    small = pixels[:100, :100]
    assert pipeline._held(small, view=True, min_side=64).base is None
    assert pipeline._held(pixels, view=False, min_side=200) is pixels


def test_the_memory_bomb_cases_are_small_files_of_40mp():
    """`whaleid chaos`'s memory_bomb scenario sends what it says: small files of 40 MP, a quarter over the limit,
    and its peak-RSS probe sees memory that a process touches."""
    import mmap
    import os

    from services.devtools.chaos import hostile
    from services.devtools.chaos.memory_bomb import PeakRss, bomb_cases

    cases = bomb_cases(8, 40_000_000)
    assert [c.expect for c in cases].count(hostile.DEAD_LETTER) == 2
    for case in cases:
        header = read_header(case.body)
        width, height = header.stored
        assert len(case.body) < 2_500_000 and header.mode in ("I;16", "CMYK")
        assert (width * height > 40_000_000) == (case.expect == hostile.DEAD_LETTER)
        assert width * height >= 40_000_000 - width
    peak = PeakRss(os.getpid(), interval_s=0.01).start()
    # 64 MiB of fresh pages from the kernel, touched: a heap allocation could reuse pages the process already
    # holds resident (freed by earlier tests in the same process), and then the RSS would not move
    ballast = mmap.mmap(-1, 64 << 20)
    try:
        for offset in range(0, len(ballast), mmap.PAGESIZE):
            ballast[offset] = 1
        assert peak.stop() >= peak.before + len(ballast) // 2
    finally:
        ballast.close()

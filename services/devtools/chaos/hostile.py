"""The hostile-input scenario of `whaleid chaos`: a deterministic corpus of bad uploads (and good ones to mix in),
sent through the gateway and S3 exactly as an app would, then settled by reading each sighting back.

    cases = hostile_cases(1000) + good_cases(200)          # or mixed_cases(1000, 200)
    submissions = submit_all(cases, gateway_url, tokens)    # tokens: {"app": ..., "researcher": ..., "admin": ...}
    verdicts = settle(submissions, gateway_url, tokens, timeout_s=120, individual_of=individual_id)
    summary = summarise(verdicts)                           # summary["passed"]: every verdict ok, nothing lost

Each case says what a correct system does with it (`expect`):
  refused      the gateway (4xx, JSON error) or S3 (4xx, XML error) refuses the request and says why: bad metadata,
               a bad body, a declared size over the limit, a missing / wrong / wrong-role token, a second write of
               an uploaded photo (replay, overwrite)
  dead_letter  accepted, then the chain dead-letters the photo with a reason (`failure:<id>`, shown by
               `GET /v1/sightings/{id}` as status failed + failure.reason): truncated, empty, random bytes, text
               declared as an image, an unsupported format (GIF), decompression bombs, absurd dimensions, a crop box
               outside the photo, a body over the upload limit
  identified   a valid photo in an unusual encoding (CMYK, palette, 16-bit, grayscale, alpha, progressive, EXIF-
               rotated, animated, MPO, a declared type that does not match the bytes): decoded (services.core.imaging)
               and identified. With `individual_of`, the photo's individual must be the best candidate.
A few cases have two correct answers (`acceptable`): a body whose length differs from the signed one, or an
unsigned Content-Type, is refused by S3's signature check, while moto (the embedded stack) does not check
signatures, so the bridge or the worker dead-letters it instead; without a declared size the gateway refuses the
request when `upload_size_required` is on.

Photos show individual `i` as a smooth colour pattern of seed `i` (as services.devtools.chaos.probe_model and the tests'
`photo`), so a gallery of those individuals can check that an unusual encoding decodes to the right animal.
Stdlib HTTP only (urllib), like services.chain.gateway.client.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import random
import re
import struct
import time
import urllib.error
import urllib.request
import uuid
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image

REFUSED, DEAD_LETTER, IDENTIFIED = "refused", "dead_letter", "identified"
ACCEPTED, PENDING, ERROR = "accepted", "pending", "error"
EXPECTATIONS = (REFUSED, DEAD_LETTER, IDENTIFIED)
TOKEN_ROLES = ("app", "researcher", "admin", "none", "wrong", "not_bearer")
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # == Settings.max_upload_bytes's default
DEFAULT_MAX_PIXELS = 40_000_000  # == Settings.max_image_pixels's default
DEFAULT_INDIVIDUALS = 6
GATEWAY_BODY_LIMIT = 64 * 1024  # the gateway's client_max_size (services/chain/gateway/app.py)
SIZES = ((96, 72), (128, 96), (160, 120), (72, 96), (200, 150))  # (width, height) of the photos
TAKEN_AT = "2026-12-01T10:00:00+00:00"
HTTP_TIMEOUT_S = 15.0


# --------------------------------------------------------------------------- cases, submissions, verdicts
@dataclass
class HostileCase:
    """One upload attempt and what a correct system does with it."""

    label: str  # unique in a corpus
    category: str  # truncated, empty, random, wrong_type, bomb, huge_dimensions, 16bit, cmyk, ..., good
    expect: str  # refused | dead_letter | identified
    body: bytes = b""  # what is sent to S3
    content_type: str = "image/jpeg"  # declared at the gateway (decides the key's extension)
    metadata: dict[str, Any] | None = None  # the whole JSON object POSTed to /v1/sightings (None: raw_body)
    raw_body: bytes | None = None  # sent instead of JSON `metadata` when set (bad bodies)
    token: str = "app"  # app | researcher | admin (the configured tokens) | none | wrong | not_bearer
    upload_headers: dict[str, str] = field(default_factory=dict)  # replace the signed upload headers
    replay: str = ""  # "" | same (PUT the same bytes twice) | junk (other bytes right after) | late (after identified)
    acceptable: tuple[str, ...] = ()  # every correct outcome; () = (expect,)
    photo_seed: int | None = None  # the individual the (valid) photo shows
    note: str = ""  # why this expectation

    @property
    def outcomes(self) -> tuple[str, ...]:
        return self.acceptable or (self.expect,)

    @property
    def bad_input(self) -> bool:
        """A bad input: a correct system refuses or dead-letters it, with a reason."""
        return self.expect != IDENTIFIED


@dataclass
class Submission:
    label: str
    category: str
    expect: str
    sighting_id: str | None
    outcome: str  # refused (HTTP 4xx) | accepted (the photo is in S3) | error (5xx, no answer, unexpected)
    reason: str  # the error message the gateway or S3 gave (refused, error)
    status: int | None = None  # HTTP status of the refusal
    case: HostileCase | None = field(default=None, repr=False)
    offer: dict[str, Any] | None = field(default=None, repr=False)  # the gateway's upload offer (late replays)


@dataclass
class Verdict:
    label: str
    category: str
    expect: str
    outcome: str  # refused | dead_letter | identified | pending | error | accepted (a replay that replaced)
    reason: str  # refusal message or dead-letter reason code
    ok: bool
    sighting_id: str | None = None
    status: int | None = None  # HTTP status of a refusal
    detail: str = ""  # dead-letter detail, best candidate, why not ok


# --------------------------------------------------------------------------- photos
def photo(seed: int, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    """Individual `seed`: a smooth random colour pattern (uint8 H x W x 3), as tests' `photo` and the probe."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR))


def encode(image: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header announcing width x height pixels with a tiny body."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _chunk(b"IEND", b""))


def jpeg_header_bomb(seed: int, width: int = 65_000, height: int = 65_000) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) announces width x height."""
    data = bytearray(encode(photo(seed), "JPEG", quality=90))
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@functools.lru_cache(maxsize=8)
def real_bomb(fmt: str, pixels: int, fill: int = 0) -> bytes:
    """A real, fully decodable image of more than `pixels` pixels that compresses to a few KB (one colour)."""
    side = int((pixels * 1.25) ** 0.5) + 1
    mode = "L" if fmt == "PNG" else "RGB"
    options = {"compress_level": 9} if fmt == "PNG" else {"lossless": True}
    return encode(Image.new(mode, (side, side), fill if mode == "L" else (fill,) * 3), fmt, **options)


@functools.lru_cache(maxsize=4)
def oversize_body(size: int) -> bytes:
    """`size` bytes starting like a JPEG (one shared object: the corpus holds it once)."""
    head = b"\xff\xd8\xff\xe0"
    return head + bytes(random.Random(size).getrandbits(8) for _ in range(min(4096, size))) + b"\x00" * max(
        0, size - len(head) - 4096)


def png16(image: np.ndarray, gray: bool = False) -> bytes:
    """A 16-bit-per-channel PNG (RGB, or grayscale) of uint8 pixels scaled to 16 bits (x 257)."""
    pixels = image.mean(axis=2, keepdims=True).round().astype(np.uint8) if gray else image
    height, width, channels = pixels.shape
    wide = pixels.astype(">u2") * 257
    raw = b"".join(b"\x00" + wide[y].tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, 0 if channels == 1 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b"")


# what the camera stored for each EXIF orientation: the inverse of the transpose a viewer applies
STORED_FOR_ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
                          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
                          6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_270}


def exif_rotated_jpeg(image: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose stored pixels are `image` turned as a camera held sideways stores them, with the EXIF
    orientation that makes a viewer show `image` upright."""
    stored = Image.fromarray(image).transpose(STORED_FOR_ORIENTATION[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def garbled_exif_jpeg(image: np.ndarray, seed: int) -> bytes:
    """A JPEG with an APP1 Exif segment of random bytes."""
    data = encode(image, "JPEG", quality=95)
    app1 = b"Exif\x00\x00" + random.Random(seed).randbytes(200)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:]


# --------------------------------------------------------------------------- the corpus
def request_fields(content_type: Any = "image/jpeg", size: Any = None, **overrides) -> dict[str, Any]:
    """A valid `POST /v1/sightings` object (no size when `size` is None); an override of None removes a field."""
    fields: dict[str, Any] = {"taken_at": TAKEN_AT, "latitude": 64.1, "longitude": -21.9,
                              "observer": "whaleid-chaos-hostile", "content_type": content_type, "size": size}
    fields.update(overrides)
    return {k: v for k, v in fields.items() if v is not None}


@dataclass(frozen=True)
class _Ctx:
    """What a kind needs to build its variant number `n`."""

    n: int
    rng: random.Random
    seed: int  # the photo's individual
    size: tuple[int, int]
    max_upload_bytes: int
    max_pixels: int

    def image(self) -> np.ndarray:
        return photo(self.seed, self.size)

    def jpeg(self, **options) -> bytes:
        return encode(self.image(), "JPEG", quality=options.pop("quality", 92), **options)

    def png(self) -> bytes:
        return encode(self.image(), "PNG")


def _photo_case(category: str, expect: str, body: bytes, content_type: str = "image/jpeg", *,
                seed: int | None = None, declare_size: bool = True, **extra) -> dict:
    fields = request_fields(content_type, len(body) if declare_size else None, **extra.pop("fields", {}))
    return dict(category=category, expect=expect, body=body, content_type=content_type, metadata=fields,
                photo_seed=seed if expect == IDENTIFIED else None, **extra)


def _request_case(category: str, ctx: _Ctx, *, raw: bytes | None = None, note: str = "", **overrides) -> dict:
    """A request the gateway must refuse (the photo itself is fine)."""
    body = ctx.jpeg()
    if raw is not None:
        return dict(category=category, expect=REFUSED, body=body, metadata=None, raw_body=raw, note=note)
    fields = request_fields(**{"content_type": "image/jpeg", "size": len(body), **overrides})
    return dict(category=category, expect=REFUSED, body=body, metadata=fields, note=note)


def _frames(ctx: _Ctx) -> list[Image.Image]:
    return [Image.fromarray(ctx.image())] + [Image.fromarray(photo(ctx.seed + 101 + i, ctx.size)) for i in range(2)]


def _truncate(data: bytes, ctx: _Ctx) -> bytes:
    return data[: max(1, int(len(data) * ctx.rng.uniform(0.1, 0.97)))]


PNG_SIGNATURE, JPEG_SOI = b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff"


def _magic_random(ctx: _Ctx) -> bytes:
    head = ctx.rng.choice([JPEG_SOI, PNG_SIGNATURE, b"RIFF\x00\x10\x00\x00WEBPVP8 ", b"GIF89a"])
    return head + ctx.rng.randbytes(ctx.rng.randint(16, 20_000))


ORIENTATIONS = (6, 8, 3, 2, 5, 7, 4)
TEXT = b"Dear whale researchers, this is not a photo.\n"

# kind -> builder(ctx) -> HostileCase fields (label added by the corpus). Ordered; every kind appears in a corpus.
KINDS: dict[str, Callable[[_Ctx], dict]] = {
    # ---- bytes the worker must dead-letter
    "truncated_jpeg": lambda c: _photo_case("truncated", DEAD_LETTER, _truncate(c.jpeg(), c)),
    "truncated_png": lambda c: _photo_case("truncated", DEAD_LETTER, _truncate(c.png(), c), "image/png"),
    "zero_bytes_declared": lambda c: _photo_case(
        "empty", REFUSED, b"", note="size 0 is not a positive size: the gateway refuses"),
    "zero_bytes_form": lambda c: _photo_case(
        "empty", DEAD_LETTER, b"", declare_size=False, acceptable=(REFUSED, DEAD_LETTER),
        note="S3 refuses an empty POST (content-length-range 1..); moto stores it and the worker dead-letters it"),
    "zero_bytes_short_put": lambda c: dict(
        _photo_case("empty", DEAD_LETTER, b""), metadata=request_fields("image/jpeg", 1000),
        acceptable=(REFUSED, DEAD_LETTER), note="S3 refuses a length other than the signed one; moto does not"),
    "random_bytes": lambda c: _photo_case("random", DEAD_LETTER, c.rng.randbytes(c.rng.randint(1, 50_000)),
                                          c.rng.choice(["image/jpeg", "image/png", "image/webp"])),
    "random_with_magic": lambda c: _photo_case("random", DEAD_LETTER, _magic_random(c),
                                               c.rng.choice(["image/jpeg", "image/png", "image/webp"])),
    "text_as_webp": lambda c: _photo_case("wrong_type", DEAD_LETTER, TEXT * (1 + c.n % 40), "image/webp"),
    "text_as_jpeg": lambda c: _photo_case("wrong_type", DEAD_LETTER, TEXT * (1 + c.n % 40), "image/jpeg"),
    "gif_as_webp": lambda c: _photo_case(
        "wrong_type", DEAD_LETTER, encode(_frames(c)[0], "GIF", save_all=True, append_images=_frames(c)[1:]),
        "image/webp", note="GIF is not an accepted format (unsupported_format)"),
    "unsigned_content_type": lambda c: _photo_case(
        "wrong_type", DEAD_LETTER, c.jpeg(), upload_headers={"Content-Type": "text/html"},
        acceptable=(REFUSED, DEAD_LETTER),
        note="S3 refuses a Content-Type other than the signed one; moto stores it, the worker refuses text/html"),
    "png_header_bomb": lambda c: _photo_case(
        "bomb", DEAD_LETTER, png_header_bomb(100_000 + c.n, 100_000), "image/png"),
    "jpeg_header_bomb": lambda c: _photo_case("bomb", DEAD_LETTER, jpeg_header_bomb(c.seed, 65_000 - c.n % 100)),
    "real_png_bomb": lambda c: _photo_case("bomb", DEAD_LETTER, real_bomb("PNG", c.max_pixels, c.n % 2),
                                           "image/png", note="decodes fully, more pixels than max_image_pixels"),
    "real_webp_bomb": lambda c: _photo_case("bomb", DEAD_LETTER, real_bomb("WEBP", c.max_pixels, c.n % 2),
                                            "image/webp"),
    "huge_strip": lambda c: _photo_case(
        "huge_dimensions", DEAD_LETTER,
        encode(Image.new("RGB", (30_000, 10) if c.n % 2 == 0 else (12, 24_000), (10, 20, 30)), "PNG"),
        "image/png", note="not a photo: a side more than 20 times the other (bad_dimensions)"),
    "huge_header": lambda c: _photo_case("huge_dimensions", DEAD_LETTER, png_header_bomb(65_000, 1 + c.n % 50),
                                         "image/png"),
    # ---- valid photos in unusual encodings: decoded and identified
    "png16_rgb": lambda c: _photo_case("16bit", IDENTIFIED, png16(c.image()), "image/png", seed=c.seed),
    "png16_gray": lambda c: dict(_photo_case("16bit", IDENTIFIED, png16(c.image(), gray=True), "image/png"),
                                 note="grayscale: no individual to check"),
    "cmyk_jpeg": lambda c: _photo_case("cmyk", IDENTIFIED, encode(Image.fromarray(c.image()).convert("CMYK"),
                                                                  "JPEG", quality=95), seed=c.seed),
    "palette_png": lambda c: _photo_case(
        "palette", IDENTIFIED, encode(Image.fromarray(c.image()).convert("P", palette=Image.Palette.ADAPTIVE),
                                      "PNG"), "image/png", seed=c.seed),
    "grayscale_jpeg": lambda c: dict(_photo_case("grayscale", IDENTIFIED,
                                                 encode(Image.fromarray(c.image()).convert("L"), "JPEG")),
                                     note="grayscale: no individual to check"),
    "rgba_png": lambda c: _photo_case("alpha", IDENTIFIED, encode(Image.fromarray(c.image()).convert("RGBA"), "PNG"),
                                      "image/png", seed=c.seed),
    "progressive_jpeg": lambda c: _photo_case("progressive", IDENTIFIED, c.jpeg(progressive=True), seed=c.seed),
    "exif_rotated": lambda c: _photo_case(
        "exif", IDENTIFIED, exif_rotated_jpeg(c.image(), ORIENTATIONS[c.n % len(ORIENTATIONS)]), seed=c.seed,
        fields={"crop_box": [0, 0, c.size[0], c.size[1]]},
        note="the box is drawn on the photo as shown: it fits only once the orientation is applied"),
    "garbled_exif": lambda c: _photo_case("exif", IDENTIFIED, garbled_exif_jpeg(c.image(), c.n), seed=c.seed),
    "animated_png": lambda c: _photo_case(
        "animated", IDENTIFIED, encode(_frames(c)[0], "PNG", save_all=True, append_images=_frames(c)[1:]),
        "image/png", seed=c.seed, note="the first frame"),
    "animated_webp": lambda c: _photo_case(
        "animated", IDENTIFIED, encode(_frames(c)[0], "WEBP", save_all=True, append_images=_frames(c)[1:],
                                       lossless=True), "image/webp", seed=c.seed),
    "mpo_jpeg": lambda c: _photo_case(
        "mpo", IDENTIFIED, encode(_frames(c)[0], "MPO", save_all=True, append_images=_frames(c)[1:2], quality=92),
        seed=c.seed, note="a camera JPEG with a second picture (Pillow: MPO)"),
    "png_as_jpeg": lambda c: _photo_case("wrong_type", IDENTIFIED, c.png(), "image/jpeg", seed=c.seed,
                                         note="decoded by its content: the declared type is advisory"),
    "jpeg_as_png": lambda c: _photo_case("wrong_type", IDENTIFIED, c.jpeg(), "image/png", seed=c.seed),
    "webp_as_jpeg": lambda c: _photo_case("wrong_type", IDENTIFIED, encode(c.image(), "WEBP", lossless=True),
                                          "image/jpeg", seed=c.seed),
    # ---- metadata the gateway refuses, or the worker (a box it cannot know is outside the photo)
    "crop_box_outside": lambda c: _photo_case(
        "bad_metadata", DEAD_LETTER, c.jpeg(),
        fields={"crop_box": [c.size[0] + 10 + c.n, 5, c.size[0] + 300, 60]}, note="bad_box at the worker"),
    "crop_box_degenerate": lambda c: _photo_case("bad_metadata", DEAD_LETTER, c.jpeg(),
                                                 fields={"crop_box": [10, 10, 10.5, 10.5]}),
    "crop_box_negative": lambda c: _request_case("bad_metadata", c, crop_box=[-5 - c.n, 0, 40, 40]),
    "crop_box_inverted": lambda c: _request_case("bad_metadata", c, crop_box=[50, 10, 20, 40]),
    "crop_box_shape": lambda c: _request_case("bad_metadata", c, crop_box=[[1, 2, 3], "0,0,9,9", {"x": 1}, True,
                                                                        [1, 2, "3", 4]][c.n % 5]),
    "crop_box_nan": lambda c: _request_case("bad_metadata", c, raw=json.dumps(
        request_fields(size=len(c.jpeg()), crop_box=[0.0, 0.0, float("nan"), float("inf")])).encode(),
        note="NaN / Infinity tokens (Python's json accepts them)"),
    "latitude_out_of_range": lambda c: _request_case("bad_metadata", c, latitude=[200, -90.5, 1e308, 91][c.n % 4]),
    "longitude_out_of_range": lambda c: _request_case("bad_metadata", c, longitude=[181, -500][c.n % 2]),
    "position_not_a_number": lambda c: _request_case("bad_metadata", c, latitude=["north", True, [1], {}][c.n % 4]),
    "taken_at_garbage": lambda c: _request_case(
        "bad_metadata", c, taken_at=["yesterday", "", 1700000000, "2026-13-45T99:99:99", "2999-01-01T00:00:00Z",
                                     [2026]][c.n % 6]),
    "unknown_field": lambda c: _request_case("bad_metadata", c, **{["colour", "__proto__", "owner", "size "][c.n % 4]:
                                                                   "grey"}),
    "missing_field": lambda c: _request_case("bad_metadata", c, **{["observer", "taken_at", "latitude",
                                                                    "content_type"][c.n % 4]: None}),
    "long_string": lambda c: _request_case("bad_metadata", c, **{["observer", "species_hint"][c.n % 2]:
                                                                 "w" * (201 + c.n * 37)}),
    "huge_string": lambda c: _request_case(
        "bad_metadata", c, observer="w" * (GATEWAY_BODY_LIMIT + 1000 + c.n),
        note="the body is over the gateway's 64 KiB limit (413)"),
    "content_type_not_allowed": lambda c: _request_case(
        "bad_metadata", c, content_type=["image/gif", "text/html", "", "image/jpeg; charset=x"][c.n % 4]),
    "size_not_positive": lambda c: _request_case("bad_metadata", c, size=[0, -5, "100", 1.5, True][c.n % 5]),
    "declared_size_over_limit": lambda c: _request_case("oversize", c, size=c.max_upload_bytes + 1 + c.n),
    # ---- bodies the gateway cannot read
    "not_json": lambda c: _request_case("bad_body", c, raw=[b"{not json", b"", b"taken_at=now",
                                                            b'{"latitude": 1,'][c.n % 4]),
    "json_not_an_object": lambda c: _request_case("bad_body", c, raw=[b"[1, 2]", b'"hello"', b"null",
                                                                      b"42"][c.n % 4]),
    "invalid_utf8": lambda c: _request_case("bad_body", c, raw=b'{"observer": "\xff\xfe\xfa"}'),
    "deeply_nested_json": lambda c: _request_case(
        "bad_body", c, raw=b"[" * (20_000 + c.n) + b"]" * (20_000 + c.n),
        note="nesting deeper than the JSON parser's recursion limit"),
    # ---- bodies larger than allowed
    "body_larger_than_declared": lambda c: dict(
        _photo_case("oversize", DEAD_LETTER, oversize_body(c.max_upload_bytes + 1024)),
        metadata=request_fields("image/jpeg", 1000 + c.n), acceptable=(REFUSED, DEAD_LETTER),
        note="S3 refuses a length other than the signed one; moto stores it, the bridge dead-letters too_large"),
    "form_body_over_limit": lambda c: _photo_case(
        "oversize", DEAD_LETTER, oversize_body(c.max_upload_bytes + 1024), declare_size=False,
        acceptable=(REFUSED, DEAD_LETTER),
        note="S3 enforces the policy's content-length-range, moto does not: the bridge dead-letters too_large"),
    # ---- who is calling
    "missing_token": lambda c: dict(_request_case("missing_token", c), token="none"),
    "wrong_token": lambda c: dict(_request_case("wrong_token", c), token="wrong"),
    "not_bearer": lambda c: dict(_request_case("wrong_token", c), token="not_bearer"),
    "researcher_token": lambda c: dict(_request_case("wrong_role", c), token="researcher"),
    "admin_token": lambda c: dict(_request_case("wrong_role", c), token="admin"),
    # ---- second writes of an uploaded photo (the original must stay and be identified)
    "replayed_upload": lambda c: dict(_photo_case("replay", REFUSED, c.jpeg()), replay="same", photo_seed=c.seed,
                                      note="the second PUT of the same URL is refused (If-None-Match)"),
    "overwrite_right_after": lambda c: dict(_photo_case("overwrite", REFUSED, c.jpeg()), replay="junk",
                                            photo_seed=c.seed),
    "overwrite_after_identified": lambda c: dict(_photo_case("overwrite", REFUSED, c.jpeg()), replay="late",
                                                 photo_seed=c.seed),
}


def _case(kind: str, n: int, seed: int, individuals: int, max_upload_bytes: int, max_pixels: int,
          label: str) -> HostileCase:
    rng = random.Random(f"{seed}:{kind}:{n}")
    ctx = _Ctx(n=n, rng=rng, seed=rng.randrange(individuals), size=SIZES[rng.randrange(len(SIZES))],
               max_upload_bytes=max_upload_bytes, max_pixels=max_pixels)
    return HostileCase(label=label, **KINDS[kind](ctx))


# kinds whose every variant sends more than max_upload_bytes (S3 keeps what it accepts): at most this many each
HEAVY_KINDS = {"body_larger_than_declared": 3, "form_body_over_limit": 3}


def hostile_cases(count: int = 1000, seed: int = 0, *, individuals: int = DEFAULT_INDIVIDUALS,
                  max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> list[HostileCase]:
    """At least `count` hostile cases: every kind in KINDS once, then again with other variants (other photos,
    sizes, cuts, values), round after round; the kinds of HEAVY_KINDS only up to their bound. Deterministic for
    `seed`. Valid photos show individuals 0..individuals-1; bombs and oversize bodies are sized from the chain's
    `max_pixels` and `max_upload_bytes`."""
    total = max(count, len(KINDS))
    cases: list[HostileCase] = []
    variant = 0
    while len(cases) < total:
        for kind in KINDS:
            if len(cases) >= total and variant > 0:
                break
            if variant >= HEAVY_KINDS.get(kind, total):
                continue
            cases.append(_case(kind, variant, seed, individuals, max_upload_bytes, max_pixels,
                               f"{kind}-{variant:03d}"))
        variant += 1
    return cases


def good_cases(count: int, seed: int = 0, *, individuals: int = DEFAULT_INDIVIDUALS) -> list[HostileCase]:
    """`count` ordinary JPEG photos of individuals 0..individuals-1 (sizes and qualities vary), expected identified
    as their individual."""
    cases = []
    for i in range(count):
        rng = random.Random(f"{seed}:good:{i}")
        individual, size = (seed + i) % individuals, SIZES[rng.randrange(len(SIZES))]
        body = encode(photo(individual, size), "JPEG", quality=rng.choice([80, 90, 95]))
        cases.append(HostileCase(label=f"good-{i:04d}", category="good", expect=IDENTIFIED, body=body,
                                 metadata=request_fields("image/jpeg", len(body)), photo_seed=individual))
    return cases


def mixed_cases(hostile: int = 1000, good: int = 200, seed: int = 0, **options) -> list[HostileCase]:
    """hostile_cases + good_cases, shuffled deterministically (good uploads among the bad ones)."""
    cases = hostile_cases(hostile, seed, **options) + good_cases(good, seed,
                                                                 individuals=options.get("individuals",
                                                                                         DEFAULT_INDIVIDUALS))
    random.Random(seed).shuffle(cases)
    return cases


# --------------------------------------------------------------------------- HTTP
def _http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
          timeout_s: float = HTTP_TIMEOUT_S) -> tuple[int, bytes]:
    """(status, body); (0, message) when there is no answer."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, exc.read()
        except OSError:
            return exc.code, b""
    except (urllib.error.URLError, OSError) as exc:
        return 0, f"no answer: {exc}".encode()


def gateway_reason(raw: bytes) -> str:
    """The gateway's error message (JSON "error"), or the body's text (aiohttp's own answers are text)."""
    text = raw.decode("utf-8", errors="replace").strip()
    try:
        answer = json.loads(text)
    except json.JSONDecodeError:
        return text[:500]
    if isinstance(answer, dict):
        return str(answer.get("error") or answer.get("problems") or "")[:500]
    return text[:500]


def s3_reason(raw: bytes) -> str:
    """`Code: Message` of an S3 XML error ("" when it has neither)."""
    text = raw.decode("utf-8", errors="replace")
    found = {name: re.search(rf"<{name}>(.*?)</{name}>", text, re.S) for name in ("Code", "Message")}
    parts = [m.group(1).strip() for m in found.values() if m]
    return ": ".join(p for p in parts if p)[:500] or text.strip()[:500]


def _authorization(role: str, tokens: dict[str, str]) -> dict[str, str]:
    if role == "none":
        return {}
    if role == "wrong":
        return {"Authorization": f"Bearer wrong-{uuid.uuid4().hex}"}
    if role == "not_bearer":
        return {"Authorization": tokens["app"]}
    return {"Authorization": f"Bearer {tokens[role]}"}


def _multipart(fields: dict[str, str], data: bytes, content_type: str) -> tuple[bytes, str]:
    boundary = f"whaleid-{uuid.uuid4().hex}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="photo"\r\n'
                 f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def send_upload(offer: dict[str, Any], data: bytes, override: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Send `data` as the gateway's offer says (PUT with its headers, or a POST form); `override` replaces
    headers (PUT) or the file part's type (POST). Content-Length is always the body's real length."""
    if offer.get("upload_method") == "POST":
        fields = dict(offer.get("upload_fields") or {})
        content_type = (override or {}).get("Content-Type", fields.get("Content-Type", "application/octet-stream"))
        body, form_type = _multipart(fields, data, content_type)
        return _http("POST", offer["upload_url"], body, {"Content-Type": form_type})
    headers = {**(offer.get("upload_headers") or {}), **(override or {})}
    headers["Content-Length"] = str(len(data))
    return _http("PUT", offer["upload_url"], data, headers)


def _junk(length: int) -> bytes:
    return (TEXT * (length // len(TEXT) + 1))[:length]


CREATE_ATTEMPTS = 5   # POST /v1/sightings tries per case when the gateway answers 502-504 or not at all
CREATE_RETRY_S = 0.5  # pause before the n-th retry: n x this


def submit(case: HostileCase, gateway_url: str, tokens: dict[str, str]) -> Submission:
    """Create the case's sighting and send its photo as an app would; refused (with the gateway's or S3's
    message), accepted (the photo is in S3; `settle` reads its fate) or error (no answer, 5xx)."""

    def result(outcome: str, reason: str = "", status: int | None = None, sighting_id: str | None = None,
               offer: dict | None = None) -> Submission:
        return Submission(case.label, case.category, case.expect, sighting_id, outcome, reason, status, case, offer)

    headers = {**_authorization(case.token, tokens), "Content-Type": "application/json"}
    payload = case.raw_body if case.raw_body is not None else json.dumps(case.metadata).encode()
    for attempt in range(CREATE_ATTEMPTS):  # an app retries a 503 ("retry later") or no answer, as the workload does
        status, raw = _http("POST", gateway_url.rstrip("/") + "/v1/sightings", payload, headers)
        if status not in (0, 502, 503, 504) or attempt == CREATE_ATTEMPTS - 1:
            break
        time.sleep(CREATE_RETRY_S * (attempt + 1))
    if status == 0 or status >= 500:
        return result(ERROR, gateway_reason(raw) or f"HTTP {status} without a message", status or None)
    if status != 201:
        return result(REFUSED, gateway_reason(raw), status)
    offer = json.loads(raw)
    sighting_id = offer["sighting_id"]
    status, raw = send_upload(offer, case.body, case.upload_headers)
    if status == 0 or status >= 500:
        return result(ERROR, f"upload: {s3_reason(raw) or f'HTTP {status}'}", status or None, sighting_id)
    if status >= 300:
        if case.replay:  # the first write of a replay case must succeed
            return result(ERROR, f"the first upload was refused ({status}): {s3_reason(raw)}", status, sighting_id)
        return result(REFUSED, s3_reason(raw), status, sighting_id)
    if case.replay in ("same", "junk"):
        again = case.body if case.replay == "same" else _junk(len(case.body))
        status, raw = send_upload(offer, again, case.upload_headers)
        if 400 <= status < 500:
            return result(REFUSED, s3_reason(raw), status, sighting_id, offer)
        if status == 0 or status >= 500:
            return result(ERROR, f"second upload: {s3_reason(raw) or f'HTTP {status}'}", status or None, sighting_id)
        return result(ACCEPTED, f"the second upload was accepted ({status}): the photo was replaced", status,
                      sighting_id, offer)
    return result(ACCEPTED, "", None, sighting_id, offer)


def submit_all(cases: Iterable[HostileCase], gateway_url: str, tokens: dict[str, str],
               parallel: int = 8) -> list[Submission]:
    """`submit` every case, `parallel` at a time (the order of `cases` is kept)."""
    cases = list(cases)
    if parallel <= 1:
        return [submit(case, gateway_url, tokens) for case in cases]
    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="hostile") as pool:
        return list(pool.map(lambda case: submit(case, gateway_url, tokens), cases))


# --------------------------------------------------------------------------- settle and summarise
def _read_sighting(gateway_url: str, token: str, sighting_id: str) -> dict | None:
    status, raw = _http("GET", f"{gateway_url.rstrip('/')}/v1/sightings/{sighting_id}",
                        headers={"Authorization": f"Bearer {token}"})
    if status != 200:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def _verdict(sub: Submission, final: dict | None, individual_of: Callable[[int], str] | None,
             late: tuple[int, bytes] | None) -> Verdict:
    case = sub.case
    outcomes = case.outcomes if case else (sub.expect,)
    verdict = Verdict(sub.label, sub.category, sub.expect, sub.outcome, sub.reason, False, sub.sighting_id,
                      sub.status)
    replay = case.replay if case else ""
    if sub.outcome == ERROR:
        verdict.detail = "not a 4xx refusal with a reason"
        return verdict
    state = (final or {}).get("status", PENDING)
    if replay:  # the second write's answer decides the outcome; the original photo must be identified
        if replay == "late":
            if late is None:
                verdict.outcome, verdict.reason = PENDING, ""
                verdict.detail = f"the original photo is {state}: the late overwrite was not tried"
                return verdict
            status, raw = late
            verdict.status = status or None
            if 400 <= status < 500:
                verdict.outcome, verdict.reason = REFUSED, s3_reason(raw)
            else:
                verdict.outcome = ACCEPTED if 200 <= status < 300 else ERROR
                verdict.reason = f"the overwrite after identification got HTTP {status}"
        if state != IDENTIFIED:
            verdict.detail = f"the original photo ended {state}, not identified"
            if state == PENDING:
                verdict.outcome = PENDING
            return verdict
        verdict.detail = "the original photo stayed identified"
    elif sub.outcome == ACCEPTED:
        if state == "failed":
            failure = final.get("failure") or {}
            verdict.outcome, verdict.reason = DEAD_LETTER, str(failure.get("reason") or "")
            verdict.detail = f"{failure.get('stage', '?')}: {failure.get('detail', '')}"[:300]
        elif state == IDENTIFIED:
            verdict.outcome, verdict.reason = IDENTIFIED, ""
        else:
            verdict.outcome, verdict.reason = PENDING, ""
            verdict.detail = "accepted, neither identified nor failed (lost)"
            return verdict
    if verdict.outcome not in outcomes:
        verdict.detail = (verdict.detail + "; " if verdict.detail else "") + f"expected {' or '.join(outcomes)}"
        return verdict
    if verdict.outcome in (REFUSED, DEAD_LETTER) and not verdict.reason.strip():
        verdict.detail = f"{verdict.outcome} without a reason"
        return verdict
    if verdict.outcome == IDENTIFIED and not replay and individual_of and case and case.photo_seed is not None:
        identification = final.get("identification") or {}
        candidates = identification.get("candidates") or [{}]
        best, wanted = candidates[0].get("individual_id"), individual_of(case.photo_seed)
        verdict.detail = f"best candidate {best} (score {candidates[0].get('score')})"
        if best != wanted or identification.get("new_individual"):
            verdict.detail += f", expected {wanted}"
            return verdict
    verdict.ok = True
    return verdict


def settle(submissions: list[Submission], gateway_url: str, tokens: dict[str, str], timeout_s: float = 120.0,
           individual_of: Callable[[int], str] | None = None, poll_s: float = 0.25) -> list[Verdict]:
    """Poll `GET /v1/sightings/{id}` (the app's token: it owns them) for every accepted submission (and the
    originals of replayed ones) until identified or failed, or `timeout_s`; one Verdict per submission, in order.
    An `overwrite_after_identified` case sends its second write once its sighting is identified.
    `individual_of(seed)`: the gallery's id of photo individual `seed`; then an identified photo of a known
    individual must have it as best candidate."""
    finals: dict[int, dict] = {}
    late: dict[int, tuple[int, bytes]] = {}
    waiting = {i for i, s in enumerate(submissions) if s.sighting_id and s.outcome != ERROR
               and (s.outcome == ACCEPTED or (s.case is not None and s.case.replay))}
    deadline = time.monotonic() + timeout_s
    while waiting and time.monotonic() < deadline:
        for i in sorted(waiting):
            answer = _read_sighting(gateway_url, tokens["app"], submissions[i].sighting_id)
            if answer is None or answer.get("status", PENDING) == PENDING:
                continue
            finals[i] = answer
            case = submissions[i].case
            if case is not None and case.replay == "late" and answer["status"] == IDENTIFIED:
                late[i] = send_upload(submissions[i].offer, _junk(len(case.body)), case.upload_headers)
            waiting.discard(i)
        if waiting:
            time.sleep(poll_s)
    return [_verdict(s, finals.get(i), individual_of, late.get(i)) for i, s in enumerate(submissions)]


def summarise(verdicts: list[Verdict]) -> dict[str, Any]:
    """Counts by category and outcome, dead-letter reasons, refusals by HTTP status, and what went wrong:
    `bad_inputs` (cases a correct system refuses or dead-letters) and how many got a reason (`with_reason`),
    `mismatches` (expected vs got), `lost` (accepted, still pending). `passed`: every verdict ok."""
    by_category: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for v in verdicts:
        by_category[v.category][v.outcome] += 1
    bad = [v for v in verdicts if v.expect != IDENTIFIED]
    unusual = [v for v in verdicts if v.expect == IDENTIFIED and v.category != "good"]
    good = [v for v in verdicts if v.category == "good"]
    lost = [v for v in verdicts if v.outcome == PENDING]
    mismatches = [{"label": v.label, "category": v.category, "expected": v.expect, "got": v.outcome,
                   "reason": v.reason, "status": v.status, "detail": v.detail} for v in verdicts if not v.ok]
    return {
        "cases": len(verdicts),
        "ok": sum(v.ok for v in verdicts),
        "passed": bool(verdicts) and all(v.ok for v in verdicts),
        "by_outcome": dict(collections.Counter(v.outcome for v in verdicts)),
        "by_category": {c: dict(counts) for c, counts in sorted(by_category.items())},
        "dead_letter_reasons": dict(collections.Counter(v.reason for v in verdicts if v.outcome == DEAD_LETTER)),
        "refusals_by_status": {str(k): n for k, n in sorted(collections.Counter(
            v.status for v in verdicts if v.outcome == REFUSED).items(), key=lambda kv: kv[0] or 0)},
        "bad_inputs": len(bad),
        "with_reason": sum(1 for v in bad if v.outcome in (REFUSED, DEAD_LETTER) and v.reason.strip()),
        "unusual_valid": len(unusual),
        "unusual_identified": sum(1 for v in unusual if v.outcome == IDENTIFIED and v.ok),
        "good": len(good),
        "good_identified": sum(1 for v in good if v.outcome == IDENTIFIED and v.ok),
        "lost": len(lost),
        "lost_labels": [v.label for v in lost],
        "mismatches": mismatches,
    }

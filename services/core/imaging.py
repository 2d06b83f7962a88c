"""Image decoding, validation, cropping and the model's deterministic preprocessing (numpy + Pillow only).

This is the one implementation of the eval-time preprocessing: training's evaluation path, the Triton
`preprocess` model and the worker all call these functions, so offline and served embeddings agree.

Model input contract: float32, NHWC, RGB, values in [0, 255] (Keras EfficientNet rescales and normalises
inside the network), resized to size x size with Pillow's bilinear filter (aspect ratio not preserved).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from services.core.errors import DataError

ACCEPTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP")  # MPO: a camera JPEG with extra pictures (the first is used)
# what the served models decode: an upload as it is, or pixels the worker already decoded (a crop, a normalised or
# scaled photo) as binary PPM (`encode_ppm`: raw 8-bit RGB behind a short header, lossless, written and read at
# memory speed; a PNG of an 800x600 crop costs ~40 ms of CPU to write and ~15 ms to read). Uploads themselves
# stay ACCEPTED_FORMATS: PPM is a transfer format between the worker and Triton, not an upload format.
TRANSFER_FORMATS = (*ACCEPTED_FORMATS, "PPM")
# the config parameter `image_formats` of the built ensemble and detector: what they decode. The worker sends
# pixels as PPM only to a build that lists it (a build made before lists nothing: PNG then)
FORMATS_PARAMETER = "image_formats"
FORMATS_PARAMETER_VALUE = ",".join(TRANSFER_FORMATS)


def parse_formats_parameter(value: str | None) -> frozenset[str]:
    """The formats an `image_formats` parameter value lists (comma-separated); empty for none."""
    return frozenset(f.strip().upper() for f in str(value or "").split(",") if f.strip())
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_ASPECT_RATIO = 20.0  # a longer strip than this is not a photo of an animal (refused: bad_dimensions)
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})  # 16-bit grayscale PNGs
ORIENTATION_TAG = 0x0112
# EXIF orientation -> the transpose that makes the stored pixels look as a viewer shows them (1: as stored)
UPRIGHT = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
SWAPS_SIDES = frozenset({5, 6, 7, 8})  # orientations whose upright image has width and height swapped


class ImageRejected(DataError):
    """The bytes are not an acceptable image; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
                 formats: tuple[str, ...] = ACCEPTED_FORMATS) -> np.ndarray:
    """Decode and fully validate an uploaded image; returns uint8 RGB (H, W, 3), upright.

    Checks, in order: not empty; one of `formats` (uploads: JPEG, PNG, WebP; MPO is a JPEG; the served models
    also take the worker's binary PPM, TRANSFER_FORMATS); the pixel count from the
    header is at most `max_pixels` (decompression bombs are refused before decoding) and the longer side at most
    `max_aspect_ratio` times the shorter; the whole file decodes (truncated files are refused).

    What is decoded is what a viewer shows: the EXIF orientation is applied (a phone's portrait photo is upright,
    and the uploader's crop box, drawn on the photo as shown, fits it); CMYK, palette, grayscale, alpha and
    16-bit images become 8-bit RGB (16-bit values are scaled, not clipped); of an animated image (or an MPO),
    the first frame.
    """
    return decode_scaled(data, 1, max_pixels, max_aspect_ratio, formats).pixels


@dataclass(frozen=True)
class Decoded:
    """What `decode_scaled` returns: the upright pixels, the upright size of the image as uploaded, the factor it
    was reduced by on each side (1: full size; JPEG only, libjpeg's DCT scaling), and whether the upload is
    `plain`."""

    pixels: np.ndarray  # uint8 (h, w, 3), upright
    size: tuple[int, int]  # (width, height) of the uploaded image as shown: boxes are in these coordinates
    scale: int = 1  # pixels has about size / scale on each side (ceil)
    # the upload has nothing to normalise: one frame, 8-bit RGB, JPEG or PNG (PLAIN_FORMATS), upright (no EXIF
    # orientation other than 1), no transparency; any decoder's plain decoding of its bytes gives these pixels
    # (at scale 1), so they may be sent on as they are
    plain: bool = False

    def to_pixels(self, box) -> list[float]:
        """A box in the uploaded image's (upright) coordinates -> the same region in `pixels`' coordinates."""
        fx, fy = self.pixels.shape[1] / self.size[0], self.pixels.shape[0] / self.size[1]
        return [float(box[0]) * fx, float(box[1]) * fy, float(box[2]) * fx, float(box[3]) * fy]

    def to_original(self, box) -> list[float]:
        """A box in `pixels`' coordinates -> the uploaded image's (upright) coordinates, clamped to it."""
        fx, fy = self.size[0] / self.pixels.shape[1], self.size[1] / self.pixels.shape[0]
        x0, y0, x1, y1 = (float(v) for v in box)
        return [max(0.0, x0 * fx), max(0.0, y0 * fy), min(float(self.size[0]), x1 * fx),
                min(float(self.size[1]), y1 * fy)]


@dataclass(frozen=True)
class Header:
    """An image's header (nothing decoded): format, Pillow mode, stored size and upright size."""

    format: str
    mode: str
    stored: tuple[int, int]  # (width, height) as stored
    size: tuple[int, int]  # (width, height) as shown (EXIF orientation applied)


DRAFT_FORMATS = frozenset({"JPEG", "MPO"})  # what libjpeg decodes at 1/2, 1/4 or 1/8 of the size (Image.draft)
DRAFT_FACTORS = (8, 4, 2)
PLAIN_FORMATS = frozenset({"JPEG", "PNG"})  # what a `plain` upload may be (what every decoder reads)


def draft_factor(image_format: str, reduce: int) -> int:
    """The factor a decode allowed to reduce by `reduce` (at most) really reduces by: 8, 4 or 2 for a JPEG,
    else 1."""
    if image_format not in DRAFT_FORMATS:
        return 1
    return next((f for f in DRAFT_FACTORS if f <= reduce), 1)


def read_header(data: bytes) -> Header | None:
    """The header of an image (no pixels decoded); None when it is not one Pillow can open."""
    with OpenedImage(data) as opened:
        return opened.header


def _header_orientation(image: Image.Image) -> int:
    """The EXIF orientation as far as the header tells (a PNG whose eXIf chunk follows the pixels: 1)."""
    if image.format == "PNG" and "exif" not in image.info:
        return 1
    return exif_orientation(image)


def decode_scaled(data: bytes, reduce: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
                  formats: tuple[str, ...] = ACCEPTED_FORMATS) -> Decoded:
    """decode_image, allowed to reduce a JPEG by up to `reduce` on each side (libjpeg decodes at 1/2, 1/4 or
    1/8 of the size: Image.draft; every other format, and `reduce` 1, decodes at full size). Validation is the
    same (the header's size against `max_pixels` and `max_aspect_ratio`; the whole stream is decoded, so a
    truncated file is refused at any scale); `Decoded.size` is the uploaded image's upright size."""
    with OpenedImage(data) as opened:
        return opened.decode(reduce, max_pixels, max_aspect_ratio, formats)


class OpenedImage:
    """Image bytes opened once by Pillow (the header parsed, nothing decoded): `header` (what `read_header`
    gives), then `decode` (what `decode_scaled` gives) on the same open image. A context manager (closes it).

    The open records Pillow's DecompressionBombWarning instead of raising it, so the header of a bomb is read
    (`decode_cost` needs it); `decode` then refuses it (too_many_pixels) as an open that raised it would."""

    def __init__(self, data: bytes):
        self.image: Image.Image | None = None
        self.refusal: ImageRejected | None = None  # what `decode` raises before anything else
        self.header: Header | None = None
        if not data:
            self.refusal = ImageRejected("empty", "zero bytes")
            return
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", Image.DecompressionBombWarning)
                self.image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            self.refusal = ImageRejected("not_an_image", "the bytes are not a recognised image format")
        except Image.DecompressionBombError as exc:
            self.refusal = ImageRejected("too_many_pixels", str(exc))
        except Exception as exc:  # noqa: BLE001 - Pillow raises many types on hostile headers
            self.refusal = ImageRejected("not_an_image", f"{type(exc).__name__}: {exc}")
        for warning in caught:
            if issubclass(warning.category, Image.DecompressionBombWarning):  # raised, it would have ended the open
                self.refusal = ImageRejected("too_many_pixels", str(warning.message))
            else:  # any other warning goes on as if not recorded
                warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        if self.image is not None:
            image = self.image
            # what a `plain` upload needs from the header (read before `decode` changes the image: draft, load)
            self._plain_header = (image.format in PLAIN_FORMATS and image.mode == "RGB"
                                  and not getattr(image, "is_animated", False)
                                  and getattr(image, "n_frames", 1) == 1 and "transparency" not in image.info)
            try:
                width, height = image.size
                swapped = _header_orientation(image) in SWAPS_SIDES
                self.header = Header(str(image.format), image.mode, (width, height),
                                     (height, width) if swapped else (width, height))
            except Exception:  # noqa: BLE001 - hostile headers raise many types; decode gives the reason
                self.header = None

    def __enter__(self) -> "OpenedImage":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        if self.image is not None:
            self.image.close()

    def decode(self, reduce: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO,
               formats: tuple[str, ...] = ACCEPTED_FORMATS) -> Decoded:
        """`decode_scaled` of the opened bytes (once: the image is closed after its pixels are read)."""
        if self.refusal is not None:
            raise self.refusal
        image = self.image
        if image.format not in formats:
            raise ImageRejected("unsupported_format", f"{image.format}; accepted: {', '.join(formats)}")
        width, height = image.size
        if width <= 0 or height <= 0:
            raise ImageRejected("not_an_image", f"invalid size {width}x{height}")
        if width * height > max_pixels:
            raise ImageRejected("too_many_pixels", f"{width}x{height} = {width * height} pixels > {max_pixels}")
        if max(width, height) > max_aspect_ratio * min(width, height):
            raise ImageRejected("bad_dimensions", f"{width}x{height}: one side is more than {max_aspect_ratio:g} "
                                                  "times the other")
        try:
            scale = draft_factor(image.format, int(reduce))
            if scale > 1 and image.draft(image.mode, (width // scale, height // scale)) is None:
                scale = 1  # Pillow could not reduce this one (e.g. several tiles): full size
            image.load()
            orientation, upright = _orientation(image)
            pixels = _rgb(image)
            image.close()  # the decoded original is no longer needed: only the 8-bit RGB pixels stay
            pixels = _upright(pixels, orientation)
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageRejected("truncated", f"the image does not decode fully: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a hostile body must be refused, never crash the caller
            raise ImageRejected("undecodable", f"{type(exc).__name__}: {exc}") from None
        size = (height, width) if orientation in SWAPS_SIDES else (width, height)
        return Decoded(np.asarray(pixels, dtype=np.uint8), size, scale, self._plain_header and upright)


SIXTEEN_BIT_ROWS_PIXELS = 1 << 20  # pixels converted at a time from 16 to 8 bits (bounded temporaries)


def _rgb(image: Image.Image) -> np.ndarray:
    """uint8 RGB (H, W, 3) of any mode the accepted formats decode to; 16-bit grayscale is scaled to 8 bits
    (round(v / 257), values clipped to 0..65535), a band of rows at a time: no 64-bit (or full-size 32-bit)
    copy, only the 8-bit output beside the decoded image."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)
    width, height = image.size
    out = np.empty((height, width, 3), dtype=np.uint8)
    rows = max(1, SIXTEEN_BIT_ROWS_PIXELS // width)
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        values = np.asarray(image.crop((0, top, width, bottom)))
        if values.dtype.kind == "i":  # mode I: 32-bit signed
            values = np.clip(values, 0, 65535)
        gray = ((values.astype(np.uint32) + 128) // 257).astype(np.uint8)
        out[top:bottom] = gray[:, :, None]
    return out


def _upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """The pixels turned as the EXIF orientation says (what Image.transpose(UPRIGHT[orientation]) gives)."""
    turned = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
              5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
              8: lambda a: np.rot90(a, 1)}.get(orientation)
    return pixels if turned is None else np.ascontiguousarray(turned(pixels))


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1..8) of an opened image; 1 (as stored) without one, or when its EXIF is unreadable
    (a photo with a garbled EXIF block is still a photo)."""
    return _orientation(image)[0]


def _orientation(image: Image.Image) -> tuple[int, bool]:
    """(exif_orientation, whether the image is stored upright: its EXIF is readable and has no orientation, or
    orientation 1)."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - hostile EXIF blocks raise many types
        return 1, False
    upright = value in (1, None)
    try:
        return (int(value) if int(value) in UPRIGHT else 1), upright
    except Exception:  # noqa: BLE001 - a value that is not a number
        return 1, upright


def file_orientation(path) -> int:
    """The EXIF orientation (1..8) of an image file, from its header only (no decoding); 1 when it has none or
    cannot be read. Training's tf.data decoder applies it (training.pipeline.upright) so that it sees the photo
    the way decode_image does."""
    try:
        with Image.open(path) as image:
            return exif_orientation(image)
    except Exception:  # noqa: BLE001 - an unreadable file fails later, where it is decoded
        return 1


def oriented_size(path) -> tuple[int, int] | None:
    """(width, height) of an image file as shown (EXIF orientation applied), from its header; None if unreadable."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            return (height, width) if exif_orientation(image) in SWAPS_SIDES else (width, height)
    except (OSError, ValueError):
        return None


def load_image_file(path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    with open(path, "rb") as fh:
        return decode_image(fh.read(), max_pixels=max_pixels)


def validate_box(box, width: int, height: int) -> tuple[int, int, int, int]:
    """Clamp a [x0, y0, x1, y1] pixel box to the image; refuse boxes that are empty or not finite."""
    if box is None or len(box) != 4:
        raise DataError(f"crop box must be [x0, y0, x1, y1], got {box!r}")
    values = np.asarray(box, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise DataError(f"crop box has non-finite values: {box!r}")
    x0, y0, x1, y1 = values
    x0, x1 = int(np.clip(np.floor(x0), 0, width)), int(np.clip(np.ceil(x1), 0, width))
    y0, y1 = int(np.clip(np.floor(y0), 0, height)), int(np.clip(np.ceil(y1), 0, height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise DataError(f"crop box {box!r} is empty inside a {width}x{height} image")
    return x0, y0, x1, y1


def crop(image: np.ndarray, box=None) -> np.ndarray:
    """Crop uint8 (H, W, 3) to a pixel box; the whole image when box is None."""
    if box is None:
        return image
    x0, y0, x1, y1 = validate_box(box, image.shape[1], image.shape[0])
    return image[y0:y1, x0:x1]


def resize_for_model(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 (H, W, 3) -> float32 (size, size, 3) in [0, 255], Pillow bilinear."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    resized = Image.fromarray(image).resize((size, size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.float32)


def preprocess(image: np.ndarray, size: int, box=None) -> np.ndarray:
    """The eval-time model input of one image: crop (optional) then resize."""
    return resize_for_model(crop(image, box), size)


def encode_ppm(image: np.ndarray) -> bytes:
    """Lossless binary PPM (P6, maxval 255) of uint8 RGB pixels: what the worker sends Triton when it has pixels
    rather than the upload's own bytes (decode_image with TRANSFER_FORMATS reads back the identical pixels)."""
    pixels = np.ascontiguousarray(image, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DataError(f"encode_ppm needs (H, W, 3) RGB pixels, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    return b"P6\n%d %d\n255\n" % (width, height) + pixels.tobytes()


def encode_png(image: np.ndarray) -> bytes:
    """Lossless encoding used to ship a crop to Triton (decodes to the identical pixels)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()

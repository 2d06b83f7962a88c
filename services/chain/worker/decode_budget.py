"""The worker's decode budget: the sightings of a batch are decoded at the same time only while their estimated
decode memory fits in `worker_decode_budget_mb` (one budget per worker process, shared by its fetch threads).

The cost of a decode is estimated from the image header before anything is decoded (`decode_cost`): width x
height (after the JPEG draft reduction the worker asks for) x the bytes per pixel the decode holds at its peak
(Pillow's decoded image, the 8-bit RGB copy, the upright copy). A sighting whose cost does not fit waits until
the decodes in flight end and release theirs; one that is over the whole budget alone is decoded when nothing
else is (sequentially): the budget delays a photo, it never refuses one. A file whose header is unreadable costs
nothing: decode_image refuses it before decoding.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from contextlib import contextmanager

from services.core.imaging import Header, draft_factor

MB = 1 << 20
# bytes per pixel of Pillow's decoded image, by mode (Pillow stores RGB, RGBA, CMYK and YCbCr as 4 bytes a pixel)
STORED_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 4, "PA": 4, "La": 4, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2,
                "I": 4, "F": 4}
RGB_CONVERTED = 4  # a mode other than RGB is converted to a Pillow RGB image first (not for 16-bit grey)
RGB_ARRAY = 3 + 3  # the uint8 (h, w, 3) result, and its upright copy when the EXIF orientation turns it
TRIM_MIN_BYTES = 32 * MB  # after a decode this large, free memory goes back to the system (malloc_trim)


def _malloc_trim():
    """glibc's malloc_trim, or None elsewhere. Each fetch thread allocates in its own malloc arena, and a freed
    decode left in one arena is not reused by the others nor returned: without a trim, a worker's RSS after
    sequential decodes on 16 threads grows to what 16 concurrent ones would take (measured: 403 MB for four
    40 MP bombs decoded one after the other on four threads, 204 MB with one arena)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


MALLOC_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give the memory freed by a large decode back to the system (no-op without glibc)."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


def decode_cost(header: Header | None, reduce: int = 1, max_pixels: int | None = None) -> int:
    """Estimated peak bytes of decoding an image with this header, allowed to reduce by `reduce`; 0 for one that
    decode_image refuses before decoding (unreadable, or over `max_pixels`)."""
    if header is None:
        return 0
    width, height = header.stored
    if max_pixels is not None and width * height > max_pixels:
        return 0
    scale = draft_factor(header.format, reduce)
    pixels = -(-width // scale) * -(-height // scale)
    stored = STORED_BYTES.get(header.mode, 4)
    converted = 0 if header.mode == "RGB" or stored == 2 or header.mode == "I" else RGB_CONVERTED
    return pixels * (stored + converted + RGB_ARRAY)


class DecodeBudget:
    """At most `limit_bytes` of estimated decode memory in flight (one over the limit alone runs by itself)."""

    def __init__(self, limit_bytes: int):
        self.limit = int(limit_bytes)
        self.used = 0
        self.peak = 0  # the most held at once (for tests and metrics)
        self.waited = 0  # decodes that had to wait for others to release
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, cost: int):
        cost = max(0, int(cost))
        with self._cond:
            if self.used and self.used + cost > self.limit:
                self.waited += 1
                while self.used and self.used + cost > self.limit:
                    self._cond.wait()
            self.used += cost
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            if cost >= TRIM_MIN_BYTES:
                release_memory()
            with self._cond:
                self.used -= cost
                self._cond.notify_all()


_shared: dict[int, DecodeBudget] = {}
_shared_lock = threading.Lock()


def shared_budget(limit_mb: float) -> DecodeBudget | None:
    """The worker process's budget for `limit_mb` (one object per limit, shared by every thread); None for a
    limit of 0 or less (no budget)."""
    if limit_mb <= 0:
        return None
    limit = int(limit_mb * MB)
    with _shared_lock:
        return _shared.setdefault(limit, DecodeBudget(limit))

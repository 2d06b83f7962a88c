"""The `memory_bomb` scenario of `whaleid chaos` (issue #22, item 2): small files of many pixels, sent as whole
worker batches, must not take the worker's memory past `MAX_WORKER_RSS`.

The bombs, each a few KB to 2 MB: 40 MP 16-bit grey PNGs (a ramp) and 40 MP CMYK JPEGs (one colour), valid
photos at the pixel limit, to be identified; and PNGs one row over the limit, to be dead-lettered
`too_many_pixels`. They are uploaded `worker_batch_size` at a time, all at once, so the worker takes them as
whole batches. The row reports the worker's peak RSS during the scenario (its VmHWM, reset when it starts;
sampled every 0.1 s where the kernel does not allow the reset); it passes when every bomb ended with its result
or its reason (nothing lost) and that peak stayed within the bound.
"""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from services.devtools.chaos import hostile

NAME = "memory_bomb"
MAX_WORKER_RSS = 1 << 30  # 1 GiB: half the worker pod's 2 Gi limit
BOMB_SIZE = (8000, 5000)  # 40 MP: Settings.max_image_pixels' default


def png16_bomb(size: tuple[int, int] = BOMB_SIZE) -> bytes:
    """A 16-bit grey PNG of a horizontal ramp: ~90 KB for 40 MP."""
    width, height = size
    ramp = (np.arange(width, dtype=np.uint32) * 65535 // max(1, width - 1)).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()).save(buffer, format="PNG", compress_level=9)
    return buffer.getvalue()


def cmyk_bomb(size: tuple[int, int] = BOMB_SIZE) -> bytes:
    """A one-colour CMYK JPEG: ~2 MB for 40 MP."""
    buffer = io.BytesIO()
    Image.new("CMYK", size, (10, 200, 30, 5)).save(buffer, format="JPEG", quality=50)
    return buffer.getvalue()


def bomb_cases(count: int, max_pixels: int) -> list[hostile.HostileCase]:
    """`count` bombs: 16-bit PNGs and CMYK JPEGs at the pixel limit (identified), one in four over it
    (dead-lettered `too_many_pixels`)."""
    width = BOMB_SIZE[0]
    at_limit = (width, max_pixels // width)
    bodies = {"png16": (png16_bomb(at_limit), "image/png", hostile.IDENTIFIED),
              "cmyk": (cmyk_bomb(at_limit), "image/jpeg", hostile.IDENTIFIED),
              "over": (png16_bomb((width, at_limit[1] + 1)), "image/png", hostile.DEAD_LETTER)}
    kinds = ("png16", "cmyk", "png16", "over")
    cases = []
    for n in range(count):
        kind = kinds[n % len(kinds)]
        body, content_type, expect = bodies[kind]
        cases.append(hostile.HostileCase(
            label=f"{NAME}-{kind}-{n:03d}", category=f"bomb_{kind}", expect=expect, body=body,
            content_type=content_type, metadata=hostile.request_fields(content_type, len(body)),
            note="40 MP at the limit: identified" if expect == hostile.IDENTIFIED else "over max_image_pixels"))
    return cases


class PeakRss:
    """The peak RSS of a process from now on: its VmHWM after a reset (/proc/<pid>/clear_refs), and the largest
    VmRSS sampled every `interval_s` (the bound when the reset is not allowed)."""

    def __init__(self, pid: int, interval_s: float = 0.1):
        self.status = Path(f"/proc/{pid}/status")
        self.interval_s = interval_s
        self.sampled = self.before = 0
        self.reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-rss", daemon=True)

    def _field(self, name: str) -> int:
        try:
            for line in self.status.read_text().splitlines():
                if line.startswith(name):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sampled = max(self.sampled, self._field("VmRSS:"))

    def start(self) -> "PeakRss":
        try:
            (self.status.parent / "clear_refs").write_text("5")
            self.reset = True
        except OSError:
            self.reset = False
        self.before = self.sampled = self._field("VmRSS:")
        self._thread.start()
        return self

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(2)
        peak = max(self.sampled, self._field("VmRSS:"))
        return max(peak, self._field("VmHWM:")) if self.reset else peak


def run_memory_bomb(env, count: int, timeout_s: float, progress, tokens: dict[str, str]) -> dict:
    """Send `count` bombs, `worker_batch_size` at once; the row of the report (see the module doc)."""
    from services.devtools.chaos.probe_model import individual_id

    cases = bomb_cases(count, env.settings.max_image_pixels)
    batch = max(1, env.settings.worker_batch_size)
    worker = env.services["worker"].proc
    progress(f"{NAME}: sending {len(cases)} bombs ({len(cases[0].body) // 1024} KB to "
             f"{max(len(c.body) for c in cases) // 1024} KB each, 40 MP) in batches of {batch}")
    peak = PeakRss(worker.pid).start()
    started = time.monotonic()
    submissions = []
    for first in range(0, len(cases), batch):
        submissions += hostile.submit_all(cases[first:first + batch], env.gateway_url, tokens, parallel=batch)
    sent_at = time.monotonic()
    verdicts = hostile.settle(submissions, env.gateway_url, tokens, timeout_s, individual_of=individual_id)
    worker_peak = peak.stop()
    summary = hostile.summarise(verdicts)
    accepted = [v.sighting_id for v in verdicts if v.sighting_id]
    result = {
        "name": NAME,
        "fault": f"{len(cases)} small files of 40 MP (16-bit grey PNGs, CMYK JPEGs; one in four over the pixel "
                 f"limit) sent {batch} at a time; worker peak RSS at most {MAX_WORKER_RSS >> 20} MiB",
        "uploaded": len(accepted),
        "identified": summary["by_outcome"].get(hostile.IDENTIFIED, 0),
        "dead_lettered": summary["dead_letter_reasons"],
        "refused": sum(summary["refusals_by_status"].values()),
        "lost": {"sightings": summary["lost"]},
        "duplicated": {},
        "redelivered": {},
        "bad_inputs": summary["bad_inputs"],
        "hostile_sent": len(cases),
        "with_reason": summary["with_reason"],
        "mismatches": summary["mismatches"][:20],
        "by_category": summary["by_category"],
        "worker_peak_rss_mb": round(worker_peak / 2**20, 1),
        "worker_rss_before_mb": round(peak.before / 2**20, 1),
        "worker_peak_rss_measured": "VmHWM" if peak.reset else "VmRSS sampled every 0.1 s",
        "worker_restarted": worker.poll() is not None,
        "fault_s": round(sent_at - started, 1),
        "recover_s": round(time.monotonic() - sent_at, 1),
    }
    result["passed"] = (bool(summary["passed"]) and worker_peak <= MAX_WORKER_RSS
                        and not result["worker_restarted"])
    return result

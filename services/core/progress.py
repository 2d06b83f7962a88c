"""A small progress bar for long steps (stderr; a redrawn bar on a terminal, lines every 10% else): catalogue imports,
gallery builds, re-embedding, `whaleid synth`."""

from __future__ import annotations

import sys
import time


class ProgressBar:
    def __init__(self, what: str, total: int, stream=None, enabled: bool = True):
        self.what, self.total, self.done = what, max(0, int(total)), 0
        self.stream = stream or sys.stderr
        self.enabled = enabled and self.total > 0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._last_decile = -1

    def update(self, count: int = 1) -> None:
        self.done = min(self.total, self.done + count)
        if not self.enabled:
            return
        if self.tty:
            filled = int(30 * self.done / self.total)
            self.stream.write(f"\r{self.what} [{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                              f"{time.monotonic() - self.started:.0f}s")
            if self.done == self.total:
                self.stream.write("\n")
            self.stream.flush()
            return
        decile = 10 * self.done // self.total
        if decile != self._last_decile:
            self._last_decile = decile
            print(f"{self.what}: {self.done}/{self.total} ({100 * self.done // self.total}%, "
                  f"{time.monotonic() - self.started:.0f}s)", file=self.stream, flush=True)

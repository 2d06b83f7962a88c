"""One lane per webhook endpoint: a bounded in-memory queue and the endpoint's own sender threads, so a slow or
dripping receiver only ever holds its own threads (each attempt ends by `webhook_deadline_s`) and never another
app's deliveries or the topic consumer.

`offer(job)` never blocks: False when the queue is full (the caller keeps the job in Redis for later). `stop()`
lets the attempts in flight end (each within its deadline) and hands back the jobs still queued.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

log = logging.getLogger(__name__)


class Lane:
    def __init__(self, app: str, size: int, threads: int, deliver: Callable):
        self.app = app
        self.deliver = deliver
        self.queue: queue.Queue = queue.Queue(maxsize=max(1, int(size)))
        self.in_flight = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, name=f"webhook-{app}-{n}", daemon=True)
                         for n in range(max(1, int(threads)))]

    def start(self) -> "Lane":
        for thread in self._threads:
            thread.start()
        return self

    def offer(self, job) -> bool:
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def room(self) -> int:
        """Jobs the lane takes now without queueing beyond its bound: free queue slots."""
        return max(0, self.queue.maxsize - self.queue.qsize())

    def waiting(self) -> int:
        return self.queue.qsize()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            with self._lock:
                self.in_flight += 1
            try:
                self.deliver(job)
            finally:
                with self._lock:
                    self.in_flight -= 1

    def stop(self, timeout_s: float) -> list:
        """Stop taking jobs; wait up to `timeout_s` for the attempts in flight; the jobs never started."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout_s)
        left = []
        while True:
            try:
                left.append(self.queue.get_nowait())
            except queue.Empty:
                return left


class Lanes:
    """{app: Lane} for the configured endpoints."""

    def __init__(self, apps, size: int, threads: int, deliver: Callable):
        self.lanes = {app: Lane(app, size, threads, deliver) for app in apps}

    def start(self) -> "Lanes":
        for lane in self.lanes.values():
            lane.start()
        return self

    def get(self, app: str) -> Lane | None:
        return self.lanes.get(app)

    def stop(self, timeout_s: float) -> list:
        for lane in self.lanes.values():
            lane._stop.set()
        return [job for lane in self.lanes.values() for job in lane.stop(timeout_s)]

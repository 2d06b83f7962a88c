"""The stream of good sightings a scenario sends: an app uploading probe photos through the gateway at a steady
rate, retrying as a real app does when the gateway or S3 does not answer or answers 5xx (a sighting counts as
uploaded once its photo's PUT succeeded; one whose creation or PUT kept failing is counted as `not_accepted`,
never as lost). A good photo refused with a 4xx is a bug: it is counted in `refused` and fails the scenario."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from services.chain.gateway.client import AppClient, GatewayError
from services.devtools.chaos.probe_model import individual_id, probe_photo

RETRIES = 40
RETRY_PAUSE_S = 0.25


@dataclass
class Uploaded:
    sighting_id: str
    individual: str  # the probe individual the photo shows
    sent_at: float


@dataclass
class Workload:
    gateway_url: str
    token: str
    count: int
    rate_per_s: float
    individuals: int
    first_sighting: int = 0  # photo variant numbers differ between scenarios
    uploaded: list[Uploaded] = field(default_factory=list)
    not_accepted: int = 0
    refused: list[str] = field(default_factory=list)  # a good photo refused (4xx): a bug, reported with the reason
    retries: int = 0

    def __post_init__(self):
        self._thread: threading.Thread | None = None
        self.sent = threading.Event()
        self._progress = 0
        self._lock = threading.Lock()

    @property
    def progress(self) -> int:
        """How many photos were tried so far."""
        return self._progress

    def start(self) -> "Workload":
        self._thread = threading.Thread(target=self._run, name="chaos-workload", daemon=True)
        self._thread.start()
        return self

    def wait_progress(self, share: float, timeout: float = 300.0) -> None:
        """Block until `share` of the photos were tried (a fault goes in mid-stream)."""
        deadline = time.monotonic() + timeout
        while self._progress < share * self.count and not self.sent.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        client = AppClient(self.gateway_url, self.token, timeout_s=5.0)
        interval = 1.0 / self.rate_per_s if self.rate_per_s > 0 else 0.0
        started = time.monotonic()
        try:
            for index in range(self.count):
                pause = started + index * interval - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                individual = index % self.individuals
                self._upload_one(client, individual, probe_photo(individual, self.first_sighting + index))
                self._progress = index + 1
        finally:
            self.sent.set()

    def _upload_one(self, client: AppClient, individual: int, data: bytes) -> None:
        metadata = {"observer": "whaleid-chaos", "taken_at": "2026-12-01T10:00:00Z", "latitude": 64.1,
                    "longitude": -21.9}
        for attempt in range(RETRIES):
            try:
                upload = client.upload(data, individual_id(individual), "image/jpeg", metadata)
            except GatewayError as exc:
                if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                    self.refused.append(str(exc))
                    return
                with self._lock:
                    self.retries += 1
                time.sleep(RETRY_PAUSE_S * min(4, attempt + 1))
                continue
            self.uploaded.append(Uploaded(upload.sighting_id, individual_id(individual), upload.sent_at))
            return
        self.not_accepted += 1

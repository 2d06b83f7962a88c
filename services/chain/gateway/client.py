"""The gateway's client, doing what a citizen-science app does: create a sighting, PUT the photo to the presigned
URL, poll the sighting until it is identified or failed (stdlib HTTP only). Used by `whaleid upload`, the demo,
the chaos suite and the benchmarks."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.core.errors import WhaleIdError

CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}
STATE_FILE = "up.json"  # written by `whaleid up` / `whaleid demo --keep-up` beside the stack's run dir


def up_state_path(settings) -> Path:
    """Where `whaleid up` records the running system: `up.json` beside the stack's run dir (`.whaleid/up.json`
    by default)."""
    return Path(settings.run_dir).resolve().parent / STATE_FILE


def running_gateway(settings) -> str | None:
    """The gateway URL that `whaleid up` or `whaleid demo --keep-up` recorded, while its process runs."""
    import os

    try:
        state = json.loads(up_state_path(settings).read_text())
        pid = int(state["services"]["gateway"]["pid"])
        os.kill(pid, 0)
        return str(state["gateway_url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def gateway_url(settings, url: str | None = None) -> tuple[str, str]:
    """(the gateway URL to use, where it came from): `url` if given, else the running system's (`whaleid up`),
    else the settings' gateway_host:gateway_port."""
    if url:
        return url, "--url"
    found = running_gateway(settings)
    if found:
        return found, f"`whaleid up` ({up_state_path(settings)})"
    return f"http://{settings.gateway_host}:{settings.gateway_port}", "settings gateway_host/gateway_port"


def unreachable(error: Exception, url: str, source: str) -> "GatewayError":
    """The error of a gateway that did not answer, saying which URL was tried, why that one, and what to do."""
    return GatewayError(f"no gateway answers at {url} (from {source}): {error}. Start the system with `whaleid up` "
                        f"(it prints the gateway's URL), or pass the --url of a running gateway "
                        f"(`whaleid demo --keep-up` prints it too)")


def review_url(settings, base_url: str) -> str:
    """The review page; in the local profile with the (public) local researcher token in its fragment."""
    from services.core.access.credentials import parse_pairs

    url = f"{base_url.rstrip('/')}/review"
    tokens = parse_pairs("gateway_researcher_tokens", settings.gateway_researcher_tokens or "")
    if settings.profile != "local" or not tokens:
        return url
    return f"{url}#token={next(iter(tokens.values()))}"


class GatewayError(WhaleIdError):
    """The gateway refused a request or could not be reached; `status` is the HTTP status of a refusal (None when
    there was no answer)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass
class Upload:
    sighting_id: str
    name: str  # image file name (or a label for hostile uploads)
    sent_at: float  # when the photo's PUT completed (epoch seconds)


class AppClient:
    def __init__(self, base_url: str, token: str, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def _request(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None):
        request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            raise GatewayError(f"{method} {url}: {exc}") from None

    def _api(self, method: str, path: str, payload: dict | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {self.token}"}
        body = None
        if payload is not None:
            body = json.dumps(payload).encode()
            headers["Content-Type"] = "application/json"
        status, raw = self._request(method, self.base_url + path, body, headers)
        try:
            return status, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return status, {"error": raw.decode(errors="replace")}

    def healthy(self) -> bool:
        try:
            status, _ = self._api("GET", "/healthz")
            return status == 200
        except GatewayError:
            return False

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise GatewayError(f"the gateway at {self.base_url} did not answer /healthz within {timeout:.0f} s")
            time.sleep(0.2)

    def upload(self, data: bytes, name: str, content_type: str, metadata: dict[str, Any]) -> Upload:
        """Create the sighting and PUT the bytes to its presigned URL."""
        status, created = self._api("POST", "/v1/sightings", {**metadata, "content_type": content_type,
                                                              "size": len(data)})
        if status != 201:
            raise GatewayError(f"creating a sighting for {name} failed ({status}): {created}", status)
        headers = dict(created.get("upload_headers") or {})
        headers.setdefault("Content-Type", content_type)
        put_status, answer = self._request(created.get("upload_method", "PUT"), created["upload_url"], data, headers)
        if put_status not in (200, 204):
            raise GatewayError(f"the upload of {name} was refused ({put_status}): {answer[:300]!r}", put_status)
        return Upload(created["sighting_id"], name, time.time())

    def sighting(self, sighting_id: str) -> dict[str, Any]:
        status, answer = self._api("GET", f"/v1/sightings/{sighting_id}")
        if status != 200:
            raise GatewayError(f"reading sighting {sighting_id} failed ({status}): {answer}")
        return answer

    def wait(self, uploads: list[Upload], timeout_s: float, progress=None, interval_s: float = 0.2) -> dict[str, dict]:
        """Poll GET /v1/sightings/{id} until every upload is identified or failed, or `timeout_s` passed; returns
        {sighting id: its answer (with `seen_at`)} of those that finished. `progress(text)` every 3 s."""
        answers: dict[str, dict] = {}
        deadline = time.monotonic() + timeout_s
        last_report = 0.0
        while len(answers) < len(uploads) and time.monotonic() < deadline:
            for upload in uploads:
                if upload.sighting_id in answers:
                    continue
                answer = self.sighting(upload.sighting_id)
                if answer["status"] != "pending":
                    answer["seen_at"] = time.time()
                    answers[upload.sighting_id] = answer
            if progress is not None and time.monotonic() - last_report > 3:
                progress(f"results: {len(answers)}/{len(uploads)}")
                last_report = time.monotonic()
            if len(answers) < len(uploads):
                time.sleep(interval_s)
        return answers

"""The catalogue in S3: photos stored by content, one manifest of records.

Layout, in bucket `settings.models_bucket` (the durable store next to the gallery versions):

    catalogue/photos/<individual_id>/<sha256>.<ext>   the photo's bytes as imported (ext: jpg, png, webp)
    catalogue/records.jsonl                           one JSON record per photo, sorted by individual and photo:
        {"photo_id": sha256, "key", "individual_id", "species", "encounter", "date", "latitude", "longitude",
         "boxes": {source: [x0, y0, x1, y1]}, "width", "height", "source": the file as the import named it,
         "imported_at", "viewpoint": left / right / other or null (services.core.identification.viewpoint)}

A photo is identified by its content (`photo_id` = sha256 of the bytes), so importing the same photo again
stores nothing new. The manifest is rewritten whole with one PUT after the photos of an import are stored (a
reader never sees a record whose photo is missing); one importer at a time is assumed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from services.core.errors import WhaleIdError
from services.core.settings import Settings

PREFIX = "catalogue"
RECORDS_FILE = "records.jsonl"
CONTENT_TYPES = {"jpg": "image/jpeg", "png": "image/png", "webp": "image/webp"}


class CatalogueError(WhaleIdError):
    """The catalogue store is unreachable, or its manifest is unreadable."""


@dataclass
class CatalogueStore:
    client: object
    bucket: str
    prefix: str = PREFIX

    @classmethod
    def from_settings(cls, settings: Settings) -> "CatalogueStore":
        from services.curation.operations.gallery_versions import s3_client

        return cls(s3_client(settings), settings.models_bucket)

    @property
    def records_key(self) -> str:
        return f"{self.prefix}/{RECORDS_FILE}"

    def photo_key(self, individual_id: str, photo_id: str, ext: str) -> str:
        return f"{self.prefix}/photos/{individual_id}/{photo_id}.{ext}"

    def _call(self, what: str, fn, **kwargs):
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(kwargs.get("Key", what)) from None
            raise CatalogueError(f"catalogue s3://{self.bucket}: {what} failed: {exc}") from None
        except BotoCoreError as exc:
            raise CatalogueError(f"catalogue s3://{self.bucket} unreachable during {what}: {exc}") from None

    def records(self) -> dict[str, dict]:
        """photo_id -> record ({} when nothing was imported yet)."""
        try:
            body = self._call("get records", self.client.get_object, Key=self.records_key)["Body"].read()
        except FileNotFoundError:
            return {}
        records = {}
        for number, line in enumerate(body.decode().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                records[record["photo_id"]] = record
            except (ValueError, KeyError, TypeError):
                raise CatalogueError(f"s3://{self.bucket}/{self.records_key} line {number} is not a record") from None
        return records

    def write_records(self, records: dict[str, dict]) -> None:
        ordered = sorted(records.values(), key=lambda r: (r["individual_id"], r["photo_id"]))
        body = "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode()
        self._call("put records", self.client.put_object, Key=self.records_key, Body=body,
                   ContentType="application/x-ndjson")

    def has(self, key: str) -> bool:
        try:
            self._call("head " + key, self.client.head_object, Key=key)
            return True
        except FileNotFoundError:
            return False

    def put_photo(self, key: str, data: bytes, ext: str) -> bool:
        """Store the photo unless an object is already at `key` (same key = same content); True when stored."""
        if self.has(key):
            return False
        self._call("put " + key, self.client.put_object, Key=key, Body=data,
                   ContentType=CONTENT_TYPES.get(ext, "application/octet-stream"))
        return True

    def get_bytes(self, key: str) -> bytes:
        return self._call("get " + key, self.client.get_object, Key=key)["Body"].read()

    def download(self, record: dict, dest_dir: Path) -> Path:
        """The record's photo under `dest_dir` (kept when already there: the name is its content hash)."""
        target = Path(dest_dir) / record["key"].rsplit("/", 1)[-1]
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self.get_bytes(record["key"]))
        return target


def now() -> float:
    return round(time.time(), 3)

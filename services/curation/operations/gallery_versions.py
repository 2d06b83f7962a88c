"""Gallery versions in the model store (S3) and the `current` pointer that names the served one.

Layout, in bucket `settings.models_bucket` under prefix `settings.gallery_prefix` (default `galleries`):

    <prefix>/<version>/...           the files of `Gallery.save(dir)` (manifest included) + `tuning.json`
    <prefix>/<version>/version.json  written LAST: {"version", "parent", "created_at", "size", "individuals",
                                      "added_sightings", "files": {name: sha256}}; a version without it is
                                      incomplete and is never pointed to
    <prefix>/<version>/individuals.json   sorted list of the individual ids in the version
    <prefix>/current                 the pointer: {"version", "history": [older versions, newest first],
                                      "updated_at", "reindexed_at", "reason"}

Writers upload every file of a version first and move the pointer after (one PUT of a small object, atomic in
S3), so a reader that follows the pointer never sees a half-written version. Rollback moves the pointer to the
first entry of `history`. Readers (matcher, gateway) poll the pointer and compare `version`.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from services.core.checksums import sha256_file
from services.core.errors import ConfigError, WhaleIdError
from services.core.identification.gallery import ENTRIES_FILE, MANIFEST_FILE
from services.core.settings import Settings

log = logging.getLogger(__name__)

POINTER_NAME = "current"
VERSION_FILE = "version.json"
INDIVIDUALS_FILE = "individuals.json"
TUNING_FILE = "tuning.json"
HISTORY_LIMIT = 20


class ModelStoreError(WhaleIdError):
    """The model store is unreachable, or a version or the pointer is missing or incomplete."""


class UnsafePath(ModelStoreError):
    """A manifest or listing names a path that would land outside the download folder."""


def contained_path(root: Path, relative: str) -> Path:
    """`root / relative`, refused (UnsafePath) when `relative` is empty, absolute, has a `..` or backslash, or
    resolves outside `root` (through a symlink already there). Downloads from a manifest go through this."""
    text = str(relative)
    parts = text.split("/")
    if not text or "\0" in text or "\\" in text or text.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"refusing the path {text!r}: manifest paths must be relative, '/'-separated, without "
                         "'.', '..' or empty parts")
    root = Path(root)
    target = root / text
    resolved_root = root.resolve()
    if not target.resolve().is_relative_to(resolved_root):
        raise UnsafePath(f"refusing the path {text!r}: it resolves outside {root} (symlink)")
    return target


def s3_client(settings: Settings, config: Config | None = None):
    """A boto3 S3 client for the configured endpoint (empty endpoint: AWS); `config` replaces the default retries."""
    kwargs: dict[str, Any] = {"region_name": settings.s3_region,
                              "config": config or Config(retries={"max_attempts": 3, "mode": "standard"})}
    if settings.s3_endpoint:
        kwargs["endpoint_url"] = settings.s3_endpoint
    if settings.aws_access_key_id:
        kwargs["aws_access_key_id"] = settings.aws_access_key_id
        kwargs["aws_secret_access_key"] = settings.aws_secret_access_key
    return boto3.client("s3", **kwargs)


def new_version_name(now: float | None = None) -> str:
    """Sortable, unique: `v20261127T032400Z-1a2b3c`."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"v{stamp}-{uuid.uuid4().hex[:6]}"


@dataclass
class Pointer:
    version: str
    history: list[str] = field(default_factory=list)
    updated_at: float = 0.0
    reindexed_at: float = 0.0  # end of the last successful re-index (kept across rollbacks)
    reason: str = ""

    def to_json(self) -> bytes:
        return json.dumps(self.__dict__, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Pointer":
        text = data.decode(errors="replace").strip()
        if text and not text.startswith("{"):  # a plain-text pointer (the version name only) is accepted too
            return cls(version=text)
        try:
            raw = json.loads(text)
            return cls(version=str(raw["version"]), history=list(raw.get("history", [])),
                       updated_at=float(raw.get("updated_at", 0.0)),
                       reindexed_at=float(raw.get("reindexed_at", 0.0)), reason=str(raw.get("reason", "")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelStoreError(f"the gallery pointer is not valid JSON with a 'version': {exc}") from None


class GalleryStore:
    """Versioned galleries in S3 plus the `current` pointer."""

    def __init__(self, client, bucket: str, prefix: str):
        if not bucket:
            raise ConfigError("models_bucket is empty")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")

    @classmethod
    def from_settings(cls, settings: Settings) -> "GalleryStore":
        return cls(s3_client(settings), settings.models_bucket, settings.gallery_prefix)

    # --- keys
    def _key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts]) if self.prefix else "/".join(parts)

    def _call(self, what: str, fn, **kwargs):
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise FileNotFoundError(kwargs.get("Key", what)) from None
            raise ModelStoreError(f"model store s3://{self.bucket}: {what} failed: {exc}") from None
        except BotoCoreError as exc:
            raise ModelStoreError(f"model store s3://{self.bucket} unreachable during {what}: {exc}") from None

    def _get_bytes(self, key: str) -> bytes:
        return self._call("get " + key, self.client.get_object, Key=key)["Body"].read()

    # --- pointer
    def pointer(self) -> Pointer | None:
        """The current pointer, or None when no version was ever published."""
        try:
            return Pointer.from_json(self._get_bytes(self._key(POINTER_NAME)))
        except FileNotFoundError:
            return None

    def current_version(self) -> str | None:
        pointer = self.pointer()
        return pointer.version if pointer else None

    def _write_pointer(self, pointer: Pointer) -> None:
        pointer.updated_at = time.time()
        self._call("put pointer", self.client.put_object, Key=self._key(POINTER_NAME), Body=pointer.to_json(),
                   ContentType="application/json")

    def set_current(self, version: str, reason: str, reindexed: bool = False) -> Pointer:
        """Point readers at `version` (which must be complete); the old one goes to the history."""
        self.version_info(version)  # refuses incomplete or missing versions
        old = self.pointer()
        history = ([old.version] + old.history) if old and old.version != version else (old.history if old else [])
        pointer = Pointer(version=version, history=[v for v in history if v != version][:HISTORY_LIMIT],
                          reindexed_at=time.time() if reindexed else (old.reindexed_at if old else 0.0),
                          reason=reason)
        self._write_pointer(pointer)
        log.info("gallery pointer -> %s (%s)", version, reason)
        return pointer

    def rollback(self, by: str = "") -> Pointer:
        """Move the pointer back to the version it named before (one step); `by` is recorded in the reason."""
        old = self.pointer()
        if old is None:
            raise ModelStoreError(f"no gallery published under s3://{self.bucket}/{self._key('')}")
        if not old.history:
            raise ModelStoreError(f"gallery {old.version} has no previous version to roll back to")
        target, rest = old.history[0], old.history[1:]
        self.version_info(target)
        pointer = Pointer(version=target, history=rest, reindexed_at=old.reindexed_at,
                          reason=f"rollback from {old.version}" + (f" by {by}" if by else ""))
        self._write_pointer(pointer)
        log.info("gallery pointer rolled back %s -> %s", old.version, target)
        return pointer

    # --- versions
    def version_info(self, version: str) -> dict[str, Any]:
        """version.json of a complete version. A version uploaded by another writer without version.json
        counts as complete when its gallery manifest and tuning.json are there (`files` is then None)."""
        try:
            return json.loads(self._get_bytes(self._key(version, VERSION_FILE)))
        except FileNotFoundError:
            pass
        try:
            manifest = json.loads(self._get_bytes(self._key(version, MANIFEST_FILE)))
            head = self._call("head tuning", self.client.head_object, Key=self._key(version, TUNING_FILE))
        except FileNotFoundError:
            raise ModelStoreError(f"gallery version {version!r} does not exist or is incomplete (no {VERSION_FILE},"
                                  f" or no {MANIFEST_FILE} + {TUNING_FILE})") from None
        return {"version": version, "parent": None, "created_at": head["LastModified"].timestamp(),
                "size": manifest.get("count"), "individuals": manifest.get("individuals"), "added_sightings": [],
                "files": None}

    def list_versions(self) -> list[dict[str, Any]]:
        """Complete versions, oldest first, each with its version.json content."""
        versions = []
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(""), Delimiter="/"):
                for common in page.get("CommonPrefixes", []):
                    name = common["Prefix"].rstrip("/").rsplit("/", 1)[-1]
                    try:
                        versions.append(self.version_info(name))
                    except ModelStoreError:
                        log.warning("skipping incomplete gallery version %s", name)
        except (ClientError, BotoCoreError) as exc:
            raise ModelStoreError(f"cannot list gallery versions in s3://{self.bucket}: {exc}") from None
        return sorted(versions, key=lambda v: (v.get("created_at", 0.0), v["version"]))

    def publish(self, local_dir: Path, *, parent: str | None, added_sightings: list[str],
                individuals: list[str], size: int, version: str | None = None) -> str:
        """Upload a saved gallery directory (Gallery.save + tuning.json) as a new version; does NOT move the
        pointer. version.json goes last, so the version is complete only when everything else is there."""
        local_dir = Path(local_dir)
        version = version or new_version_name()
        files = sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name not in (VERSION_FILE,))
        if not files:
            raise ModelStoreError(f"nothing to publish in {local_dir}")
        checksums = {}
        for path in files:
            rel = path.relative_to(local_dir).as_posix()
            checksums[rel] = sha256_file(path)
            self._call("upload " + rel, self.client.put_object, Key=self._key(version, rel), Body=path.read_bytes())
        self._call("upload individuals", self.client.put_object, Key=self._key(version, INDIVIDUALS_FILE),
                   Body=json.dumps(sorted(set(individuals))).encode())
        info = {"version": version, "parent": parent, "created_at": time.time(), "size": size,
                "individuals": len(set(individuals)), "added_sightings": added_sightings, "files": checksums}
        self._call("upload version.json", self.client.put_object, Key=self._key(version, VERSION_FILE),
                   Body=json.dumps(info, indent=1).encode())
        log.info("published gallery version %s (%d embeddings, %d files)", version, size, len(files))
        return version

    def download(self, version: str, dest: Path) -> Path:
        """Download a complete version into `dest` (checksums verified); returns `dest`."""
        info = self.version_info(version)
        dest = Path(dest)
        files = info.get("files")
        if files is None:  # no version.json: take every object of the version (Gallery.load checks its manifest)
            files = {key[len(self._key(version, "")):]: None for key in self._keys(self._key(version, ""))}
        for rel in files:  # every path is checked before anything is written
            contained_path(dest, rel)
        for rel, sha in files.items():
            target = contained_path(dest, rel)  # and again right before its write (symlinks made meanwhile)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(self._get_bytes(self._key(version, rel)))
            if sha is not None and sha256_file(target) != sha:
                raise ModelStoreError(f"gallery version {version}: {rel} does not match its checksum")
        return dest

    def individuals(self, version: str) -> set[str]:
        """The individual ids of a version (individuals.json, else the gallery's entries.jsonl)."""
        try:
            return set(json.loads(self._get_bytes(self._key(version, INDIVIDUALS_FILE))))
        except FileNotFoundError:
            pass
        try:
            lines = self._get_bytes(self._key(version, ENTRIES_FILE)).decode().splitlines()
        except FileNotFoundError:
            raise ModelStoreError(f"gallery version {version!r} has neither {INDIVIDUALS_FILE} nor "
                                  f"{ENTRIES_FILE}") from None
        return {json.loads(line)["individual_id"] for line in lines if line.strip()}

    def _keys(self, prefix: str) -> list[str]:
        keys = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise ModelStoreError(f"cannot list s3://{self.bucket}/{prefix}: {exc}") from None
        return keys


"""Builds of the Triton repository in the model store (S3, bucket `settings.models_bucket`), `whaleid model-repo
push|pull`:

    <prefix>/<build_id>/...              every file of the repository; repository.json uploaded LAST
    <prefix>/current                     {"build_id": ...}: the build `pull` fetches

`pull` downloads into a staging folder, validates it (checksums, shapes) and only then replaces the local
repository, so Triton never starts on a half-downloaded one. Every object's path below the build prefix must stay
inside the staging folder (no absolute paths, `..` or symlink escapes): a hostile listing is refused before any
download.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from services.core.errors import RepositoryError
from services.serving.model_repo.validation import RECORD, validate_repository

log = logging.getLogger(__name__)
POINTER = "current"


def _client_and_bucket(bucket: str | None, settings=None):
    from services.core.settings import load_settings
    from services.curation.operations.gallery_versions import s3_client

    settings = settings or load_settings()
    return s3_client(settings), bucket or settings.models_bucket


def push(repository: Path, bucket: str | None = None, prefix: str = "model_repository", settings=None) -> str:
    """Upload a validated repository; returns its s3:// address."""
    record = validate_repository(repository)
    client, bucket = _client_and_bucket(bucket, settings)
    base = f"{prefix.strip('/')}/{record['build_id']}"
    files = sorted(p for p in Path(repository).rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    files.sort(key=lambda p: p.name == RECORD)  # the record last: a build without it is incomplete
    try:
        for index, path in enumerate(files, 1):
            key = f"{base}/{path.relative_to(repository).as_posix()}"
            log.info("[%d/%d] upload s3://%s/%s", index, len(files), bucket, key)
            client.upload_file(str(path), bucket, key)
        client.put_object(Bucket=bucket, Key=f"{prefix.strip('/')}/{POINTER}",
                          Body=json.dumps({"build_id": record["build_id"]}).encode())
    except (BotoCoreError, ClientError) as exc:
        raise RepositoryError(f"cannot push {repository} to s3://{bucket}/{base}: {exc}") from None
    return f"s3://{bucket}/{base}"


def pull(repository: Path, bucket: str | None = None, prefix: str = "model_repository",
         build_id: str | None = None, settings=None) -> dict[str, Any]:
    """Download a build (default: the one `current` names), validate it, then replace `repository`."""
    from services.curation.operations.gallery_versions import UnsafePath, contained_path

    client, bucket = _client_and_bucket(bucket, settings)
    prefix = prefix.strip("/")
    repository = Path(repository)
    staging = repository.parent / f".{repository.name}.pull"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        if build_id is None:
            pointer = client.get_object(Bucket=bucket, Key=f"{prefix}/{POINTER}")["Body"].read()
            build_id = json.loads(pointer)["build_id"]
        base = f"{prefix}/{build_id}/"
        keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=base)
                for o in page.get("Contents", [])]
        if not keys:
            raise RepositoryError(f"no repository build {build_id} in s3://{bucket}/{base}")
        for key in keys:  # every path is checked before anything is downloaded
            contained_path(staging, key[len(base):])
        for index, key in enumerate(keys, 1):
            target = contained_path(staging, key[len(base):])
            target.parent.mkdir(parents=True, exist_ok=True)
            log.info("[%d/%d] download s3://%s/%s", index, len(keys), bucket, key)
            client.download_file(bucket, key, str(target))
        record = validate_repository(staging)
        if repository.exists():
            shutil.rmtree(repository)
        staging.rename(repository)
        return record
    except UnsafePath as exc:
        raise RepositoryError(f"refusing to pull s3://{bucket}/{prefix}/{build_id}: {exc}") from None
    except (BotoCoreError, ClientError, ValueError, KeyError) as exc:
        raise RepositoryError(f"cannot pull the model repository from s3://{bucket}/{prefix}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)

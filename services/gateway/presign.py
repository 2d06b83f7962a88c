"""Presigned S3 PUT URLs scoped to one key, one content type and (when declared) one exact length."""

from __future__ import annotations

import boto3
from botocore.config import Config

from services.settings import Settings


class UploadSigner:
    """Signs uploads with SigV4 locally (no request to S3): key, Content-Type and Content-Length are signed."""

    def __init__(self, settings: Settings):
        self.bucket = settings.sightings_bucket
        self.expires_s = settings.upload_url_expires_s
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint or None,
            region_name=settings.s3_region,
            aws_access_key_id=settings.aws_access_key_id or None,
            aws_secret_access_key=settings.aws_secret_access_key or None,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def put_url(self, key: str, content_type: str, size: int | None) -> tuple[str, dict[str, str]]:
        """(url, the headers the uploader must send with its PUT)."""
        params = {"Bucket": self.bucket, "Key": key, "ContentType": content_type}
        headers = {"Content-Type": content_type}
        if size is not None:
            params["ContentLength"] = size
            headers["Content-Length"] = str(size)
        url = self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=self.expires_s)
        return url, headers

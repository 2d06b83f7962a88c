"""Presigned S3 uploads scoped to one key and one content type, always bounded in size.

- Declared size: a PUT URL whose SigV4 signature covers the key, Content-Type, Content-Length (exactly the
  declared size) and `If-None-Match: *`, so S3 refuses a second write of the key (412): the photo of a
  sighting cannot be replaced once uploaded. moto enforces `If-None-Match`, not the signature.
- No declared size (only when `upload_size_required` is off): a POST form whose policy pins the key and
  Content-Type and bounds the body with `content-length-range` [1, max_upload_bytes]. S3 has no conditional
  write for POST, so such a form can be replayed (replacing the photo) until it expires; moto 5.2 enforces
  neither the policy nor the range: the bridge (event size) and the worker (object size) still check the limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import boto3
from botocore.config import Config

from services.core.settings import Settings

POST_SUCCESS_STATUS = "200"


@dataclass(frozen=True)
class UploadOffer:
    """What the app needs to send the photo: method, URL, headers (PUT) or form fields (POST)."""

    method: str  # PUT | POST
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)
    max_bytes: int = 0

    def asdict(self) -> dict:
        answer = {"upload_method": self.method, "upload_url": self.url, "upload_headers": self.headers,
                  "upload_max_bytes": self.max_bytes}
        if self.method == "POST":
            answer["upload_fields"] = self.fields
        return answer


class UploadSigner:
    """Signs uploads locally (no request to S3)."""

    def __init__(self, settings: Settings):
        self.bucket = settings.sightings_bucket
        self.expires_s = settings.upload_url_expires_s
        self.max_bytes = settings.max_upload_bytes
        self.client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint or None,
            region_name=settings.s3_region,
            aws_access_key_id=settings.aws_access_key_id or None,
            aws_secret_access_key=settings.aws_secret_access_key or None,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def offer(self, key: str, content_type: str, size: int | None) -> UploadOffer:
        return self.put_offer(key, content_type, size) if size is not None else self.post_offer(key, content_type)

    def put_offer(self, key: str, content_type: str, size: int) -> UploadOffer:
        """A single-use PUT of exactly `size` bytes."""
        params = {"Bucket": self.bucket, "Key": key, "ContentType": content_type, "ContentLength": size,
                  "IfNoneMatch": "*"}
        headers = {"Content-Type": content_type, "Content-Length": str(size), "If-None-Match": "*"}
        url = self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=self.expires_s)
        return UploadOffer("PUT", url, headers=headers, max_bytes=size)

    def post_offer(self, key: str, content_type: str) -> UploadOffer:
        """A POST form of at most max_upload_bytes (send the fields, then the photo as the `file` part)."""
        fixed = {"Content-Type": content_type, "success_action_status": POST_SUCCESS_STATUS}
        conditions = [{"Content-Type": content_type}, {"success_action_status": POST_SUCCESS_STATUS},
                      ["content-length-range", 1, self.max_bytes]]
        form = self.client.generate_presigned_post(self.bucket, key, Fields=fixed, Conditions=conditions,
                                                   ExpiresIn=self.expires_s)
        return UploadOffer("POST", form["url"], fields=dict(form["fields"]), max_bytes=self.max_bytes)

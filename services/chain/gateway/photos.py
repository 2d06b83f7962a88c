"""Short-lived presigned GETs of sighting photos (signed locally, no request to S3; never proxied)."""

from __future__ import annotations


def photo_url(ctx, key: str, bucket: str = "") -> str:
    """A GET URL of `key` in the sightings bucket (or `bucket`), valid gateway_photo_url_expires_s seconds."""
    return ctx.signer.client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket or ctx.settings.sightings_bucket, "Key": key},
        ExpiresIn=int(ctx.settings.gateway_photo_url_expires_s))

"""S3 + SQS endpoint: moto_server, with the sightings and models buckets, the upload-events queue and the
bucket notification `s3:ObjectCreated:*` -> that queue (moto delivers S3 event JSON to SQS synchronously)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from services.core.settings import Settings
from services.devtools.stack.binaries import venv_bin
from services.devtools.stack.health import check_s3, s3_client
from services.devtools.stack.ports import LOOPBACK
from services.devtools.stack.server import ManagedServer

log = logging.getLogger(__name__)


class S3Server(ManagedServer):
    name = "s3"

    def __init__(self, log_dir: Path, owner: str, port: int, settings: Settings) -> None:
        super().__init__(log_dir, owner)
        self.port = port
        self.endpoint = f"http://{LOOPBACK}:{port}"
        self.settings = settings
        self.queue_url = ""

    def argv(self) -> list[str]:
        return [str(venv_bin("moto_server")), "-H", LOOPBACK, "-p", str(self.port)]

    def _credentials(self) -> dict[str, str]:
        s = self.settings
        return {
            "region": s.s3_region,
            "key": s.aws_access_key_id or "testing",
            "secret": s.aws_secret_access_key or "testing",
        }

    def check(self) -> None:
        check_s3(self.endpoint, **self._credentials())

    def provision(self) -> None:
        import boto3

        creds = self._credentials()
        s3 = s3_client(self.endpoint, **creds)
        sqs = boto3.client(
            "sqs", endpoint_url=self.endpoint, region_name=creds["region"],
            aws_access_key_id=creds["key"], aws_secret_access_key=creds["secret"],
        )  # fmt: skip
        for bucket in (self.settings.sightings_bucket, self.settings.models_bucket):
            if creds["region"] == "us-east-1":
                s3.create_bucket(Bucket=bucket)
            else:
                s3.create_bucket(
                    Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": creds["region"]}
                )
        from services.core.access.cors import bucket_cors_rules

        rules = bucket_cors_rules(self.settings)  # browser apps' presigned uploads (setting gateway_cors_origins)
        if rules:
            s3.put_bucket_cors(Bucket=self.settings.sightings_bucket, CORSConfiguration={"CORSRules": rules})
        self.queue_url = sqs.create_queue(QueueName=self.settings.upload_events_queue)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        s3.put_bucket_notification_configuration(
            Bucket=self.settings.sightings_bucket,
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )
        log.info(
            "s3: buckets %s, %s; uploads to %s notify %s",
            self.settings.sightings_bucket, self.settings.models_bucket, self.settings.sightings_bucket, self.queue_url,
        )  # fmt: skip

    def entry(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "kind": "moto", "bridge_source": "sqs",
                "upload_events_queue_url": self.queue_url}

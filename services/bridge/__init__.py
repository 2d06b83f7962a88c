"""The S3 upload-events -> Kafka bridge (`whaleid serve bridge`, `python -m services.bridge`)."""


def run_bridge(settings, **kwargs) -> int:
    from services.bridge.service import run_bridge as _run

    return _run(settings, **kwargs)

"""The S3 upload-events -> Kafka bridge (`whaleid serve bridge`, `python -m services.chain.bridge`)."""


def run_bridge(settings, **kwargs) -> int:
    from services.chain.bridge.service import run_bridge as _run

    return _run(settings, **kwargs)

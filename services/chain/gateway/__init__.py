"""The upload gateway for apps (`whaleid serve gateway`, `python -m services.chain.gateway`)."""


def run_gateway(settings) -> int:
    from services.chain.gateway.service import run_gateway as _run

    return _run(settings)

"""Loading a rebuilt repository into a Triton that is already running (model control mode `explicit`, as the
embedded stack runs it): members first, the ensemble last, so requests never see a half-loaded ensemble."""

from __future__ import annotations

import logging
from pathlib import Path

from services.core.errors import RepositoryError
from services.serving.model_repo.validation import validate_repository

log = logging.getLogger(__name__)


def load_order(record: dict) -> list[str]:
    return sorted(name for name in record["models"] if name != "ensemble") + ["ensemble"]


def reload_models(repository: Path, grpc_url: str, timeout_s: float = 120.0) -> list[str]:
    """Validate `repository` (the one the server was started with) and (re)load every model of it."""
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    record = validate_repository(repository)
    names = load_order(record)
    with grpcclient.InferenceServerClient(grpc_url) as client:
        for index, name in enumerate(names, 1):
            log.info("[%d/%d] loading %s", index, len(names), name)
            try:
                client.load_model(name, client_timeout=timeout_s)
            except InferenceServerException as exc:
                raise RepositoryError(f"Triton at {grpc_url} could not load model {name}: {exc.message()} "
                                      "(is it serving this repository, in explicit model-control mode?)") from None
    return names

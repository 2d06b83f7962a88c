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


def admin_token(settings) -> str:
    """The first admin token of the settings (`gateway_admin_tokens`): what the workers' reload page asks for."""
    from services.core.access.credentials import ADMIN, configured_tokens

    return next((entry.token for entry in configured_tokens(settings) if entry.credential.role == ADMIN), "")


def tell_worker(worker_url: str, token: str, timeout_s: float = 30.0) -> str:
    """POST `<worker_url>/model/reload/` (a running worker's Faust web address): the worker reads the served
    ensemble now instead of at its next timer (every 5 s), so the next batch is tagged with the new version. The
    version it now tags with; RepositoryError when it refuses or cannot be reached."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{worker_url.rstrip('/')}/model/reload/", method="POST", data=b"",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return str(json.loads(response.read())["model_version"])
    except urllib.error.HTTPError as exc:
        raise RepositoryError(f"worker {worker_url} refused the reload: HTTP {exc.code} "
                              f"{exc.read().decode(errors='replace')[:200]}") from None
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise RepositoryError(f"worker {worker_url} did not answer the reload: {exc}") from None

"""Triton Inference Server: the tritonserver binary bundled in nvidia-pytriton, python backend only.

Set-up (ENVIRONMENT.md): a backend directory with the python backend and the stub built for the running
interpreter's Python version; the venv's bin first on PATH (so the stub finds numpy); LD_LIBRARY_PATH with the
bundled libs and the directory of this interpreter's libpython.
"""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
from pathlib import Path
from typing import Any

from services.core.errors import ServerStartError, StackError
from services.devtools.stack.binaries import package_dir, package_file
from services.devtools.stack.health import check_triton
from services.devtools.stack.ports import LOOPBACK, free_ports
from services.devtools.stack.server import ManagedServer

MODEL_CONTROL_FLAGS = {
    # every model present at start is loaded; tests and tools load more with tritonclient load_model
    "explicit": ["--model-control-mode=explicit", "--load-model=*"],
    "poll": ["--model-control-mode=poll", "--repository-poll-secs=1"],
    "none": ["--model-control-mode=none"],
}
EXIT_TIMEOUT_S = 5


def python_backend_dir(root: Path) -> Path:
    """Build `<root>/python/` (the bundled python backend + the stub for this Python); returns `root`."""
    bundle = package_dir("pytriton") / "tritonserver"
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = bundle / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise StackError(f"nvidia-pytriton has no python backend stub for Python {version} ({stub})")
    target = root / "python"
    target.mkdir(parents=True, exist_ok=True)
    for item in (bundle / "backends" / "python").iterdir():
        if item.is_file():
            shutil.copy2(item, target / item.name)
    shutil.copy2(stub, target / "triton_python_backend_stub")
    return root


def triton_env() -> dict[str, str]:
    libs = _libs_dir()
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    ld_path = [str(libs), libdir, os.environ.get("LD_LIBRARY_PATH", "")]
    path = [str(Path(sys.executable).parent), os.environ.get("PATH", "")]
    return {"LD_LIBRARY_PATH": ":".join(p for p in ld_path if p), "PATH": ":".join(p for p in path if p)}


def _libs_dir() -> Path:
    """`<site-packages>/nvidia_pytriton.libs`: a plain directory next to the pytriton package."""
    libs = package_dir("pytriton").parent / "nvidia_pytriton.libs"
    if not libs.is_dir():
        raise StackError(f"the libraries bundled with nvidia-pytriton are missing ({libs})")
    return libs


class TritonServer(ManagedServer):
    """Also the handle `launch_triton` returns: `.grpc`, `.http`, `.metrics` ("127.0.0.1:PORT"), `.pid`,
    `.log_path`, `.wait_healthy(timeout)`, `.stop()`; usable as a context manager."""

    name = "triton"

    def __init__(
        self,
        log_dir: Path,
        owner: str,
        model_repository: Path,
        ports: tuple[int, int, int] | None = None,
        model_control: str = "explicit",
    ) -> None:
        super().__init__(log_dir, owner)
        if model_control not in MODEL_CONTROL_FLAGS:
            raise StackError(
                f"unknown Triton model control {model_control!r}; use one of {', '.join(MODEL_CONTROL_FLAGS)}"
            )
        self.model_repository = Path(model_repository).resolve()
        self.model_control = model_control
        self.http_port, self.grpc_port, self.metrics_port = ports or free_ports(3)
        self.http = f"{LOOPBACK}:{self.http_port}"
        self.grpc = f"{LOOPBACK}:{self.grpc_port}"
        self.metrics = f"{LOOPBACK}:{self.metrics_port}"
        self.backend_dir = self.log_dir / "triton-backends"

    def argv(self) -> list[str]:
        self.model_repository.mkdir(parents=True, exist_ok=True)
        self._validate_repository()
        python_backend_dir(self.backend_dir)
        return [
            str(package_file("pytriton", "tritonserver/bin/tritonserver")),
            f"--model-repository={self.model_repository}",
            f"--backend-directory={self.backend_dir}",
            *MODEL_CONTROL_FLAGS[self.model_control],
            f"--http-address={LOOPBACK}", f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}", f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true", "--allow-gpu-metrics=false",
            f"--metrics-address={LOOPBACK}", f"--metrics-port={self.metrics_port}",
            "--strict-readiness=true", "--exit-on-error=true", f"--exit-timeout-secs={EXIT_TIMEOUT_S}",
        ]  # fmt: skip

    def _validate_repository(self) -> None:
        """A repository written by `whaleid model-repo build` is checked (files, checksums, shapes) before Triton
        starts on it, so a broken one is refused with the model's name instead of a half-loaded server."""
        from services.core.errors import RepositoryError
        from services.serving.model_repo.validation import validate_if_built

        try:
            validate_if_built(self.model_repository)
        except RepositoryError as exc:
            raise ServerStartError("triton", f"model repository {self.model_repository} refused: {exc}") from None

    def env(self) -> dict[str, str]:
        return triton_env()

    def check(self) -> None:
        check_triton(self.http)

    def entry(self) -> dict[str, Any]:
        return {
            "grpc": self.grpc,
            "http": self.http,
            "metrics": self.metrics,
            "model_repository": str(self.model_repository),
        }


def launch_triton(model_repository: Path, log_dir: Path, *, model_control: str = "explicit") -> TritonServer:
    """Start a standalone Triton serving `model_repository` (logs and backend dir under `log_dir`).
    Returns at once: call `.wait_healthy(timeout)` before using it and `.stop()` (or use `with`) after."""
    log_dir = Path(log_dir).resolve()
    server = TritonServer(
        log_dir, owner=f"{log_dir}#triton", model_repository=model_repository, model_control=model_control
    )
    return server.start()

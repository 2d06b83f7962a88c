"""Where the server binaries shipped inside Python packages (and on PATH) are."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

from services.core.errors import StackError


def package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise StackError(f"the Python package {package!r} is not installed (run `make install`)")
    return Path(next(iter(spec.submodule_search_locations)))


def package_file(package: str, relative: str) -> Path:
    path = package_dir(package) / relative
    if not path.exists():
        raise StackError(f"{relative} is missing from the installed package {package!r} ({path})")
    return path


def venv_bin(name: str) -> Path:
    """A console script installed next to the running interpreter (the virtualenv's bin)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return path
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name} not found next to {sys.executable} nor on PATH (run `make install`)")
    return Path(found)


def on_path(name: str) -> Path | None:
    found = shutil.which(name)
    return Path(found) if found else None

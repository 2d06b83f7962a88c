"""What makes a built repository self-contained: its python-backend models import only the standard library,
numpy, Pillow, onnxruntime, Triton's `triton_python_backend_utils` and modules vendored next to their model.py.

Vendoring generates a standalone module from the project's own source at build time, so the served code and
the project's code cannot drift: `services.core.imaging` becomes `<model>/1/whaleid_imaging.py` (decode, EXIF
orientation, crop, resize: the eval path) and `services.core.identification.vectors` becomes `whaleid_vectors.py`
(combine_flip, blend, blend_probabilities). The source is copied verbatim except its `services` imports, each of
which must have a stand-in here (`from services.core.errors import DataError` becomes a local `DataError`); any other
`services` import, or an import of a package outside the allowed set, makes the build fail, naming the module
and the import, instead of a repository that Triton in NGC's image cannot load. Triton's python backend puts the
model's version folder on `sys.path`, so `import whaleid_imaging` there finds the vendored file.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

from services.core.errors import RepositoryError

# third-party top-level modules a python-backend model may import (NGC's image has numpy; Pillow and
# onnxruntime must be installed next to it, see model_repo/README.md)
ALLOWED_PACKAGES = frozenset({"numpy", "PIL", "onnxruntime"})
TRITON_UTILS = "triton_python_backend_utils"  # provided by Triton's python backend itself

# `services` imports that a vendored module may use, and the standalone code that replaces them
STAND_INS = {
    ("services.core.errors", "DataError"): (
        "\nclass DataError(Exception):\n"
        '    """Input data is invalid (services.core.errors.DataError outside the project)."""\n\n'
    ),
}


@dataclass(frozen=True)
class Vendored:
    module: str  # the project module whose source is vendored
    file: str  # its file name in the model's version folder

    @property
    def name(self) -> str:
        return self.file.removesuffix(".py")


IMAGING = Vendored("services.core.imaging", "whaleid_imaging.py")
VECTORS = Vendored("services.core.identification.vectors", "whaleid_vectors.py")
LOCALISATION = Vendored("services.core.localisation", "whaleid_localisation.py")  # the CAM box (detector)


def module_source(module: str) -> tuple[str, Path]:
    """The source text of an importable project module (the installed package's .py file) and its path."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        raise RepositoryError(f"cannot vendor {module}: no Python source found (origin {getattr(spec, 'origin', None)})")
    path = Path(spec.origin)
    return path.read_text(encoding="utf-8"), path


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, str, list[str]]]:
    """Every import statement (at any depth): (node, module, names); `import a.b` gives ("a.b", [])."""
    found: list[tuple[ast.stmt, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            found.append((node, module, [alias.name for alias in node.names]))
    return found


def vendored_source(vendored: Vendored) -> str:
    """The standalone text of `vendored.module`: its source with each `services` import replaced by its stand-in."""
    source, path = module_source(vendored.module)
    tree = ast.parse(source, filename=str(path))
    lines = source.splitlines(keepends=True)
    replacements: list[tuple[int, int, str]] = []
    for node, module, names in _imports(tree):
        if module.split(".")[0] != "services" and not module.startswith("."):
            continue
        missing = [n for n in names if (module, n) not in STAND_INS] if names else [module]
        if missing or node not in tree.body or len(node.names) != len(names) or any(a.asname for a in node.names):
            raise RepositoryError(
                f"cannot vendor {vendored.module} ({path}) into the model repository: line {node.lineno} imports "
                f"{module} ({', '.join(missing or names)}), which Triton's python backend cannot import. Keep "
                f"{vendored.module} free of project imports (numpy, Pillow and the standard library only), or add "
                "a stand-in to services.serving.model_repo.vendor.STAND_INS")
        stand_in = "".join(STAND_INS[(module, name)] for name in names)
        replacements.append((node.lineno - 1, node.end_lineno or node.lineno, stand_in))
    for start, end, text in sorted(replacements, reverse=True):
        lines[start:end] = [text]
    digest = hashlib.sha256(source.encode()).hexdigest()[:12]
    header = (f"# Generated by `whaleid model-repo build` from {vendored.module} (source sha256 {digest}): the\n"
              "# project's own code with its `services` imports replaced by stand-ins. Do not edit; rebuild.\n")
    text = header + "".join(lines)
    problems = import_problems(text, f"{vendored.file} (vendored {vendored.module})")
    if problems:
        raise RepositoryError("; ".join(problems))
    return text


def import_problems(source: str, what: str, siblings: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Imports of a python-backend source that Triton outside the project cannot satisfy: anything but the
    standard library, ALLOWED_PACKAGES, triton_python_backend_utils and `siblings` (modules next to it)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        return [f"{what}: does not parse: {exc}"]
    allowed = set(ALLOWED_PACKAGES) | {TRITON_UTILS} | set(siblings)
    problems = []
    for node, module, _ in _imports(tree):
        top = module.split(".")[0]
        if module.startswith(".") or not (top in allowed or top in sys.stdlib_module_names or top == "__future__"):
            problems.append(f"{what}: line {node.lineno} imports {module}, which Triton's python backend cannot "
                            f"import (allowed: the standard library, {', '.join(sorted(allowed))})")
    return problems

"""The Triton models' sources, read from the top-level `model_repo/` folder, laid out as Triton lays out a model:

    model_repo/<model>/config.pbtxt   the model's config, a template: the build fills each ${name}
    model_repo/<model>/1/model.py     the python-backend source (python models only; ONNX models get the export's
                                      model.onnx instead)

`model_repo` is package data (pyproject.toml ships it as the package `model_repo`, data and an `__init__.py`),
read with importlib.resources, so an installed wheel builds repositories as a checkout does.

Template syntax: `${name}` (letters, digits, `_`) is replaced by a value; lines starting with `#` are the
template's own comments and are dropped. Values are text inserted into pbtxt string literals and numbers
(escaped as JSON strings are, so quotes in a model id or a species name stay inside their literal); blocks are
pbtxt fragments inserted as they are (input lists, ensemble steps). Every placeholder must be filled and every
value used: a template and its caller that disagree fail the build, naming the template and the names.
"""

from __future__ import annotations

import importlib.resources
import json
import re
from typing import Mapping

from services.core.errors import RepositoryError

PACKAGE = "model_repo"  # the data package of the repository's model sources
CONFIG, SOURCE = "config.pbtxt", "1/model.py"
PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# every folder of model_repo/ (python models: those with a 1/model.py, builder.VENDORED)
MODELS = ("preprocess", "embedder", "embedder_gpu", "blend", "ensemble", "pipeline", "ensemble_lean", "detector")


def _read(model: str, name: str) -> str:
    try:
        return importlib.resources.files(PACKAGE).joinpath(model, *name.split("/")).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError, OSError) as exc:
        raise RepositoryError(f"{PACKAGE}/{model}/{name} is missing from the installed project ({exc}); "
                              "reinstall it (pip install -e .)") from None


def model_source(model: str) -> str:
    """The text of model_repo/<model>/1/model.py, a python-backend model."""
    return _read(model, SOURCE)


def _escaped(value: object) -> str:
    return json.dumps(str(value))[1:-1]


def render(text: str, what: str, values: Mapping[str, object], blocks: Mapping[str, str] | None = None) -> str:
    """`text` (a template) with its comment lines dropped and each ${name} replaced: from `values` (escaped for
    a pbtxt string literal) or `blocks` (inserted as is)."""
    blocks = dict(blocks or {})
    both = sorted(set(values) & set(blocks))
    if both:
        raise RepositoryError(f"template {what}: {', '.join(both)} given both as a value and as a block")
    body = "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))
    names = set(PLACEHOLDER.findall(body))
    filled = {**{k: _escaped(v) for k, v in values.items()}, **blocks}
    missing, unused = sorted(names - set(filled)), sorted(set(filled) - names)
    if missing or unused:
        raise RepositoryError(f"template {what}: " + "; ".join(
            part for part in (missing and f"placeholder(s) not filled: {', '.join(missing)}",
                              unused and f"value(s) without a placeholder: {', '.join(unused)}") if part))
    stray = PLACEHOLDER.sub("", body).find("$")
    if stray >= 0:
        line = body[:stray].count("\n") + 1
        raise RepositoryError(f"template {what}: line {line} (comments dropped) has a `$` that is not a ${{name}} "
                              "placeholder")
    return PLACEHOLDER.sub(lambda match: filled[match.group(1)], body)


def config_template(model: str) -> str:
    """The text of model_repo/<model>/config.pbtxt, unfilled."""
    return _read(model, CONFIG)


def render_config(model: str, values: Mapping[str, object], blocks: Mapping[str, str] | None = None) -> str:
    """model_repo/<model>/config.pbtxt, filled (see `render`)."""
    return render(config_template(model), f"{PACKAGE}/{model}/{CONFIG}", values, blocks)

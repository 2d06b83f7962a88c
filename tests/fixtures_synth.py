"""A small synthetic data set shared by the data tests (generated once per session and parameter set)."""

from __future__ import annotations

from training.synth import generate

_CACHE: dict[tuple, tuple] = {}

SMALL = {"individuals": 50, "seed": 5, "misspelt_share": 0.25}


def synth_dataset(tmp_path_factory, **options):
    """(data_dir, summary) of `training.synth.generate(**SMALL, **options)`, cached for the session."""
    arguments = {**SMALL, **options}
    key = tuple(sorted(arguments.items()))
    if key not in _CACHE:
        out = tmp_path_factory.mktemp("synth")
        _CACHE[key] = (out, generate(out, preview=False, **arguments))
    return _CACHE[key]


"""The Triton models' sources (see README.md): data only, a package so that `whaleid model-repo build` finds them
with importlib.resources from a checkout and from an installed wheel (services/serving/model_repo/templates.py)."""

"""Serving the embedders: the Triton model repository built from training's exports (model_repo/) and the client
the worker calls it with (triton_client/)."""

"""The Triton model repository: built from training's exports (`whaleid model-repo build`), validated before
Triton starts (`validate_repository`), benchmarked against in-process onnxruntime (`whaleid bench triton`)."""

from services.core.errors import RepositoryError
from services.serving.model_repo.builder import build_repository
from services.serving.model_repo.configs import BuildOptions
from services.serving.model_repo.validation import validate_repository

__all__ = ["BuildOptions", "RepositoryError", "build_repository", "validate_repository"]

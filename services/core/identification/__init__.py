"""Identification core (numpy + faiss only): MAP@5, the FAISS gallery, ranking with new_individual, tuning."""

from services.core.identification.gallery import Gallery, IndexConfig, build_gallery
from services.core.identification.identifier import Identifier
from services.core.identification.metrics import map_at_5, map_at_5_per_group
from services.core.identification.ranking import NEW_INDIVIDUAL, Candidates, rank_candidates
from services.core.identification.tuning import Tuning
from services.core.identification.vectors import blend, combine_flip, l2_normalise

__all__ = [
    "NEW_INDIVIDUAL", "Candidates", "Gallery", "Identifier", "IndexConfig", "Tuning", "blend", "build_gallery",
    "combine_flip", "l2_normalise", "map_at_5", "map_at_5_per_group", "rank_candidates",
]

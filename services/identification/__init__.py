"""Identification core (numpy + faiss only): MAP@5, the FAISS gallery, ranking with new_individual, tuning."""

from services.identification.gallery import Gallery, IndexConfig, build_gallery
from services.identification.identifier import Identifier
from services.identification.metrics import map_at_5, map_at_5_per_group
from services.identification.ranking import NEW_INDIVIDUAL, Candidates, rank_candidates
from services.identification.tuning import Tuning
from services.identification.vectors import blend, combine_flip, l2_normalise

__all__ = [
    "NEW_INDIVIDUAL", "Candidates", "Gallery", "Identifier", "IndexConfig", "Tuning", "blend", "build_gallery",
    "combine_flip", "l2_normalise", "map_at_5", "map_at_5_per_group", "rank_candidates",
]

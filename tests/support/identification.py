"""Synthetic embeddings for the identification tests: individuals are random unit centres, images are noisy
copies of their individual's centre (noise scale per species or per model)."""

from __future__ import annotations

import numpy as np


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def centres(count: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    return unit(rng.normal(size=(count, dim)))


def noisy(centre_rows: np.ndarray, noise: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors near the given centres; `noise` is the per-dimension std relative to 1/sqrt(dim)."""
    dim = centre_rows.shape[1]
    noise = np.asarray(noise, dtype=np.float32).reshape(-1, 1) if np.ndim(noise) else noise
    return unit(centre_rows + noise * rng.normal(size=centre_rows.shape) / np.sqrt(dim))


def identification_set(known: int = 60, unseen: int = 30, gallery_per: int = 3, queries_per: int = 1,
                       dim: int = 32, noise: float = 0.9, seed: int = 0, species_noise: dict | None = None,
                       species_likeness: dict | None = None):
    """Gallery rows of `known` individuals, queries of known (truth = id) and unseen individuals
    (truth = new_individual). Species alternate per individual; `species_noise` overrides the noise per species;
    `species_likeness` pulls the individuals of a species towards a shared direction (look-alike individuals:
    high scores between different animals)."""
    rng = np.random.default_rng(seed)
    species_names = sorted(species_noise or species_likeness or {}) or ["beluga", "humpback_whale"]
    c = centres(known + unseen, dim, rng)
    if species_likeness:
        shared = centres(len(species_names), dim, np.random.default_rng(1234))
        pull = np.array([species_likeness.get(species_names[i % len(species_names)], 0.0)
                         for i in range(known + unseen)], dtype=np.float32)[:, None]
        c = unit(c + pull * shared[np.arange(known + unseen) % len(species_names)])
    ids = [f"ind{i:04d}" for i in range(known + unseen)]
    species = [species_names[i % len(species_names)] for i in range(known + unseen)]
    level = np.array([(species_noise or {}).get(s, noise) for s in species], dtype=np.float32)
    g_rows = np.repeat(np.arange(known), gallery_per)
    gallery = {"embeddings": noisy(c[g_rows], level[g_rows], rng), "individual_ids": [ids[i] for i in g_rows],
               "species": [species[i] for i in g_rows], "images": [f"g{n:05d}.jpg" for n in range(len(g_rows))]}
    q_rows = np.concatenate([np.repeat(np.arange(known), queries_per), np.arange(known, known + unseen)])
    queries = {"embeddings": noisy(c[q_rows], level[q_rows], rng),
               "truths": [ids[i] if i < known else "new_individual" for i in q_rows],
               "species": [species[i] for i in q_rows]}
    return gallery, queries

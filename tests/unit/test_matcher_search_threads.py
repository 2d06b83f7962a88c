"""The matcher's process searches with one FAISS (OpenMP) thread unless OMP_NUM_THREADS chooses."""

from __future__ import annotations

import faiss
import pytest

from services.chain.matcher.matching import limit_search_threads


@pytest.fixture()
def restore_threads():
    before = faiss.omp_get_max_threads()
    yield
    faiss.omp_set_num_threads(before)


def test_one_search_thread_by_default(restore_threads):
    faiss.omp_set_num_threads(2)
    assert limit_search_threads({}) == 1
    assert faiss.omp_get_max_threads() == 1


def test_an_explicit_omp_num_threads_is_left_alone(restore_threads):
    faiss.omp_set_num_threads(2)
    assert limit_search_threads({"OMP_NUM_THREADS": "2"}) == 2
    assert faiss.omp_get_max_threads() == 2

"""The matcher's process searches with the setting `matcher_search_threads` FAISS (OpenMP) threads: 1 by default,
0 leaves OpenMP's own number."""

from __future__ import annotations

import faiss
import pytest

from services.chain.matcher.matching import limit_search_threads
from services.core.settings import load_settings


@pytest.fixture()
def restore_threads():
    before = faiss.omp_get_max_threads()
    yield
    faiss.omp_set_num_threads(before)


def test_one_search_thread_by_default(restore_threads):
    faiss.omp_set_num_threads(2)
    assert limit_search_threads(load_settings(profile="local", environ={}).matcher_search_threads) == 1
    assert faiss.omp_get_max_threads() == 1


def test_zero_leaves_openmps_own_number(restore_threads):
    faiss.omp_set_num_threads(2)
    settings = load_settings(profile="local", environ={"WHALEID_MATCHER_SEARCH_THREADS": "0"})
    assert limit_search_threads(settings.matcher_search_threads) == 2
    assert faiss.omp_get_max_threads() == 2


def test_a_number_is_applied(restore_threads):
    faiss.omp_set_num_threads(1)
    assert limit_search_threads(3) == 3

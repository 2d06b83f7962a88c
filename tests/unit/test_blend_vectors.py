"""The score-level blend (services.core.identification.vectors.blend): the concatenation of each model's normalised
embeddings scaled by sqrt(w / sum w), whose inner product is the weighted mean of the models' cosines, for models
of different sizes."""

import numpy as np
import pytest

from services.core.errors import DataError
from services.core.identification.vectors import blend, blended_size, l2_normalise


def _random(rows, size, seed):
    return np.random.default_rng(seed).normal(size=(rows, size)).astype(np.float32)


def test_inner_product_is_the_weighted_mean_of_cosines_across_sizes():
    a, b = _random(7, 512, 0), _random(7, 1280, 1)
    weights = {"run": 0.3, "general": 0.9}
    blended = blend({"run": a, "general": b}, weights)
    assert blended.shape == (7, 512 + 1280)
    np.testing.assert_allclose(np.linalg.norm(blended, axis=1), 1.0, atol=1e-6)
    cos_a, cos_b = l2_normalise(a) @ l2_normalise(a).T, l2_normalise(b) @ l2_normalise(b).T
    expected = (0.3 * cos_a + 0.9 * cos_b) / 1.2
    np.testing.assert_allclose(blended @ blended.T, expected, atol=1e-6)


def test_weight_zero_drops_a_model_and_one_model_is_bit_identical():
    a, b = _random(5, 16, 2), _random(5, 40, 3)
    alone = blend({"run": a, "general": b}, {"run": 0.0, "general": 2.0})
    assert alone.shape == (5, 40)
    np.testing.assert_array_equal(alone, l2_normalise(b))
    np.testing.assert_array_equal(blend({"run": a}, {"run": 1.0}), l2_normalise(a))
    assert blended_size({"run": 16, "general": 40}, {"run": 0.0, "general": 2.0}) == 40
    assert blended_size({"run": 16, "general": 40}, {"run": 0.5, "general": 0.5}) == 56


def test_a_query_blended_alone_scores_as_in_the_batch():
    """The gallery and the live queries are blended separately: a row's blend must not depend on the others."""
    a, b = _random(6, 8, 4), _random(6, 12, 5)
    weights = {"x": 0.25, "y": 0.75}
    batch = blend({"x": a, "y": b}, weights)
    one = blend({"x": a[2:3], "y": b[2:3]}, weights)
    np.testing.assert_allclose(one, batch[2:3], atol=1e-7)


def test_the_order_is_the_model_ids_whatever_the_mapping_order():
    """Triton's blend (exports sorted by model id) and an offline gallery must concatenate alike."""
    a, b = _random(3, 4, 8), _random(3, 6, 9)
    weights = {"run": 0.4, "general": 0.6}
    forward = blend({"run": a, "general": b}, weights)
    np.testing.assert_array_equal(forward, blend({"general": b, "run": a}, weights))
    np.testing.assert_allclose(forward[:, :6], np.sqrt(0.6) * l2_normalise(b), atol=1e-6)  # general < run


@pytest.mark.parametrize("weights, message", [({"x": 0.0, "y": 0.0}, "all weights are zero"),
                                              ({"x": -1.0, "y": 1.0}, "finite and >= 0"),
                                              ({"x": 1.0}, "no weight")])
def test_bad_weights_are_refused(weights, message):
    with pytest.raises(DataError, match=message):
        blend({"x": _random(2, 4, 6), "y": _random(2, 6, 7)}, weights)


def test_row_counts_must_agree():
    with pytest.raises(DataError, match="rows"):
        blend({"x": _random(2, 4, 6), "y": _random(3, 6, 7)}, {"x": 1.0, "y": 1.0})

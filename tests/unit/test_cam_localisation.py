"""The box-from-CAM arithmetic (services.core.localisation) on synthetic maps."""

import numpy as np
import pytest

from services.core.localisation import WHOLE_FRAME, cam_box, peak_region


def blob(grid=(12, 12), centre=(3.0, 8.0), sigma=1.0, height=1.0):
    yy, xx = np.mgrid[0:grid[0], 0:grid[1]]
    return height * np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / (2 * sigma ** 2))


def test_region_is_the_connected_cells_above_the_fraction_around_the_peak():
    cam = np.zeros((6, 8))
    cam[1:3, 2:5] = 1.0  # the peak's region: rows 1-2, columns 2-4
    cam[2, 3] = 2.0
    cam[5, 7] = 1.5  # above the fraction, but not connected to the peak
    assert peak_region(cam, 0.2) == (2, 1, 5, 3)
    # a higher fraction keeps the peak cell only
    assert peak_region(cam, 0.6) == (3, 2, 4, 3)


def test_diagonal_neighbours_are_not_connected():
    cam = np.zeros((4, 4))
    cam[1, 1], cam[2, 2] = 1.0, 0.9
    assert peak_region(cam, 0.2) == (1, 1, 2, 2)


def test_box_is_normalised_with_the_margin_and_clipped():
    cam = np.zeros((10, 10))
    cam[2:6, 4:8] = 1.0  # cells x 4..7, y 2..5: box 0.4..0.8 x 0.2..0.6
    box, score = cam_box(cam, 0.2, 0.0)
    np.testing.assert_allclose(box, [0.4, 0.2, 0.8, 0.6], atol=1e-6)
    assert score == pytest.approx(1.0)
    box, _ = cam_box(cam, 0.2, 0.25)  # 0.1 wider and taller on each side
    np.testing.assert_allclose(box, [0.3, 0.1, 0.9, 0.7], atol=1e-6)
    edge = np.zeros((10, 10))
    edge[0:4, 0:2] = 1.0
    box, _ = cam_box(edge, 0.2, 0.5)
    np.testing.assert_allclose(box, [0.0, 0.0, 0.3, 0.6], atol=1e-6)


def test_score_is_the_share_of_the_mass_in_the_box():
    concentrated, score = cam_box(blob(sigma=1.0), 0.2, 0.0)
    assert score > 0.7  # the gaussian's tails below 20% of the peak lie outside the box
    assert concentrated[2] - concentrated[0] < 0.5
    two_peaks = blob(centre=(3, 2)) + blob(centre=(8, 9), height=0.95)
    _, split_score = cam_box(two_peaks, 0.2, 0.0)
    assert split_score == pytest.approx(score / 1.95, abs=0.02)  # the other peak holds 0.95 / 1.95 of the mass
    assert split_score < 0.5


def test_a_flat_map_gives_a_weak_small_box_and_an_empty_map_the_whole_frame():
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.0, 1.0, (12, 12))
    noise[noise < 0.9] = 0.0  # scattered single cells: the peak's region is small and holds little mass
    _, score = cam_box(noise, 0.2, 0.0)
    assert score < 0.5
    box, score = cam_box(np.zeros((12, 12)), 0.2, 0.15)
    np.testing.assert_array_equal(box, np.asarray(WHOLE_FRAME, np.float32))
    assert score == 0.0
    box, score = cam_box(-np.ones((5, 5)), 0.2, 0.15)  # negative evidence only: nothing to localise
    assert score == 0.0


def test_not_a_grid_is_refused():
    with pytest.raises(ValueError):
        peak_region(np.zeros(5))

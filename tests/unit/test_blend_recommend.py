"""`whaleid evaluate`'s choice among run / general / blend and what the tuning file then serves."""

from types import SimpleNamespace

import pytest

from services.core.errors import DataError
from services.core.identification.evaluation import recommend
from services.core.identification.tuning import Tuning


def test_the_highest_held_out_figure_wins():
    assert recommend({"run": 0.61, "general": 0.58, "blend": 0.66}) == "blend"
    assert recommend({"run": 0.61, "general": 0.64, "blend": 0.63}) == "general"
    assert recommend({"run": 0.70, "general": 0.64, "blend": 0.69}) == "run"
    assert recommend({"run": 0.70, "general": 0.64}) == "run"  # no blend measured (e.g. --compare only)


def test_ties_go_to_the_simpler_configuration():
    assert recommend({"run": 0.6, "general": 0.6, "blend": 0.6}) == "general"
    assert recommend({"run": 0.6, "general": 0.5, "blend": 0.6}) == "run"
    with pytest.raises(DataError, match="no held-out figure"):
        recommend({"run": None})


def test_tuning_file_round_trip_with_members(tmp_path):
    tuning = Tuning(threshold=0.3, weights={"lite0-f0-e004": 0.4, "general-lite2-384": 0.6, "other": 0.0},
                    members={"general-lite2-384": "general"},
                    validation={"comparison": {"recommend": "blend", "map5_held_out": {"run": 0.5, "general": 0.6,
                                                                                        "blend": 0.65}}})
    loaded = Tuning.load(tuning.save(tmp_path))
    assert loaded == tuning
    assert loaded.served_weights() == {"lite0-f0-e004": 0.4, "general-lite2-384": 0.6}
    assert Tuning.load(Tuning(weights={"m": 1.0}).save(tmp_path / "old.json")).members == {}


def test_predict_serves_the_tuning_members_and_drops_weight_zero():
    from training.identification_commands import served_embedders

    run, general = SimpleNamespace(model_id="run-1"), SimpleNamespace(model_id="general-x")
    general_only = Tuning(weights={"run-1": 0.0, "general-x": 1.0}, members={"general-x": "general"})
    assert served_embedders([run, general], general_only) == [general]
    both = Tuning(weights={"run-1": 0.3, "general-x": 0.7}, members={"general-x": "general"})
    assert served_embedders([run, general], both) == [run, general]
    assert served_embedders([run], None) == [run]


def test_gallery_build_serves_the_recommended_general_identifier_or_blend(tmp_path, general_identifier):
    from training.general import served_runs

    run = tmp_path / "run"
    run.mkdir()
    assert served_runs(run)[0] == [("", str(run), 1.0)]  # no tuning file: the run
    Tuning(weights={"run-1": 1.0}).save(run)
    assert served_runs(run)[0] == [("", str(run), 1.0)]
    Tuning(weights={"run-1": 0.0, "general-lite0-224": 1.0}, members={"general-lite0-224": "general"}).save(run)
    served, note = served_runs(run)
    assert served == [("general-lite0-224", str(general_identifier), 1.0)] and "recommends it over the run" in note
    Tuning(weights={"run-1": 0.25, "general-lite0-224": 0.75}, members={"general-lite0-224": "general"}).save(run)
    served, note = served_runs(run)  # model-id order, as the Triton blend
    assert served == [("general-lite0-224", str(general_identifier), 0.75), ("run-1", str(run), 0.25)]
    assert "serving the blend general-lite0-224 0.75 + run-1 0.25" in note


def test_a_gain_within_the_noise_is_a_tie_that_the_general_identifier_wins():
    held = {"run": 0.62, "general": 0.60, "blend": 0.63}
    assert recommend(held) == "blend"
    assert recommend(held, {"run": 0.05, "blend": 0.05}) == "general"  # both gains under 1 standard error
    assert recommend(held, {"run": 0.01, "blend": 0.05}) == "run"  # the run's gain is 2 standard errors
    assert recommend(held, {"run": 0.01, "blend": 0.01}) == "blend"
    assert recommend(held, {"run": 0.01, "blend": 0.01}, z=4.0) == "general"


def _evaluation(precisions, groups):
    import numpy as np

    from services.core.identification.evaluation import Evaluation

    return Evaluation(None, None, {}, {}, np.asarray(precisions, float), np.asarray(groups),
                      np.ones(len(precisions)))


def test_gain_standard_error_is_paired_and_clustered_by_group():
    import numpy as np

    from services.core.identification.evaluation import gain_standard_error

    general = _evaluation([0.0, 0.5, 1.0, 0.2, 0.0, 1.0], list("aabbcc"))
    same = _evaluation([0.0, 0.5, 1.0, 0.2, 0.0, 1.0], list("aabbcc"))
    assert gain_standard_error(same, general) == 0.0  # paired: the same per-query figures have no noise
    shifted = _evaluation([0.1, 0.6, 1.1, 0.3, 0.1, 1.1], list("aabbcc"))
    assert gain_standard_error(shifted, general) == pytest.approx(0.0, abs=1e-12)  # a constant gain is certain
    noisy = _evaluation([1.0, 1.0, 1.0, 0.2, 0.0, 0.0], list("aabbcc"))  # gains +1, +0.5, 0, 0, 0, -1
    gains_by_group = np.array([1.5, 0.0, -1.0])  # summed per individual
    mean = 0.5 / 6
    expected = np.sqrt(3 / 2 * ((gains_by_group - 2 * mean) ** 2).sum()) / 6
    assert gain_standard_error(noisy, general) == pytest.approx(expected)


def test_held_out_precisions_are_each_querys_cross_fitted_figure():
    """The per-query figures the noise rule pairs average to the reported held-out MAP@5 (one model, a blend)."""
    import numpy as np

    from services.core.identification.evaluation import LabelledImages, evaluate_out_of_fold

    rng = np.random.default_rng(0)
    counts = rng.choice([1, 2, 3], size=40)
    rows = np.repeat(np.arange(40), counts)
    data = LabelledImages([f"{n:04d}.jpg" for n in range(len(rows))], [f"i{r}" for r in rows], ["orca"] * len(rows),
                          rows % 3)
    centres = rng.normal(size=(40, 16))
    models = {m: centres[rows] + rng.normal(size=(len(rows), 16)) * s for m, s in (("a", 0.8), ("b", 1.2))}
    for chosen in ({"a": models["a"]}, models):
        evaluation = evaluate_out_of_fold(chosen, data, [0, 1, 2], k=10, per_species=False, blend_steps=4)
        assert evaluation.held_out_precisions.shape == (evaluation.report["queries"],)
        assert np.mean(evaluation.held_out_precisions) == pytest.approx(evaluation.report["map5_held_out"], abs=6e-5)

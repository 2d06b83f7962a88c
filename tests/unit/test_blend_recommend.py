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


def test_gallery_build_serves_the_recommended_general_identifier_and_refuses_a_blend(tmp_path, general_identifier):
    from services.core.errors import ConfigError
    from training.general import served_run

    run = tmp_path / "run"
    run.mkdir()
    assert served_run(run)[0] == str(run)  # no tuning file: the run
    Tuning(weights={"run-1": 1.0}).save(run)
    assert served_run(run)[0] == str(run)
    Tuning(weights={"run-1": 0.0, "general-lite0-224": 1.0}, members={"general-lite0-224": "general"}).save(run)
    served, note = served_run(run)
    assert served == str(general_identifier) and "recommends it over the run" in note
    Tuning(weights={"run-1": 0.5, "general-lite0-224": 0.5}, members={"general-lite0-224": "general"}).save(run)
    with pytest.raises(ConfigError, match="recommends the blend"):
        served_run(run)

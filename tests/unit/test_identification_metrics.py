"""MAP@5 as Kaggle computes it, and `whaleid score`."""

import json

import pytest

from services.cli.main import main
from services.core.errors import DataError
from services.core.identification.metrics import average_precision_at_5, map_at_5, map_at_5_per_group


@pytest.mark.parametrize("predictions, truth, expected", [
    (["A", "B", "C", "D", "E"], "A", 1.0),        # Kaggle's worked examples: 1/rank of the right label
    (["B", "A", "C", "D", "E"], "A", 1 / 2),
    (["B", "C", "A", "D", "E"], "A", 1 / 3),
    (["B", "C", "D", "A", "E"], "A", 1 / 4),
    (["B", "C", "D", "E", "A"], "A", 1 / 5),
    (["B", "C", "D", "E", "F"], "A", 0.0),
    (["B", "C", "D", "E", "F", "A"], "A", 0.0),   # only the first five count
    (["A", "A", "A", "A", "A"], "A", 1.0),        # repeats do not add
    (["B", "A", "A"], "A", 1 / 2),                # only the first occurrence counts
    (["B", "B", "A"], "A", 1 / 3),                # duplicates of wrong labels still take a rank
    (["new_individual", "A"], "new_individual", 1.0),  # fewer than five allowed
    ([], "A", 0.0),                               # no predictions at all
])
def test_average_precision_at_5(predictions, truth, expected):
    assert average_precision_at_5(predictions, truth) == pytest.approx(expected)


def test_map_at_5_is_the_mean_over_all_rows():
    predictions = [["a", "b"], ["x", "b", "c"], ["z"], []]
    assert map_at_5(predictions, ["a", "b", "c", "d"]) == pytest.approx((1 + 0.5 + 0 + 0) / 4)


def test_map_at_5_per_group():
    result = map_at_5_per_group([["a"], ["x", "b"], ["c"]], ["a", "b", "d"], ["orca", "orca", "beluga"])
    assert result == {"beluga": 0.0, "orca": pytest.approx(0.75)}


@pytest.mark.parametrize("predictions, truths", [([], []), ([["a"]], ["a", "b"]), (["abc"], ["a"])])
def test_map_at_5_bad_input(predictions, truths):
    with pytest.raises(DataError):
        map_at_5(predictions, truths)


def write(path, text):
    path.write_text(text)
    return str(path)


TRUTH = "image,individual_id,species\n1.jpg,A,orca\n2.jpg,new_individual,orca\n3.jpg,C,beluga\n"


def test_score_cli_text_and_json(tmp_path, capsys):
    truth = write(tmp_path / "truth.csv", TRUTH)
    sub = write(tmp_path / "sub.csv", "image,predictions\n1.jpg,A B C D E\n2.jpg,A new_individual\n3.jpg,X Y Z\n")
    assert main(["score", sub, "--truth", truth]) == 0
    text = capsys.readouterr().out
    assert "MAP@5 0.5000 (3 images)" in text and "orca" in text and "beluga" in text
    assert main(["score", sub, "--truth", truth, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["map5"] == pytest.approx(0.5)
    assert result["per_species"] == {"beluga": 0.0, "orca": pytest.approx(0.75)}


def test_score_without_species_column(tmp_path, capsys):
    truth = write(tmp_path / "truth.csv", "image,individual_id\n1.jpg,A\n")
    sub = write(tmp_path / "sub.csv", "image,predictions\n1.jpg,B A\n")
    assert main(["score", sub, "--truth", truth, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"map5": 0.5, "per_species": {}}


@pytest.mark.parametrize("submission, message", [
    ("image,predictions\n1.jpg,A\n3.jpg,C\n", "2.jpg"),                          # an image of the truth missing
    ("image,predictions\n1.jpg,A\n2.jpg,A\n3.jpg,C\n1.jpg,B\n", "line 5"),       # duplicate row
    ("image,predictions\n1.jpg,A B C D E F\n2.jpg,A\n3.jpg,C\n", "line 2"),     # six predictions
    ("image,predictions\n1.jpg,A,extra\n2.jpg,A\n3.jpg,C\n", "line 2"),         # too many fields
    ("image,preds\n1.jpg,A\n", "missing column"),
    ("image,predictions\n1.jpg,A\n2.jpg,A\n3.jpg,C\n9.jpg,A\n", "9.jpg"),      # not in the truth
])
def test_score_errors_name_the_rows(tmp_path, capsys, submission, message):
    truth = write(tmp_path / "truth.csv", TRUTH)
    sub = write(tmp_path / "sub.csv", submission)
    assert main(["score", sub, "--truth", truth]) == 2
    err = capsys.readouterr().err
    assert "whaleid score: error:" in err and message in err


def test_score_bad_truth_and_missing_file(tmp_path, capsys):
    sub = write(tmp_path / "sub.csv", "image,predictions\n1.jpg,A\n")
    truth = write(tmp_path / "truth.csv", "image,individual_id\n1.jpg,\n")
    assert main(["score", sub, "--truth", truth]) == 2
    assert "line 2" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "nope.csv"), "--truth", truth]) == 2
    assert "no such file" in capsys.readouterr().err

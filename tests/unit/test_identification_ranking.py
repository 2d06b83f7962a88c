"""Ranking with new_individual, threshold tuning, per-species thresholds, blend weights, flip TTA, evaluation."""

import numpy as np
import pytest

from services.core.errors import DataError
from services.core.identification import (
    NEW_INDIVIDUAL,
    Identifier,
    Tuning,
    blend,
    build_gallery,
    combine_flip,
    map_at_5,
    rank_candidates,
)
from services.core.identification.evaluation import LabelledImages, evaluate_out_of_fold, split_fold
from services.core.identification.ranking import Candidates, average_precisions, insert_new_individual
from services.core.identification.tuning import (
    optimise_blend_weights,
    sweep_threshold,
    tune_per_species,
)
from support.identification import centres, identification_set, noisy, unit


def gallery_of(g):
    return build_gallery(g["embeddings"], g["individual_ids"], g["species"], g["images"])


def labels(predictions):
    return [[label for label, _ in p] for p in predictions]


def identify_map5(gallery, queries, tuning, species=None):
    return map_at_5(labels(Identifier(gallery, tuning).identify(queries["embeddings"], species)), queries["truths"])


def test_best_score_per_individual_and_new_individual_insertion():
    e = np.eye(4, dtype=np.float32)
    gallery = build_gallery(np.stack([e[0], e[0] + 0.1 * e[1], e[1], e[2], e[3]]), ["a", "a", "b", "c", "d"],
                            ["s"] * 5, list("12345"))
    query = unit(np.array([[1.0, 0.5, 0.2, 0.0]]))
    candidates = rank_candidates(gallery, query, k=5)
    assert candidates.ids[0].tolist() == ["a", "b", "c", "d", ""]  # "a" once, with its best image's score
    [prediction] = Identifier(gallery, Tuning(threshold=0.3)).identify(query)
    assert [label for label, _ in prediction] == ["a", "b", NEW_INDIVIDUAL, "c", "d"]
    assert prediction[2][1] == pytest.approx(0.3) and prediction[0][1] > prediction[1][1] > 0.3 > prediction[3][1]
    [first] = Identifier(gallery, Tuning(threshold=0.99)).identify(query)
    assert first[0][0] == NEW_INDIVIDUAL and len(first) == 5


def test_padded_to_five_with_a_tiny_gallery():
    gallery = build_gallery(np.eye(3), ["a", "b", "a"], ["s"] * 3, list("123"))
    [prediction] = Identifier(gallery, Tuning(threshold=0.5)).identify(np.array([[1.0, 0.0, 0.0]]))
    assert len(prediction) == 5 and [label for label, _ in prediction][:3] == ["a", NEW_INDIVIDUAL, "b"]


def test_neighbours_widened_when_one_individual_fills_k():
    rng = np.random.default_rng(0)
    c = centres(6, 16, rng)
    rows = np.array([0] * 40 + [1, 2, 3, 4, 5])
    gallery = build_gallery(noisy(c[rows], 0.1, rng), [f"i{r}" for r in rows], ["s"] * 45,
                            [str(i) for i in range(45)])
    candidates = rank_candidates(gallery, c[:1], k=10)  # the 10 nearest are all i0
    assert candidates.ids[0, 0] == "i0" and "" not in candidates.ids[0].tolist()


def test_vectorised_average_precision_equals_identifier_output():
    g, q = identification_set(noise=1.5, seed=3)
    gallery = gallery_of(g)
    candidates = rank_candidates(gallery, q["embeddings"], 50)
    for threshold in (-0.2, 0.2, 0.45, 0.6, 1.0):
        vectorised = average_precisions(candidates, q["truths"], [threshold]).mean()
        assert vectorised == pytest.approx(identify_map5(gallery, q, Tuning(threshold=threshold)))


def test_tuned_threshold_beats_both_extremes_on_unseen_queries():
    g, q = identification_set(noise=1.0, seed=1)
    gallery = gallery_of(g)
    sweep = sweep_threshold(rank_candidates(gallery, q["embeddings"], 50), q["truths"])
    g2, q2 = identification_set(noise=1.0, seed=2)  # fresh data: the tuned threshold generalises
    tuned, never, always = (identify_map5(gallery_of(g2), q2, Tuning(threshold=t)) for t in (sweep.best, 0.0, 1.0))
    print(f"threshold {sweep.best:.2f}: MAP@5 {tuned:.3f}; at 0: {never:.3f}; at 1: {always:.3f}")
    assert tuned > never + 0.05 and tuned > always + 0.05


def test_per_species_thresholds_beat_one_global_threshold():
    # belugas look alike (high scores between different animals), orcas are distinct but photographed worse
    kwargs = dict(known=80, unseen=40, queries_per=2, species_noise={"beluga": 0.6, "orca": 1.2},
                  species_likeness={"beluga": 1.5, "orca": 0.0})
    g, q = identification_set(seed=4, **kwargs)
    candidates = rank_candidates(gallery_of(g), q["embeddings"], 50)
    global_threshold = sweep_threshold(candidates, q["truths"]).best
    per_species = tune_per_species(candidates, q["truths"], q["species"], global_threshold)
    assert per_species["beluga"] > per_species["orca"]  # look-alikes need a higher bar for a match
    g2, q2 = identification_set(seed=5, **kwargs)
    gallery2 = gallery_of(g2)
    one = identify_map5(gallery2, q2, Tuning(threshold=global_threshold), q2["species"])
    tuning = Tuning(threshold=global_threshold, per_species=per_species)
    each = identify_map5(gallery2, q2, tuning, q2["species"])
    unknown = identify_map5(gallery2, q2, tuning, [None] * len(q2["truths"]))  # unknown species: global threshold
    print(f"global {one:.3f} per species {each:.3f}")
    assert each > one + 0.02 and unknown == pytest.approx(one)


def test_new_share_threshold_by_binary_search():
    g, q = identification_set(noise=1.5, seed=6)
    predictions = Identifier(gallery_of(g)).identify(q["embeddings"], new_share=0.25)
    share = np.mean([p[0][0] == NEW_INDIVIDUAL for p in predictions])
    assert share == pytest.approx(0.25, abs=1.5 / len(predictions))
    with pytest.raises(DataError):
        Identifier(gallery_of(g)).identify(q["embeddings"], new_share=1.5)


def test_species_count_mismatch():
    g, q = identification_set(seed=7)
    with pytest.raises(DataError, match="species"):
        Identifier(gallery_of(g)).identify(q["embeddings"], species=["orca"])


def two_models(seed):
    """The same animals seen by two noisy 'models': model a is good, model b is poor."""
    rng = np.random.default_rng(seed)
    c = centres(60, 32, rng)
    rows = np.concatenate([np.repeat(np.arange(40), 3), np.arange(40, 60)])
    return rows, {"a": noisy(c[rows], 2.0, rng), "b": noisy(c[rows], 3.0, rng)}


def test_blend_weights_beat_the_worst_single_model():
    rows, models = two_models(8)
    ids = [f"i{r}" for r in rows]
    gallery_rows = np.array([i for i in range(len(rows)) if rows[i] < 40 and i % 3 != 2])
    query_rows = np.array([i for i in range(len(rows)) if not (rows[i] < 40 and i % 3 != 2)])
    truths = [ids[i] if rows[i] < 40 else NEW_INDIVIDUAL for i in query_rows]

    def objective(weights):
        emb = blend(models, weights)
        gallery = build_gallery(emb[gallery_rows], [ids[i] for i in gallery_rows], ["s"] * len(gallery_rows),
                                [str(i) for i in gallery_rows])
        return sweep_threshold(rank_candidates(gallery, emb[query_rows], 50), truths).best_map5

    weights, best = optimise_blend_weights(["a", "b"], objective)
    singles = {m: objective({"a": float(m == "a"), "b": float(m == "b")}) for m in ("a", "b")}
    print(f"blend {weights}: {best:.3f}; single models {singles}")
    assert best > min(singles.values()) and best >= max(singles.values())
    assert sum(weights.values()) == pytest.approx(1.0) and weights["a"] >= weights["b"]


def test_blend_and_flip_combinations():
    a, b = unit(np.array([[1.0, 0.0]])), unit(np.array([[0.0, 1.0]]))
    # the score-level blend concatenates sqrt(w)-scaled members (tests/unit/test_blend_vectors.py)
    assert np.allclose(blend({"m": a, "n": b}, {"m": 0.5, "n": 0.5}), unit(np.array([[1.0, 0.0, 0.0, 1.0]])))
    assert np.allclose(blend({"m": a, "n": b}, {"m": 1.0, "n": 0.0}), a)
    assert np.allclose(combine_flip(a, b), unit(np.array([[1.0, 1.0]])))
    with pytest.raises(DataError, match="no weight"):
        blend({"m": a, "n": b}, {"m": 1.0})
    with pytest.raises(DataError, match="all weights are zero"):
        blend({"m": a}, {"m": 0.0})
    with pytest.raises(DataError, match="shapes differ"):
        combine_flip(a, np.ones((2, 2)))


def test_tuning_file_round_trip(tmp_path):
    tuning = Tuning(threshold=0.42, per_species={"orca": 0.5}, weights={"m1": 0.7, "m2": 0.3}, flip_tta=True, k=30,
                    validation={"map5": 0.8})
    path = tuning.save(tmp_path)
    assert path.name == "tuning.json"
    assert Tuning.load(tmp_path) == tuning and Tuning.load(path) == tuning
    path.write_text(path.read_text().replace('"k"', '"kk"'))
    with pytest.raises(DataError, match="unknown keys kk"):
        Tuning.load(path)
    with pytest.raises(DataError, match="no tuning file"):
        Tuning.load(tmp_path / "missing")


def labelled(seed=9, individuals=120, folds=3):
    """Long-tailed photos per individual (many singletons), folds by individual, two models."""
    rng = np.random.default_rng(seed)
    c = centres(individuals, 32, rng)
    counts = rng.choice([1, 1, 2, 3, 5], size=individuals)
    rows = np.repeat(np.arange(individuals), counts)
    data = LabelledImages([f"{n:05d}.jpg" for n in range(len(rows))], [f"i{r}" for r in rows],
                          ["orca" if r % 2 else "beluga" for r in rows], rows % folds)
    return data, {"good": noisy(c[rows], 1.5, rng), "poor": noisy(c[rows], 3.0, rng)}


def test_split_fold_matches_training_validation():
    data, _ = labelled()
    split = split_fold(data, 1)
    gallery_ids = {data.individual_ids[r] for r in split.gallery_rows}
    for row, truth in zip(split.query_rows, split.truths, strict=True):
        assert data.folds[row] == 1 and row not in split.gallery_rows
        assert (truth == NEW_INDIVIDUAL) == (data.individual_ids[row] not in gallery_ids)
    with pytest.raises(DataError, match="fold 7"):
        split_fold(data, 7)


def test_evaluate_out_of_fold_reports_and_tunes(tmp_path):
    data, models = labelled()
    evaluation = evaluate_out_of_fold(models, data, folds=[0, 1, 2], k=20, blend_steps=5)
    report = evaluation.report
    print({k: report[k] for k in ("map5", "map5_threshold_0", "map5_threshold_1", "threshold", "weights")})
    assert report["map5"] > max(report["map5_threshold_0"], report["map5_threshold_1"])
    assert set(report["per_fold"]) == {"0", "1", "2"} and set(report["per_species"]) == {"beluga", "orca"}
    assert report["weights"]["good"] > report["weights"]["poor"]
    assert 0 < report["new_individual_share"] < 1
    assert evaluation.tuning.threshold == report["threshold"] and evaluation.tuning.k == 20
    from training.plots import plot_threshold_curve

    png = plot_threshold_curve(evaluation.sweep, tmp_path / "curve.png", extra=evaluation.fold_sweeps)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_insert_new_individual_with_no_candidates():
    candidates = Candidates(np.full((1, 5), "", dtype=object), np.full((1, 5), -np.inf, dtype=np.float32))
    assert labels(insert_new_individual(candidates, 0.5)) == [[NEW_INDIVIDUAL] * 5]


def test_each_candidate_names_the_gallery_image_it_matched_best():
    """The matched image of a candidate is its best-scoring gallery row (what the review shows side by side)."""
    e = np.eye(4, dtype=np.float32)
    gallery = build_gallery(unit(np.stack([e[0] + 0.3 * e[1], e[0], e[1], e[2] + 0.5 * e[0], e[2]])),
                            ["a", "a", "b", "c", "c"], ["s"] * 5, ["a-far", "a-near", "b1", "c-near", "c-far"])
    query = unit(np.array([[1.0, 0.0, 0.0, 0.0]]))
    candidates = rank_candidates(gallery, query, k=5)
    assert candidates.ids[0].tolist()[:3] == ["a", "c", "b"]
    assert [gallery.images[r] for r in candidates.rows[0][:3]] == ["a-near", "c-near", "b1"]
    assert candidates.rows[0][3:].tolist() == [-1, -1]  # no fourth individual
    matched = candidates.matched_rows()[0]
    assert {i: gallery.images[r] for i, r in matched.items()} == {"a": "a-near", "c": "c-near", "b": "b1"}
    detailed = Identifier(gallery, Tuning(threshold=0.2)).identify_detailed(query)
    assert detailed.predictions == Identifier(gallery, Tuning(threshold=0.2)).identify(query)
    assert detailed.matched_rows == [matched] and detailed.thresholds.tolist() == pytest.approx([0.2])
    assert candidates.subset([0]).rows.tolist() == candidates.rows.tolist()

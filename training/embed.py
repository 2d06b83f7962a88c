"""Load a trained embedder from a run directory and embed images with the server's preprocessing.

`load_embedding_model(run_dir, snapshot=None)` -> (keras.Model, info): the model maps float32 NHWC images in
[0, 255] to L2-normalised embeddings. `Embedder.from_run(run_dir)` wraps it with services.core.imaging.preprocess.
Snapshots: None = the last checkpoint; an epoch number (3), a file name (epoch_003.weights.h5) or a path.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from services.core import imaging
from services.core.errors import ConfigError
from training.config import general_model_id, is_general, read_saved_config

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_PATTERN = re.compile(r"epoch_(\d{3,})\.weights\.h5$")
LABELS_FILE = "labels.json"


def checkpoint_name(epoch: int) -> str:
    return f"epoch_{epoch:03d}.weights.h5"


def list_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """{epoch: path} of the run's snapshots, in epoch order."""
    found = {}
    for path in (Path(run_dir) / CHECKPOINT_DIR).glob("epoch_*.weights.h5"):
        match = CHECKPOINT_PATTERN.search(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def resolve_snapshot(run_dir: str | Path, snapshot: int | str | Path | None = None) -> tuple[int, Path]:
    """(epoch, checkpoint path) for a snapshot spec; a clear error when the run has no such snapshot."""
    run_dir = Path(run_dir)
    checkpoints = list_checkpoints(run_dir)
    if snapshot is None or snapshot == "last":
        if not checkpoints:
            raise ConfigError(f"run {run_dir} has no checkpoints in {run_dir / CHECKPOINT_DIR}")
        epoch = max(checkpoints)
        return epoch, checkpoints[epoch]
    text = str(snapshot)
    if text.isdigit():
        epoch = int(text)
        if epoch not in checkpoints:
            raise ConfigError(f"run {run_dir} has no snapshot of epoch {epoch} (has: {sorted(checkpoints) or 'none'})")
        return epoch, checkpoints[epoch]
    match = CHECKPOINT_PATTERN.search(text)
    path = Path(text) if Path(text).is_file() else run_dir / CHECKPOINT_DIR / Path(text).name
    if not match or not path.is_file():
        raise ConfigError(f"snapshot {snapshot!r} not found in run {run_dir} (has epochs {sorted(checkpoints)})")
    return int(match.group(1)), path


def read_labels(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / LABELS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"run {run_dir}: cannot read {LABELS_FILE} ({exc}); is it a `whaleid train` run?") from None


def model_id(config: dict[str, Any], epoch: int) -> str:
    if is_general(config):
        return general_model_id(config)
    fold = config["fold"]
    return f"{config['name']}-{'all' if fold < 0 else f'f{fold}'}-e{epoch:03d}"


def load_embedding_model(run_dir: str | Path, snapshot: int | str | Path | None = None):
    """(embedding keras.Model, info) of one snapshot of a training run."""
    _, embedding_model, info = load_trained_models(run_dir, snapshot)
    return embedding_model, info


def load_trained_models(run_dir: str | Path, snapshot: int | str | Path | None = None):
    """(train keras.Model, embedding keras.Model, info) of one snapshot: the two share their layers, so the train
    model's heads (e.g. `species`) apply to the embedding model's output. info["species"]: the species head's
    class order (labels.json), empty when the run has no species head."""
    from training.model import build_models

    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise ConfigError(f"{run_dir} is not a training run: no config.yaml")
    config = read_saved_config(config_path)
    labels = read_labels(run_dir)
    epoch, checkpoint = resolve_snapshot(run_dir, snapshot)
    config = {**config, "weights": "none"}  # the checkpoint holds every weight
    train_model, embedding_model = build_models(config, len(labels["classes"]), len(labels["species"]))
    try:
        train_model.load_weights(checkpoint)
    except Exception as exc:  # noqa: BLE001 - h5py/keras raise many kinds on a mismatched file
        raise ConfigError(f"cannot load {checkpoint} into the run's model: {type(exc).__name__}: {exc}") from None
    info = {
        "model_id": model_id(config, epoch),
        "backbone": config["backbone"],
        "image_size": config["image_size"],
        "embedding_size": int(embedding_model.output.shape[-1]),
        "fold": config["fold"],
        "trained": config.get("head") != "none",  # the general identifier: no fold was trained on
        "epoch": epoch,
        "eval_box_source": config["eval_box_source"],
        "checkpoint": str(checkpoint),
        "run": str(run_dir),
        "config": config,
        "species": list(labels["species"]) if "species" in train_model.output_names else [],
    }
    return train_model, embedding_model, info


class Embedder:
    """Embeds uint8 RGB images (or files) exactly as the server does: crop, Pillow resize, model."""

    def __init__(self, model, info: dict[str, Any], localiser=None):
        self.model = model
        self.info = info
        self.localiser = localiser  # training.localiser.CamLocaliser: the crop of photos without a box
        self.model_id: str = info["model_id"]
        self.image_size: int = int(info["image_size"])
        self.embedding_size: int = int(info["embedding_size"])
        self.eval_box_source: str = info.get("eval_box_source", "")

    @classmethod
    def from_run(cls, run_dir: str | Path, snapshot: int | str | Path | None = None) -> "Embedder":
        from training.localiser import localiser_for

        model, info = load_embedding_model(run_dir, snapshot)
        return cls(model, info, localiser_for(info["config"]))

    def embed_arrays(self, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Preprocessed float32 (N, size, size, 3) in [0, 255] -> (N, D) L2-normalised float32."""
        if len(batch) == 0:
            return np.zeros((0, self.embedding_size), dtype=np.float32)
        chunks = [np.asarray(self.model(batch[i:i + batch_size], training=False))
                  for i in range(0, len(batch), batch_size)]
        return np.concatenate(chunks).astype(np.float32)

    def embed_images(self, images: Sequence[np.ndarray], boxes: Sequence | None = None,
                     batch_size: int = 32) -> np.ndarray:
        """uint8 (H, W, 3) images, optional [x0, y0, x1, y1] box per image (None = whole image) -> (N, D)."""
        boxes = list(boxes) if boxes is not None else [None] * len(images)
        if len(boxes) != len(images):
            raise ConfigError(f"embed_images: {len(images)} images but {len(boxes)} boxes")
        unboxed = [i for i, box in enumerate(boxes) if box is None]
        if self.localiser is not None and unboxed:  # the label-free crop, as the served `detector` finds it
            for i, box in zip(unboxed, self.localiser.crop_boxes([images[i] for i in unboxed]), strict=True):
                boxes[i] = box
        out = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([imaging.preprocess(image, self.image_size, box) for image, box in
                              zip(images[start:start + batch_size], boxes[start:start + batch_size], strict=True)])
            out.append(self.embed_arrays(batch, batch_size))
        return np.concatenate(out) if out else np.zeros((0, self.embedding_size), dtype=np.float32)

    def embed_files(self, paths: Sequence[str | Path], boxes: Sequence | None = None,
                    batch_size: int = 32) -> np.ndarray:
        boxes = list(boxes) if boxes is not None else [None] * len(paths)
        if len(boxes) != len(paths):
            raise ConfigError(f"embed_files: {len(paths)} files but {len(boxes)} boxes")
        out = []
        for start in range(0, len(paths), batch_size):
            images = [imaging.load_image_file(p) for p in paths[start:start + batch_size]]
            out.append(self.embed_images(images, boxes[start:start + batch_size], batch_size))
        return np.concatenate(out) if out else np.zeros((0, self.embedding_size), dtype=np.float32)


class BlendedEmbedder:
    """Several embedders served as one, as the Triton blend model serves them (`model-repo build --tuning`): each
    member embeds the same photos with the same box, and the rows are vectors.blend of the members' (weight > 0,
    model-id order). The interface the gallery build uses: model_id, model_ids, weights, members_spec,
    embedding_size, eval_box_source, info, embed_images, embed_files."""

    def __init__(self, members: Sequence[Embedder], weights: dict[str, float]):
        from services.core.identification.vectors import blended_size

        kept = sorted((m for m in members if float(weights.get(m.model_id, 0.0)) > 0), key=lambda m: m.model_id)
        if not kept:
            raise ConfigError(f"blend of {[m.model_id for m in members]}: no member has a weight > 0 in {weights}")
        sources = sorted({m.eval_box_source for m in kept})
        if len(sources) > 1:  # Triton gives every member the same crop
            raise ConfigError(f"blend members crop differently (eval_box_source {sources}); Triton serves one crop")
        self.members = kept
        self.model_ids = [m.model_id for m in kept]
        self.weights = {m.model_id: float(weights[m.model_id]) for m in kept}
        self.members_spec = {m.model_id: "general" for m in kept if is_general(m.info.get("config", {}))}
        self.model_id = "+".join(self.model_ids)
        self.embedding_size = blended_size({m.model_id: m.embedding_size for m in kept}, self.weights)
        self.eval_box_source = sources[0]
        trained = [m for m in kept if m.info.get("trained", True)]  # the run's folds validate the blend
        self.info = {**(trained or kept)[0].info, "model_id": self.model_id, "model_ids": list(self.model_ids),
                     "weights": dict(self.weights), "embedding_size": self.embedding_size}

    def _blend(self, per_member) -> np.ndarray:
        from services.core.identification.vectors import blend

        return blend({m.model_id: per_member(m) for m in self.members}, self.weights)

    def embed_images(self, images: Sequence[np.ndarray], boxes: Sequence | None = None,
                     batch_size: int = 32) -> np.ndarray:
        return self._blend(lambda m: m.embed_images(images, boxes, batch_size))

    def embed_files(self, paths: Sequence[str | Path], boxes: Sequence | None = None,
                    batch_size: int = 32) -> np.ndarray:
        images = [imaging.load_image_file(p) for p in paths]  # decoded once for every member
        return self.embed_images(images, boxes, batch_size)

    def describe(self) -> str:
        total = sum(self.weights.values())
        return (" + ".join(f"{m} {w / total:.2f}" for m, w in self.weights.items())
                + f": EMBEDDING {self.embedding_size}-d")


def served_embedder(runs: Sequence[tuple[str, str | Path, float]]) -> Embedder | BlendedEmbedder:
    """The embedder of training.general.served_runs' [(model id, run directory, weight)]: one run's Embedder, or a
    BlendedEmbedder of several; a model id ("" = any) that the run's last snapshot does not have is refused."""
    members = []
    for expected, run_dir, _ in runs:
        embedder = Embedder.from_run(run_dir)
        if expected and embedder.model_id != expected:
            raise ConfigError(f"the tuning names {expected}, but {run_dir} serves {embedder.model_id}: run `whaleid "
                              "evaluate` again")
        members.append(embedder)
    if len(members) == 1:
        return members[0]
    return BlendedEmbedder(members, {m.model_id: float(w) for m, (_, _, w) in zip(members, runs, strict=True)})


def untrained_embedder(config: dict[str, Any], num_classes: int = 2) -> Embedder:
    """A randomly initialised embedder of `config` (the yardstick a trained one must beat)."""
    import keras

    from training.model import build_models

    keras.utils.set_random_seed(config["seed"])  # the same random network on every call
    _, model = build_models({**config, "weights": "none"}, num_classes, 0)
    info = {"model_id": f"{config['name']}-untrained", "backbone": config["backbone"],
            "image_size": config["image_size"], "embedding_size": config["embedding_size"], "fold": config["fold"],
            "epoch": 0, "eval_box_source": config["eval_box_source"], "config": config}
    return Embedder(model, info)


def pretrained_embedder(config: dict[str, Any]) -> Embedder:
    """The config's backbone with its pretrained weights and no training at all, average-pooled and
    L2-normalised (the yardstick fine-tuning must beat: what ImageNet alone knows)."""
    import keras

    from training.model import L2Normalize, build_backbone

    size = config["image_size"]
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pooling")(build_backbone(config)(image))
    model = keras.Model(image, L2Normalize(name="embedding", dtype="float32")(pooled), name="pretrained")
    info = {"model_id": f"{config['backbone'].lower()}-pretrained", "backbone": config["backbone"],
            "image_size": size, "embedding_size": int(model.output.shape[-1]), "fold": config["fold"],
            "epoch": 0, "eval_box_source": config["eval_box_source"], "config": config}
    return Embedder(model, info)


def heldout_map5(embedder: Embedder, data) -> dict[str, Any]:
    """MAP@5 on a data set's test split (needs test_truth.csv): gallery = every train image, queries = the test
    images, identification core ranking. `map5`: new_individual never first; `map5_tuned`: at the best
    new_individual threshold of a sweep over these queries (as the pixel baseline reports it)."""
    from services.core.errors import DataError
    from services.core.identification import build_gallery, map_at_5, rank_candidates
    from services.core.identification.ranking import insert_new_individual
    from services.core.identification.tuning import sweep_threshold

    if not data.truth:
        raise DataError(f"{data.root}: held-out MAP@5 needs test_truth.csv")
    source = embedder.eval_box_source
    train_images = [r.image for r in data.train]
    test_images = [r.image for r in data.truth]
    truths = [r.individual_id for r in data.truth]
    gallery_embeddings = embedder.embed_files([data.image_path(i) for i in train_images],
                                              [data.eval_box(i, source) for i in train_images])
    query_embeddings = embedder.embed_files([data.image_path(i) for i in test_images],
                                            [data.eval_box(i, source) for i in test_images])
    gallery = build_gallery(gallery_embeddings, [r.individual_id for r in data.train],
                            [r.species for r in data.train], train_images)
    candidates = rank_candidates(gallery, query_embeddings, 50)
    never_new = insert_new_individual(candidates, -np.inf)
    sweep = sweep_threshold(candidates, truths)
    return {"model_id": embedder.model_id, "queries": len(truths),
            "map5": round(map_at_5([[i for i, _ in p] for p in never_new], truths), 4),
            "map5_tuned": round(sweep.best_map5, 4), "tuned_threshold": sweep.best}

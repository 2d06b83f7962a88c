"""Distribution strategy: TPU (TPUClusterResolver) > several GPUs (MirroredStrategy) > the default strategy."""

from __future__ import annotations

import logging
from typing import Any, Mapping

import tensorflow as tf

from services.core.errors import ConfigError

log = logging.getLogger(__name__)


def _tpu_strategy():
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver()  # raises when no TPU is configured
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def choose_strategy(kind: str = "auto") -> tf.distribute.Strategy:
    """`auto`: a TPU when one resolves, MirroredStrategy over >1 GPU, else the default (one device) strategy."""
    if kind in ("auto", "tpu"):
        try:
            strategy = _tpu_strategy()
            log.info("strategy: TPUStrategy with %d replicas", strategy.num_replicas_in_sync)
            return strategy
        except Exception as exc:  # noqa: BLE001 - ValueError/NotFoundError etc. when there is no TPU
            if kind == "tpu":
                raise ConfigError(f"strategy tpu: no TPU found ({type(exc).__name__}: {exc})") from None
    gpus = tf.config.list_logical_devices("GPU")
    if kind == "mirrored" or (kind == "auto" and len(gpus) > 1):
        strategy = tf.distribute.MirroredStrategy()
        log.info("strategy: MirroredStrategy over %d GPU(s)", strategy.num_replicas_in_sync)
        return strategy
    strategy = tf.distribute.get_strategy()
    log.info("strategy: default (%s)", "1 GPU" if gpus else "CPU")
    return strategy


def global_batch_size(config: Mapping[str, Any], strategy: tf.distribute.Strategy) -> int:
    """config global_batch when > 0, else batch_per_replica x replicas."""
    if config["global_batch"] > 0:
        return int(config["global_batch"])
    return int(config["batch_per_replica"]) * int(strategy.num_replicas_in_sync)


def set_precision(config: Mapping[str, Any], strategy: tf.distribute.Strategy) -> str:
    """mixed_precision true: bfloat16 on TPU, float16 on GPU; float32 otherwise (and on CPU)."""
    import keras

    policy = "float32"
    if config["mixed_precision"]:
        if isinstance(strategy, tf.distribute.TPUStrategy):
            policy = "mixed_bfloat16"
        elif tf.config.list_logical_devices("GPU"):
            policy = "mixed_float16"
    keras.mixed_precision.set_global_policy(policy)
    return policy

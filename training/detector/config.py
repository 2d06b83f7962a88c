"""The detector's settings (light: no TensorFlow import, so `whaleid --help` stays fast)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class DetectorConfig:
    backbone: str = "EfficientNetLite0"
    weights: str = "imagenet"  # imagenet (the shipped .pth) | none | a local .pth
    image_size: int = 160
    head_channels: int = 48
    hidden: int = 256
    dropout: float = 0.2
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 2e-3
    scenes: int = 1200
    validation_scenes: int = 200
    seed: int = 0
    looks: str = "photo,grey,overcast"  # the held-out look (bench) is "textured"
    individuals: int = 24
    mirror: bool = True  # also train on mirrored scenes
    jitter: bool = False  # the mirrored copies with photometric jitter (measured: no gain on the held-out look)

    def to_dict(self) -> dict:
        return asdict(self)

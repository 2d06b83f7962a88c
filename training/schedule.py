"""Learning-rate schedule: linear warm-up lr_start -> lr_peak, then exponential decay lr_peak -> lr_end."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import keras
from keras import ops


class WarmupPeakDecay(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, lr_start: float, lr_peak: float, lr_end: float, warmup_steps: int, total_steps: int):
        self.lr_start, self.lr_peak, self.lr_end = float(lr_start), float(lr_peak), float(lr_end)
        self.warmup_steps = int(max(warmup_steps, 0))
        self.total_steps = int(max(total_steps, self.warmup_steps + 1))

    @classmethod
    def from_config_dict(cls, config: Mapping[str, Any], steps_per_epoch: int) -> "WarmupPeakDecay":
        return cls(config["lr_start"], config["lr_peak"], config["lr_end"],
                   config["warmup_epochs"] * steps_per_epoch, config["epochs"] * steps_per_epoch)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = float(max(self.warmup_steps, 1))
        warm = self.lr_start + (self.lr_peak - self.lr_start) * step / warmup
        decay_steps = float(self.total_steps - self.warmup_steps)
        progress = ops.clip((step - self.warmup_steps) / decay_steps, 0.0, 1.0)
        decayed = self.lr_peak * ops.exp(progress * math.log(self.lr_end / self.lr_peak))
        return ops.where(step < self.warmup_steps, warm, decayed)

    def value_at(self, step: int) -> float:
        return float(ops.convert_to_numpy(self(step)))

    def get_config(self):
        return {"lr_start": self.lr_start, "lr_peak": self.lr_peak, "lr_end": self.lr_end,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def plot_schedule(schedule: WarmupPeakDecay, steps_per_epoch: int, path: Path) -> Path:
    """Write the schedule over the whole run as a PNG (x: epoch, y: learning rate)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.arange(schedule.total_steps + 1)
    rates = ops.convert_to_numpy(schedule(steps))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps / max(steps_per_epoch, 1), rates)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_yscale("log")
    ax.set_title(f"warm-up {schedule.warmup_steps} steps -> peak {schedule.lr_peak:g} -> {schedule.lr_end:g}")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)

"""Plots of the identification core's results (matplotlib lives here, in training, not in the core)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from services.core.identification.tuning import ThresholdSweep


def plot_threshold_curve(sweep: ThresholdSweep, path: str | Path, title: str = "new_individual threshold",
                         extra: Mapping[str, ThresholdSweep] | None = None) -> Path:
    """MAP@5 against the threshold (and optional further curves, e.g. per fold) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, other in (extra or {}).items():
        ax.plot(other.thresholds, other.map5, lw=1, alpha=0.6, label=label)
    ax.plot(sweep.thresholds, sweep.map5, lw=2.2, color="black", label="all")
    ax.axvline(sweep.best, color="tab:red", ls="--", lw=1)
    ax.annotate(f"best {sweep.best:.2f}: MAP@5 {sweep.best_map5:.3f}", (sweep.best, sweep.best_map5),
                textcoords="offset points", xytext=(6, -14), color="tab:red")
    ax.set_xlabel("threshold (cosine similarity)")
    ax.set_ylabel("MAP@5")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

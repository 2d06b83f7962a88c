"""The demo's results: a table of identifications, the summary (MAP@5 live vs offline, latency) and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def percentile_ms(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 1) if values else None


def summarise(results: list[dict[str, Any]], truth: dict[str, str], offline: dict[str, list[str]],
              hostile: list[dict[str, Any]]) -> dict[str, Any]:
    """results: one dict per good upload {image, sighting_id, status, predictions, latency_s, ...}."""
    from services.core.identification import map_at_5

    identified = [r for r in results if r["status"] == "identified"]
    scored = [r for r in identified if r["image"] in truth]
    latencies = [r["latency_s"] for r in identified]
    live = map_at_5([r["predictions"] for r in scored], [truth[r["image"]] for r in scored]) if scored else None
    same = [r for r in scored if r["image"] in offline]
    off = map_at_5([offline[r["image"]] for r in same], [truth[r["image"]] for r in same]) if same else None
    agree = sum(r["predictions"] == offline.get(r["image"]) for r in identified)
    known = [r for r in scored if truth[r["image"]] != "new_individual"]
    new = [r for r in scored if truth[r["image"]] == "new_individual"]
    dead = [h for h in hostile if h["status"] == "failed"] + [r for r in results if r["status"] == "failed"]
    return {
        "uploaded": len(results) + len(hostile),
        "identified": len(identified),
        "dead_lettered": len(dead),
        "pending": sum(r["status"] == "pending" for r in results + hostile),
        "live_map5": None if live is None else round(live, 6),
        "offline_map5": None if off is None else round(off, 6),
        "same_top5_as_offline": f"{agree}/{len(identified)}",
        "known_top1_right": f"{sum(r['predictions'][0] == truth[r['image']] for r in known)}/{len(known)}",
        "known_best_candidate_right": f"{sum(_best_known(r) == truth[r['image']] for r in known)}/{len(known)}",
        "new_answered_new": f"{sum(r['predictions'][0] == 'new_individual' for r in new)}/{len(new)}",
        "p50_ms": percentile_ms(latencies, 50),
        "p95_ms": percentile_ms(latencies, 95),
        "max_ms": percentile_ms(latencies, 100),
        "dead_letter_reasons": {h["name"]: h.get("reason", "") for h in hostile},
    }


def _best_known(result: dict[str, Any]) -> str:
    return next((i for i in result["predictions"] if i != "new_individual"), "")


def table(results: list[dict[str, Any]], truth: dict[str, str], limit: int = 40) -> str:
    """One line per photo: truth, the first prediction, the best known individual and its score, whether the
    truth is in the top five, and the upload -> identification latency."""
    lines = [f"{'photo':<20} {'truth':<16} {'prediction':<16} {'best known':<16} {'score':>6} {'top5':<4} {'ms':>6}"]
    for r in results[:limit]:
        expected = truth.get(r["image"], "?")
        if r["status"] != "identified":
            lines.append(f"{r['image']:<20} {expected:<16} {r['status']}: {r.get('reason', '')}")
            continue
        known = [(i, s) for i, s in zip(r["predictions"], r["scores"], strict=True) if i != "new_individual"]
        best, score = known[0] if known else ("-", float("nan"))
        hit = "yes" if expected in r["predictions"][:5] else "no"
        lines.append(f"{r['image']:<20} {expected:<16} {r['predictions'][0]:<16} {best:<16} {score:>6.3f} {hit:<4} "
                     f"{r['latency_s'] * 1000:>6.0f}")
    if len(results) > limit:
        lines.append(f"... and {len(results) - limit} more")
    return "\n".join(lines)


def plot_latency(results: list[dict[str, Any]], path: Path) -> Path | None:
    latencies = [r["latency_s"] * 1000 for r in results if r["status"] == "identified"]
    if not latencies:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(latencies, bins=min(30, max(5, len(latencies) // 2)), color="#3874a8")
    for q, style in ((50, "--"), (95, ":")):
        value = float(np.percentile(latencies, q))
        ax.axvline(value, color="black", linestyle=style, label=f"p{q} {value:.0f} ms")
    ax.set_xlabel("upload -> identification in Redis (ms)")
    ax.set_ylabel("sightings")
    ax.set_title(f"whaleid demo: {len(latencies)} sightings")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

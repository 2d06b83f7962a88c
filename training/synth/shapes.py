"""Canonical outlines of the three body shapes, in a fixed 200 x 160 frame (y down, waterline at the bottom).

Each outline has one *marked edge* (the trailing edge of a dorsal fin or of a fluke, the ridge of a finless back)
where an individual's notches are cut. Everything an individual carries is placed in this frame, so markings stay
in the same place relative to the body whatever the pose of a photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.synth.species import Species

FRAME_W, FRAME_H = 200, 160
EDGE_POINTS = 200


@dataclass(frozen=True)
class Outline:
    plain: tuple[np.ndarray, ...]  # polygons drawn as they are (e.g. the strip of back under a fin)
    head: np.ndarray  # the notched polygon is head + notched(edge) + tail
    edge: np.ndarray  # (EDGE_POINTS, 2) the marked edge
    tail: np.ndarray
    inside: tuple[float, float]  # a point inside the notched polygon: notches point towards it
    notch_range: tuple[tuple[float, float], ...]  # where notches may sit, as fractions of the edge length
    marking_rows: tuple[int, int]  # patches and scars are centred between these canonical rows (above the sea)
    waterline_rows: tuple[float, float] = (FRAME_H, FRAME_H)  # per photo, the sea hides the frame below a row here
    side_cut: float = 0.0  # per photo, up to this many canonical columns are out of view on each side


def _bezier(p0, p1, p2, n: int) -> np.ndarray:
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def _back_strip(top: float) -> np.ndarray:
    x = np.linspace(-12.0, FRAME_W + 12.0, 60)
    y = FRAME_H - (FRAME_H - top) * np.sqrt(np.clip(1 - ((x - 100.0) / 112.0) ** 2, 0, 1))
    return np.concatenate([np.stack([x, y], 1), [[FRAME_W + 12.0, FRAME_H + 2.0], [-12.0, FRAME_H + 2.0]]])


def outline(species: Species, tip_offset: tuple[float, float] = (0.0, 0.0)) -> Outline:
    if species.shape == "dorsal_fin":
        tip = (species.fin_tip[0] + tip_offset[0], species.fin_tip[1] + tip_offset[1])
        lead_base, trail_base = (50.0, 142.0), (160.0, 142.0)
        leading = _bezier(lead_base, (76.0, 62.0), tip, 60)
        control = ((tip[0] + trail_base[0]) / 2 - species.fin_sweep, (tip[1] + trail_base[1]) / 2)
        trailing = _bezier(tip, control, trail_base, EDGE_POINTS)
        return Outline(
            plain=(_back_strip(top=124.0),), head=leading[:-1], edge=trailing, tail=np.empty((0, 2)),
            inside=(100.0, 110.0), notch_range=((0.12, 0.86),), marking_rows=(int(tip[1]) + 20, 132),
            waterline_rows=(128.0, 162.0), side_cut=45.0,
        )
    if species.shape == "fluke":
        left = _bezier((6.0, 40.0), (52.0, 26.0), (95.0, 50.0), EDGE_POINTS // 2)
        right = _bezier((105.0, 50.0), (148.0, 26.0), (194.0, 40.0), EDGE_POINTS // 2)
        trailing = np.concatenate([left, right])
        lower = np.concatenate([
            _bezier((194.0, 40.0), (165.0, 100.0), (114.0, 94.0), 40),
            [[111.0, FRAME_H + 2.0], [89.0, FRAME_H + 2.0]],
            _bezier((86.0, 94.0), (35.0, 100.0), (6.0, 40.0), 40),
        ])
        return Outline(
            plain=(), head=np.empty((0, 2)), edge=trailing, tail=lower, inside=(100.0, 75.0),
            notch_range=((0.05, 0.42), (0.58, 0.95)), marking_rows=(44, 90),
            waterline_rows=(92.0, 162.0), side_cut=0.0,
        )
    if species.shape == "back":
        x = np.linspace(-14.0, FRAME_W + 14.0, EDGE_POINTS + 40)
        y = FRAME_H + 8.0 - 100.0 * np.sqrt(np.clip(1 - ((x - 100.0) / 114.0) ** 2, 0, 1))
        arc = np.stack([x, y], 1)
        return Outline(
            plain=(), head=arc[:20], edge=arc[20:-20], tail=np.concatenate([arc[-20:], [[FRAME_W + 14.0, FRAME_H + 2.0],
                                                                                        [-14.0, FRAME_H + 2.0]]]),
            inside=(100.0, 140.0), notch_range=((0.1, 0.9),), marking_rows=(84, 138),
            waterline_rows=(118.0, 162.0), side_cut=0.0,
        )
    raise ValueError(f"unknown body shape {species.shape!r}")


def notched_edge(edge: np.ndarray, inside: tuple[float, float], notches) -> np.ndarray:
    """Cut notches (objects with position, half_width, depth, profile) into the edge, towards `inside`."""
    steps = np.linalg.norm(np.diff(edge, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    tangent = np.gradient(edge, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], 1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
    towards = np.asarray(inside) - edge
    normal *= np.sign(np.sum(normal * towards, axis=1, keepdims=True) + 1e-9)
    depth = np.zeros(len(edge))
    for notch in notches:
        offset = np.abs(arc - notch.position * arc[-1]) / notch.half_width
        inside_notch = offset < 1.0
        profile = 1.0 - offset if notch.profile == "v" else np.sqrt(np.clip(1.0 - offset**2, 0.0, 1.0))
        depth = np.where(inside_notch, np.maximum(depth, notch.depth * profile), depth)
    return edge + normal * depth[:, None]


def polygons(outline_: Outline, notches) -> list[np.ndarray]:
    """All polygons of the animal, the notched one last."""
    marked = np.concatenate([outline_.head, notched_edge(outline_.edge, outline_.inside, notches), outline_.tail])
    return [*outline_.plain, marked]

"""The viewpoint hint of a labelled photo: which side of the animal it shows (issue #21 item 7).

Left and right flanks (nyala) and left and right dorsal fins are different pictures of one animal. A catalogue may
say which side a photo shows: a `viewpoint` column in its CSV (train.csv of the Kaggle layout, or the `csv`
catalogue layout), else a `left` / `right` word in the file name (`14_leftphoto.jpg`, `fin-right-03.jpg`).

`parse_viewpoint(text)` normalises the free text of the column: `left` / `right` (also `l`, `r`, `left flank`,
`Right side`, ...), `other` for another named view (`front`, `top`, `fluke`), None (unknown) for an empty cell or
`unknown`/`na`/`-`. A value it cannot read (both sides named, digits, stray symbols) is unknown too, and
`ViewpointProblem` says why: callers warn with it and keep the photo, never fail. `viewpoint_from_name(name)`
finds the side in a file name's words; `viewpoint_hint(column, name)` is the one rule every loader applies.

How the gallery uses it: `references: viewpoint-means` (services.core.identification.gallery) keeps one mean per
(individual, viewpoint) instead of one per individual; the answer stays per individual (ranking takes each
individual's best row). Measured in docs/identification.md, section "Viewpoint".
"""

from __future__ import annotations

import re
from pathlib import PurePath

LEFT, RIGHT, OTHER = "left", "right", "other"
VIEWPOINTS = (LEFT, RIGHT, OTHER)
COLUMN = "viewpoint"
_UNKNOWN = {"", "unknown", "unk", "na", "n/a", "nan", "none", "null", "-", "?"}
_SIDES = {LEFT: {"left", "l", "lt", "lft", "port"}, RIGHT: {"right", "r", "rt", "rgt", "starboard"}}
_FILLERS = {"side", "flank", "fin", "dorsal", "view", "photo", "of", "the", "animal", "lateral"}
_TEXT = re.compile(r"^[a-z][a-z _/.-]{0,63}$")
_NAME_SIDE = re.compile(r"(?<![a-z])(left|right)(?:photo|side|flank|fin|view)?(?![a-z])(?![ _-]?whale)")  # not "right_whale"


class ViewpointProblem(ValueError):
    """A viewpoint value that cannot be read; the photo's viewpoint is then unknown."""


def parse_viewpoint(text: str | None) -> str | None:
    """`left`, `right`, `other` or None (unknown) from free text; raises ViewpointProblem for unreadable text."""
    value = (text or "").strip().lower()
    if value in _UNKNOWN:
        return None
    if not _TEXT.match(value):
        raise ViewpointProblem(f"viewpoint {text!r} is not a word (expected left, right or another view's name)")
    words = [w for w in re.split(r"[ _/.-]+", value) if w]
    sides = {side for side, names in _SIDES.items() if any(w in names for w in words)}
    if len(sides) > 1:
        raise ViewpointProblem(f"viewpoint {text!r} names both sides")
    if sides:
        side = sides.pop()
        rest = [w for w in words if w not in _SIDES[side] and w not in _FILLERS]
        if rest:
            raise ViewpointProblem(f"viewpoint {text!r}: {' '.join(rest)!r} besides {side!r}")
        return side
    return OTHER


def viewpoint_from_name(name: str | PurePath) -> str | None:
    """`left` / `right` when exactly one side is a word of the file name's stem (`14_leftphoto`, `fin-right-3`),
    else None."""
    stem = PurePath(str(name)).stem.lower()
    sides = {m.group(1) for m in _NAME_SIDE.finditer(stem)}
    return sides.pop() if len(sides) == 1 else None


def viewpoint_hint(column: str | None, name: str | PurePath) -> tuple[str | None, str | None]:
    """(viewpoint, problem): the column's value when it has one, else the file name's side; an unreadable
    column value gives (None, why) so that the caller warns and keeps the photo."""
    try:
        value = parse_viewpoint(column)
    except ViewpointProblem as exc:
        return None, str(exc)
    if value is not None:
        return value, None
    return viewpoint_from_name(name), None


def known_share(viewpoints) -> float:
    """The share of photos whose viewpoint is known (0 for none)."""
    values = list(viewpoints or [])
    return sum(v is not None for v in values) / len(values) if values else 0.0

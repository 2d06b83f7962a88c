"""Default ports of the chain's services: instance `i` of a stage serves its metrics (and, for the Faust stages,
its web page) at `base + offset + 10 * i`, so several instances and stages share one machine without clashing."""

from __future__ import annotations

STAGE_PORT_OFFSETS = {"gateway": 0, "bridge": 1, "worker": 2, "matcher": 3, "reconciler": 4, "webhooks": 5}
PORTS_PER_INSTANCE = 10  # instance i of a stage uses base + offset + 10 * i


def default_port(base: int, stage: str, index: int = 0) -> int:
    return base + STAGE_PORT_OFFSETS[stage] + PORTS_PER_INSTANCE * index

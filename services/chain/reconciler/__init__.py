"""The reconciler (`whaleid serve reconciler`): together with the idempotent stages it makes sure that every
accepted upload ends identified or dead-lettered with a reason, whatever was lost in between.

Each pass (every `reconciler_interval_s`; `Reconciler(settings).run_once()` runs one):
1. uploads.py       stuck uploads: re-driven (a new `sightings.uploaded` record) or dead-lettered
                    (`unresolved` after `reconciler_max_redrives`, `object_missing`);
2. announcements.py identifications stored but never announced: announced as the matcher does;
3. topic_audit.py   announced identifications missing from `identifications` / `new-individuals` (a reset
                    topic): produced again, same key and content.
State: state.py (Redis), Kafka clients: kafka_io.py, counts: findings.py, the process: service.py, kafka-python's
records of passes that could not audit a topic: kafka_trace.py.
"""

from services.chain.reconciler.findings import FOUND_KINDS, KINDS
from services.chain.reconciler.reconciler import LeaseHeld, Reconciler, ReconcilerTopics

__all__ = ["FOUND_KINDS", "KINDS", "LeaseHeld", "Reconciler", "ReconcilerTopics", "run_reconciler"]


def run_reconciler(settings, **kwargs) -> int:
    from services.chain.reconciler.service import run_reconciler as _run

    return _run(settings, **kwargs)

"""The two kinds of failure of a chain stage: permanent ones are dead-lettered, transient ones are retried."""

from __future__ import annotations

from services.core.errors import TransientFailure, WhaleIdError

__all__ = ["PermanentFailure", "TransientFailure", "Backoff"]


class PermanentFailure(WhaleIdError):
    """The event can never succeed (bad image, missing object, ...); `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Backoff:
    """Doubling pauses between retries, capped; `reset()` after a success."""

    def __init__(self, initial_s: float, max_s: float):
        self.initial_s = initial_s
        self.max_s = max_s
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.max_s, self.initial_s * (2 ** self.attempt))
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0

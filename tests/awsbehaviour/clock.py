"""An injected clock: sleeping advances it, nothing waits."""

from __future__ import annotations

import threading


class FakeClock:
    """Monotonic seconds that move only when someone sleeps (or the test advances them)."""

    def __init__(self, start: float = 1_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, float(seconds))
            self.slept.append(float(seconds))

    advance = sleep

    @property
    def total_slept(self) -> float:
        return sum(self.slept)

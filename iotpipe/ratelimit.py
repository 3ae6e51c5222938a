"""Pacing of AWS IoT control-plane calls: one token bucket per API, at AWS's documented rate.

AWS IoT Core throttles each control-plane API per account and region at a fixed number of
transactions per second (the "AWS IoT Core API throttling limits" table of
https://docs.aws.amazon.com/general/latest/gr/iot-core.html). A bulk import that fires calls as
fast as threads allow would be answered ``ThrottlingException`` and spend its time in botocore's
backoff; pacing each API to its own rate keeps every call under the limit, so the import runs at
the speed of its slowest API (CreateKeysAndCertificate, 10 per second) and no faster.

The buckets hang on the IoT client's botocore ``before-call`` event, first of its handlers, so
every IoT call a run makes is paced, whatever code makes it, before anything else sees it. The clock and sleep
are injectable: tests and the benchmark run the same buckets on a model clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

IOT_QUOTAS_SOURCE = "https://docs.aws.amazon.com/general/latest/gr/iot-core.html"

# Requests per second per account and region, as AWS documents them (IOT_QUOTAS_SOURCE); the
# ones a device registration, rotation or export calls. Adjustable by AWS on request: pass
# your own table to ``RateLimiter`` when yours were raised.
IOT_API_RATES: dict[str, float] = {
    "AttachPolicy": 15.0,
    "AttachThingPrincipal": 15.0,
    "CreateKeysAndCertificate": 10.0,
    "CreateThing": 15.0,
    "DeleteCertificate": 10.0,
    "DescribeCertificate": 10.0,
    "DescribeEndpoint": 10.0,
    "DescribeThing": 350.0,
    "DescribeThingType": 15.0,
    "DetachPolicy": 15.0,
    "DetachThingPrincipal": 15.0,
    "GetPolicy": 15.0,
    "ListAttachedPolicies": 15.0,
    "ListPrincipalThings": 10.0,
    "ListThingPrincipals": 10.0,
    "ListThings": 10.0,
    "UpdateCertificate": 10.0,
    "UpdateThing": 15.0,
}


@dataclass
class TokenBucket:
    """``rate`` calls a second, at most ``burst`` at once after a quiet spell; ``take`` waits
    for the caller's slot.

    A token bucket kept as its equivalent the generic cell rate algorithm (one "theoretical
    arrival time" instead of a token count): each caller is given the next free slot under the
    lock and sleeps until it outside the lock, so N threads waiting cost N sleeps, never a
    spin, and a caller whose clock reads earlier than the last one's is still never let in
    before the rate allows.
    """

    rate: float
    burst: float = 1.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    slots: list[float] | None = None  # when a list: the time each call was let in (tests, benchmark)
    waited: float = field(default=0.0, init=False)
    _tat: float | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def take(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        interval = 1.0 / self.rate
        with self._lock:
            now = self.clock()
            tat = now if self._tat is None else max(self._tat, now)
            slot = max(now, tat - (self.burst - 1) * interval)
            self._tat = max(tat, slot) + interval
            wait = slot - now
            self.waited += wait
            if self.slots is not None:
                self.slots.append(slot)
        if wait > 0:
            self.sleep(wait)
        return wait


class RateLimiter:
    """A token bucket per IoT API, attached to a botocore event system.

    ``burst`` is how many calls may go at once after a quiet spell; 1 keeps every second's
    calls at or under the documented rate. ``scale`` multiplies every rate (a raised quota).
    ``headroom`` keeps each bucket a little under the rate, so that clock jitter (and the
    rounding of 10 intervals of 0.1 s) never puts one call too many into AWS's second.
    """

    def __init__(
        self,
        rates: Mapping[str, float] | None = None,
        *,
        burst: float = 1.0,
        scale: float = 1.0,
        headroom: float = 0.98,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        trace: bool = False,
    ) -> None:
        self.buckets = {op: TokenBucket(rate * scale * headroom, burst, clock, sleep, slots=[] if trace else None)
                        for op, rate in (rates if rates is not None else IOT_API_RATES).items()}
        self.calls: dict[str, int] = dict.fromkeys(self.buckets, 0)
        self._count_lock = threading.Lock()

    def _on_call(self, model: Any, **_: Any) -> None:
        bucket = self.buckets.get(model.name) if model.service_model.service_name == "iot" else None
        if bucket is None:
            return
        with self._count_lock:
            self.calls[model.name] += 1
        bucket.take()

    def attach(self, events: Any) -> RateLimiter:
        """First among the ``before-call`` handlers: a handler that answers the call itself
        (a stub, a cache) must see it when it would really be sent, after the wait."""
        events.register_first("before-call.*.*", self._on_call, unique_id=f"iotpipe-ratelimit-{id(self)}")
        return self

    def detach(self, events: Any) -> None:
        events.unregister("before-call.*.*", unique_id=f"iotpipe-ratelimit-{id(self)}")

    @property
    def waited(self) -> float:
        return sum(b.waited for b in self.buckets.values())


def minimum_seconds(calls: Mapping[str, int], rates: Mapping[str, float] | None = None) -> float:
    """The least time AWS's limits allow for these calls: each API runs at most at its rate,
    APIs in parallel, so the slowest API decides."""
    table = rates if rates is not None else IOT_API_RATES
    return max((n / table[op] for op, n in calls.items() if op in table and n), default=0.0)

"""Scaled time for the CLI under benchmarks/converge.py (loaded by Python at start-up from
PYTHONPATH).

With ``IOTPIPE_BENCH_TIME_SCALE`` set to a factor other than 1, ``time.sleep(s)`` waits
``s * factor`` real seconds and ``time.monotonic`` runs ``1 / factor`` times as fast, so the
CLI's waits (boto3 waiters, retries, iotpipe's bounded loops, all bound to ``time.sleep`` and
``time.monotonic``) keep their durations on the benchmark's model clock while the benchmark
spends a fraction of them. The proxy's clock runs at the same rate, so AWS's transitional
windows and the CLI's polls agree. Unlike the tests' time shim, concurrent sleeps overlap
(they are real sleeps): a parallel run can be timed. iotpipe itself carries no hook.
"""

from __future__ import annotations

import os
import time

_SCALE = float(os.environ.get("IOTPIPE_BENCH_TIME_SCALE") or 1.0)


def _install(scale: float) -> None:
    real_sleep, real_monotonic = time.sleep, time.monotonic
    origin = real_monotonic()

    def sleep(seconds: float) -> None:
        real_sleep(max(0.0, float(seconds)) * scale)

    def monotonic() -> float:
        return origin + (real_monotonic() - origin) / scale

    time.sleep = sleep
    time.monotonic = monotonic


if _SCALE != 1.0:
    _install(_SCALE)

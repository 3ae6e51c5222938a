"""Virtual time for a subprocess under test (loaded by Python at start-up from PYTHONPATH).

With ``AWSBEHAVIOUR_CLOCK_URL`` set (by ``BehaviourProxy.subprocess_env``), ``time.sleep``
does not wait: it advances the proxy's clock by the same amount, and ``time.monotonic`` runs
ahead by everything this process slept. boto3 waiters, botocore's retry back-off and
iotpipe's own bounded loops (``AwsContext(sleep=time.sleep, clock=time.monotonic)`` defaults,
bound when iotpipe is imported, i.e. after this file ran) then see AWS's transitional states
last their real durations on that clock while the test spends none of them. iotpipe itself
carries no test hook. Without the variable, nothing changes.
"""

from __future__ import annotations

import os
import threading
import time

_URL = os.environ.get("AWSBEHAVIOUR_CLOCK_URL", "")


def _install(url: str) -> None:
    import json
    import urllib.parse

    target = urllib.parse.urlsplit(url)
    real_sleep, real_monotonic = time.sleep, time.monotonic
    lock = threading.Lock()
    slept = [0.0]

    def advance(seconds: float) -> None:
        import http.client  # lazily: most runs never sleep

        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
        try:
            conn.request("POST", target.path + "/sleep", body=json.dumps({"seconds": seconds}),
                         headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"awsbehaviour clock answered {answer.status}")
        finally:
            conn.close()

    def sleep(seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        if seconds:
            advance(seconds)
            with lock:
                slept[0] += seconds
        real_sleep(0)  # still yield to other threads, as a sleep would

    def monotonic() -> float:
        with lock:
            return real_monotonic() + slept[0]

    time.sleep = sleep
    time.monotonic = monotonic


if _URL:
    _install(_URL)

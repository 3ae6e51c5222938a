"""Run the iotpipe CLI and kill the process at its Nth mutating AWS call.

    python tests/killer.py N before|after|pause ARGS...

before: SIGKILL just before the Nth mutating request is sent;
after:  SIGKILL right after AWS answered it (the request reached the server, the client
        never used the answer);
pause:  sleep 5 s at the Nth mutating call, then go on (to hold the lock for a while).
Test-only: it patches AwsContext from outside, iotpipe itself has no fault hooks.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from iotpipe import aws as aws_module
from iotpipe.cli import main
from tests.support import is_mutating


def _install(n: int, when: str) -> None:
    original_init = aws_module.AwsContext.__init__
    seen = {"count": 0}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    lock = threading.Lock()  # the engine calls AWS from several threads

    def before(model, context=None, **_):
        if is_mutating(model.name):
            with lock:
                seen["count"] += 1
                nth = seen["count"] == n
            if nth:
                if when == "before":
                    die()
                elif when == "pause":
                    time.sleep(5)
                elif context is not None:
                    context["killer_nth"] = True  # other calls may be counted before it answers

    def after(model, context=None, **_):
        if when == "after" and (context or {}).get("killer_nth"):
            die()

    def patched(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.events.register("before-call.*.*", before, unique_id="killer-before")
        self.events.register("after-call.*.*", after, unique_id="killer-after")

    aws_module.AwsContext.__init__ = patched


if __name__ == "__main__":
    _install(int(sys.argv[1]), sys.argv[2])
    sys.exit(main(sys.argv[3:]))

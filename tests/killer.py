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
import time

from iotpipe import aws as aws_module
from iotpipe.cli import main
from tests.support import is_mutating


def _install(n: int, when: str) -> None:
    original_init = aws_module.AwsContext.__init__
    seen = {"count": 0}

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def before(model, **_):
        if is_mutating(model.name):
            seen["count"] += 1
            if seen["count"] == n:
                if when == "before":
                    die()
                elif when == "pause":
                    time.sleep(5)

    def after(model, **_):
        if when == "after" and is_mutating(model.name) and seen["count"] == n:
            die()

    def patched(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        self.events.register("before-call.*.*", before, unique_id="killer-before")
        self.events.register("after-call.*.*", after, unique_id="killer-after")

    aws_module.AwsContext.__init__ = patched


if __name__ == "__main__":
    _install(int(sys.argv[1]), sys.argv[2])
    sys.exit(main(sys.argv[3:]))

"""What a long call is waiting for, told to whoever listens while it waits.

The layers below the CLI never print: a lock wait, an IAM propagation retry, a waiter's
poll, an endpoint retry or a bucket being emptied is reported as a ``Progress`` to a
callback, which the engine forwards to `render` (lines in text mode, nothing on stdout
with ``--json``). With no listener, reporting costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Progress:
    kind: str  # lock-wait, lock-takeover, role-propagation, waiter, endpoint-retry, emptying, publishing
    message: str  # one sentence for the operator
    data: dict[str, Any] = field(default_factory=dict)  # the numbers behind it, for tests and JSON


ProgressSink = Callable[[Progress], None]


def ignore(_progress: Progress) -> None:
    """The listener when nobody listens."""


def aws_state(progress: Progress) -> str:
    """The short state a wait reports, for the resource's line in the live region: the
    waiter's "Table.TableStatus = CREATING", the transient a retry waits out, a count."""
    data = progress.data
    if progress.kind == "waiter" and data.get("state"):
        return f"waiting: {data['state']}"
    if progress.kind in ("role-propagation", "retry") and data.get("transient"):
        return f"retrying: {data['transient']} ({data.get('waited', 0):.0f} s)"
    if progress.kind == "endpoint-retry":
        return f"retrying {data.get('operation', '')}: {data.get('reason', '')}"
    if progress.kind == "emptying" and "deleted" in data:
        return f"emptying: {data['deleted']} object version(s) deleted"
    return progress.message

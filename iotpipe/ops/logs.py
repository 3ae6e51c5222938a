"""`iotpipe logs`: the handler's log events, from its JSON lines.

The handler writes one JSON object per line (handler/index.py): ``anomaly`` warnings, one
``batch_summary`` per invocation, errors (``dynamodb_write_failed``, ``archive_write_failed``
...). Lambda adds its own plain-text lines (START, END, REPORT), shown as they are when no
filter is asked for. A filter is sent to CloudWatch Logs as a JSON filter pattern, so that
only matching events cross the network, and checked again here on every event (an endpoint
that ignores the pattern, as the emulator does, still yields the right events).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from iotpipe.aws import is_not_found
from iotpipe.steps.base import StepContext

FILTERS: dict[str, tuple[str, Callable[[dict[str, Any]], bool]]] = {
    "anomaly": ('{ $.event = "anomaly" }', lambda e: e.get("event") == "anomaly"),
    "error": ('{ $.level = "ERROR" }', lambda e: e.get("level") in ("ERROR", "CRITICAL")),
    "summary": ('{ $.event = "batch_summary" }', lambda e: e.get("event") == "batch_summary"),
}
FOLLOW_POLL_S = 2.0


@dataclass
class LogEvent:
    timestamp: datetime
    stream: str
    event_id: str
    message: str
    fields: dict[str, Any] | None = None  # the parsed JSON line; None for a plain-text line
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        base = {"timestamp": self.timestamp.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z", "log_stream": self.stream}
        return {**base, **(self.fields if self.fields is not None else {"message": self.message})}


def read_logs(ctx: StepContext, *, start: datetime, end: datetime | None = None, kind: str | None = None,
              follow: bool = False, sleep: Callable[[float], None] | None = None,
              clock: Callable[[], datetime] = lambda: datetime.now(UTC),
              polls: int | None = None) -> Iterator[LogEvent]:
    """The handler's events from ``start`` (to ``end``), oldest first; with ``follow``, keep
    polling for new ones (``polls`` bounds that for tests) until interrupted."""
    sleep = sleep or ctx.aws.sleep
    group = ctx.names.lambda_log_group
    pattern, keep = FILTERS[kind] if kind else ("", lambda _e: True)
    logs = ctx.client("logs")
    seen: set[str] = set()
    since_ms = int(start.timestamp() * 1000)
    done = 0
    while True:
        kwargs: dict[str, Any] = {"logGroupName": group, "startTime": since_ms}
        if end is not None and not follow:
            kwargs["endTime"] = int(end.timestamp() * 1000)
        if pattern:
            kwargs["filterPattern"] = pattern
        newest = since_ms
        try:
            pages = list(logs.get_paginator("filter_log_events").paginate(**kwargs))
        except Exception as err:
            if not is_not_found(err):
                raise
            pages = []  # no log group yet: the function never ran
        for page in pages:
            for raw in sorted(page.get("events", []), key=lambda e: (e["timestamp"], e.get("eventId", ""))):
                event_id = raw.get("eventId") or f"{raw['timestamp']}:{raw.get('logStreamName')}:{raw['message']}"
                if event_id in seen:
                    continue
                seen.add(event_id)
                newest = max(newest, int(raw["timestamp"]))
                event = _parse(raw, event_id)
                if kind and (event.fields is None or not keep(event.fields)):
                    continue
                yield event
        done += 1
        if not follow or (polls is not None and done >= polls):
            return
        # Events of the same millisecond may still arrive: ask from the newest one seen again
        # (``seen`` drops the repeats) rather than after it.
        since_ms = newest
        sleep(FOLLOW_POLL_S)


def _parse(raw: dict[str, Any], event_id: str) -> LogEvent:
    message = raw["message"].rstrip("\n")
    fields = None
    text = message.strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
            fields = parsed if isinstance(parsed, dict) else None
        except ValueError:
            fields = None
    if fields is not None:
        fields = {k: v for k, v in fields.items() if k != "_aws"}  # the EMF directive is for CloudWatch
    when = datetime.fromtimestamp(int(raw["timestamp"]) / 1000, tz=UTC)
    return LogEvent(when, raw.get("logStreamName", ""), event_id, message, fields)

"""``--since`` / ``--until`` values: a duration back from now (``90s``, ``10m``, ``1h``, ``2d``)
or an ISO 8601 time (``2026-12-04T06:00:00Z``; without an offset it is UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from iotpipe.errors import ExitCode, IotpipeError


class UsageError(IotpipeError):
    """A bad option value found after click parsed it: exit 64 like click's own."""

    exit_code = ExitCode.USAGE

_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime, *, option: str = "--since") -> datetime:
    """The instant ``text`` names; raise UsageError (one line, exit 64) otherwise."""
    value = text.strip()
    if match := _DURATION.match(value):
        return now - timedelta(seconds=int(match[1]) * _UNITS[match[2]])
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected a duration such as 10m, 1h, 2d, or an ISO 8601 "
                         "time such as 2026-12-04T06:00:00Z") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def parse_window(since: str | None, until: str | None, now: datetime, *,
                 default_since: str) -> tuple[datetime, datetime]:
    start = parse_time(since or default_since, now)
    end = parse_time(until, now, option="--until") if until else now
    if end <= start:
        raise UsageError(f"--until ({end:%Y-%m-%dT%H:%M:%SZ}) is not after --since ({start:%Y-%m-%dT%H:%M:%SZ})")
    return start, end

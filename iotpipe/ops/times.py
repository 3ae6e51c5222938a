"""The times operators type for --since/--until: an age (``90m``, ``6h``, ``2d``) or an
ISO-8601 instant (``2026-12-01``, ``2026-12-01T03:00``, ``...+01:00``; no offset means UTC)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_AGE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_instant(text: str, now: datetime | None = None) -> datetime:
    """The instant ``text`` names; ValueError with what is accepted otherwise."""
    value = text.strip()
    if match := _AGE.match(value.lower()):
        return (now or datetime.now(UTC)) - timedelta(**{_UNIT[match[2]]: int(match[1])})
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is neither an age (e.g. 90m, 6h, 2d) nor an ISO-8601 time "
                         "(e.g. 2026-12-01T03:00Z)") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)

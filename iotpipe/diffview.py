"""Changes broken down to what a reviewer approves: one key, one statement, one line at a time.

A Change holds whole values (every tag, the whole policy). Shown whole, a one-tag edit reads
as two walls of JSON that differ somewhere. This module turns a Change into small lines:
per key for dicts (tags, environment variables, the thresholds inside one), a unified JSON
diff for policy documents, one line for everything else. It only computes; render prints.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Any, Literal

from iotpipe.steps.base import Change, UnknownYet, canonical

Op = Literal["set", "add", "remove", "change", "policy"]


@dataclass(frozen=True)
class DiffLine:
    op: Op  # set: a creation field; add/remove/change: one key or value; policy: a diff line
    path: str  # dotted field path, e.g. "environment.ANOMALY_THRESHOLDS.temperature.max"
    old: str = ""
    new: str = ""
    text: str = ""  # for op "policy": one line of the unified diff (with its +/-/space)


def show(value: Any) -> str:
    """A value as one line: strings bare, everything else as compact, key-sorted JSON."""
    if isinstance(value, UnknownYet):
        return str(value)
    if isinstance(value, str):
        return value or '""'
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _is_policy(value: Any) -> bool:
    return isinstance(value, dict) and "Statement" in value


def _plain(value: Any) -> Any:
    """JSON text parsed (an env variable holding the thresholds), policies canonicalised."""
    if isinstance(value, UnknownYet):
        return value
    return canonical(value)


def explain(change: Change) -> list[DiffLine]:
    """The lines that show ``change``: creation fields when ``current`` is None (a policy
    then on one line: there is nothing yet to compare it with)."""
    if change.current is None:
        return _creation(change.field, _plain(change.desired))
    return _compare(change.field, _plain(change.current), _plain(change.desired))


def _creation(path: str, value: Any) -> list[DiffLine]:
    if isinstance(value, dict) and value and not _is_policy(value):
        lines: list[DiffLine] = []
        for key, sub in value.items():
            lines.extend(_creation(f"{path}.{key}", sub))
        return lines
    return [DiffLine("set", path, new=show(value))]


def _compare(path: str, old: Any, new: Any) -> list[DiffLine]:
    if _is_policy(old) or _is_policy(new):
        return _policy_diff(path, old, new)
    if isinstance(old, dict) and isinstance(new, dict):
        lines: list[DiffLine] = []
        for key in sorted(set(old) | set(new)):
            sub = f"{path}.{key}"
            if key not in old:
                lines.extend(_creation(sub, new[key]) if isinstance(new[key], dict) else
                             [DiffLine("add", sub, new=show(new[key]))])
            elif key not in new:
                lines.append(DiffLine("remove", sub, old=show(old[key])))
            elif old[key] != new[key]:
                lines.extend(_compare(sub, old[key], new[key]))
        return lines
    if isinstance(new, dict) and old is None:
        return [DiffLine("add", f"{path}.{k}", new=show(v)) for k, v in new.items()] or \
            [DiffLine("change", path, old="null", new="{}")]
    return [DiffLine("change", path, old="null" if old is None else show(old), new=show(new))]


def _policy_diff(path: str, old: Any, new: Any) -> list[DiffLine]:
    """A unified diff of the two documents, canonical and indented, so that a changed action
    or condition is one -/+ pair inside its statement rather than a rewritten policy."""
    def lines_of(doc: Any) -> list[str]:
        return [] if doc is None else json.dumps(doc, indent=2, sort_keys=True, default=str).splitlines()

    diff = difflib.unified_diff(lines_of(old), lines_of(new), lineterm="", n=2)
    body = [line for line in diff if not line.startswith(("---", "+++"))]
    return [DiffLine("policy", path, text=line) for line in body]

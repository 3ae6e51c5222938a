"""Test helpers: call counting and fault injection through botocore's event system."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

MUTATING_PREFIXES = (
    "Create", "Put", "Update", "Tag", "Untag", "Attach", "Detach", "Start", "Stop", "Enable",
    "Disable", "Delete", "Schedule", "Cancel", "Add", "Remove", "Set", "Modify", "Replace",
    "Deprecate", "Publish", "Send", "Register", "Deregister", "Associate", "Disassociate",
    "Restore", "Increase", "Decrease", "Upload", "Purge", "Invoke",
)


def is_mutating(operation: str) -> bool:
    return operation.startswith(MUTATING_PREFIXES)


@dataclass
class CallLog:
    """Every operation a session's clients call, in order, as (service, operation)."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def attach(self, events: Any) -> CallLog:
        events.register("before-call.*.*", self._on_call, unique_id=f"calllog-{id(self)}")
        return self

    def _on_call(self, model: Any, **_: Any) -> None:
        self.calls.append((model.service_model.service_name, model.name))

    @property
    def mutating(self) -> list[tuple[str, str]]:
        return [c for c in self.calls if is_mutating(c[1])]

    def counts(self, mutating_only: bool = False) -> Counter:
        return Counter(f"{s}.{o}" for s, o in (self.mutating if mutating_only else self.calls))

    def clear(self) -> None:
        self.calls.clear()


def fail_with(code: str, message: str = "injected"):
    """A before-call hook that fails the call with an AWS error before it is sent."""
    from botocore.exceptions import ClientError

    def hook(model: Any, **_: Any) -> None:
        raise ClientError({"Error": {"Code": code, "Message": message}}, model.name)

    return hook

"""Test helpers: call counting and fault injection through botocore's event system."""

from __future__ import annotations

import threading
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


def by_id(result: Any, logical_id: str | None = None) -> Any:
    """A run's results keyed by logical id, or the one for ``logical_id``."""
    found = {r.logical_id: r for r in result.resources}
    return found if logical_id is None else found[logical_id]


def assert_repaired(engine: Any, log: CallLog, logical_id: str, field: str, expected_calls: dict) -> None:
    """status says drifted in ``field``, plan lists an update, up makes exactly ``expected_calls``
    (and nothing else), and afterwards everything is in sync with zero mutating calls."""
    status = by_id(engine.status(), logical_id)
    assert status.health == "drifted"
    assert field in {c.field for c in status.changes}
    planned = by_id(engine.plan(), logical_id)
    assert planned.action == "update" and field in {c.field for c in planned.changes}
    log.clear()
    assert by_id(engine.up(), logical_id).action == "update"
    assert log.counts(mutating_only=True) == expected_calls
    log.clear()
    engine.up()
    assert log.mutating == []
    assert engine.status().in_sync


class Interrupt(KeyboardInterrupt):
    """Stands for the process being stopped at this point."""


class FaultAt:
    """Make the Nth mutating call fail in the given mode (the Nth call of ``operation``,
    "service.Operation", when given).

    Thread-safe: the engine makes calls from several threads. The call that is the Nth is
    marked in its own request context, so "lost" fails the answer of that very call even
    when other calls were counted while it was in flight.
    """

    def __init__(self, n: int, mode: str, operation: str | None = None) -> None:
        self.n, self.mode, self.operation, self.seen, self.fired = n, mode, operation, 0, None
        self._lock = threading.Lock()

    def attach(self, events) -> None:
        events.register("before-call.*.*", self._before, unique_id="fault-before")
        events.register("after-call.*.*", self._after, unique_id="fault-after")

    def _counts(self, model: Any) -> bool:
        if self.operation is not None:
            return f"{model.service_model.service_name}.{model.name}" == self.operation
        return is_mutating(model.name)

    def _before(self, model: Any, context: Any = None, **_: Any) -> None:
        if not self._counts(model):
            return
        with self._lock:
            self.seen += 1
            if self.seen != self.n:
                return
            if self.mode == "lost":
                if context is not None:
                    context["iotpipe_test_fault"] = True
                return
            self.fired = f"{model.service_model.service_name}.{model.name}"
        if self.mode == "abort":
            raise Interrupt(self.fired)
        fail_with("InternalFailure")(model)

    def _after(self, model: Any, context: Any = None, **_: Any) -> None:
        if self.mode != "lost" or not self._counts(model) or not (context or {}).get("iotpipe_test_fault"):
            return
        with self._lock:
            if self.fired is not None:
                return
            self.fired = f"{model.service_model.service_name}.{model.name}"
        raise ConnectionResetError(f"injected: answer to {model.name} lost")

"""The behaviour engine: which rule applies to a call, and the botocore hooks that apply it.

One ``Behaviour`` holds the rules, the clock and what is armed. ``install`` hangs it on a
botocore session (in-process tests); the HTTP proxy (``proxy.py``) drives the same object
from the requests it forwards, so both see AWS through one table.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from tests.awsbehaviour.clock import FakeClock
from tests.awsbehaviour.model import Armed, Call, ErrorRule, GhostRule, Rule, StateRule

Peek = Callable[..., dict[str, Any]]


class Behaviour:
    """Rules, clock and armed windows; thread-safe (the proxy serves requests concurrently)."""

    def __init__(self, rules: Iterable[Rule], clock: FakeClock | None = None,
                 peek: Callable[[str], Any] | None = None) -> None:
        self.rules = list(rules)
        self.clock = clock or FakeClock()
        self.armed: list[Armed] = []
        self.fired: list[tuple[str, str, str]] = []  # (rule name, operation, code or value)
        self._peek_client = peek
        self._lock = threading.RLock()

    # -- what tests read back ------------------------------------------------------------------
    def fired_rules(self) -> set[str]:
        return {name for name, _op, _what in self.fired}

    # -- the three questions a call asks ---------------------------------------------------------
    def refusal(self, call: Call) -> tuple[ErrorRule, str] | None:
        """The error AWS answers this call with right now, if any."""
        with self._lock:
            for rule in self.rules:
                if not isinstance(rule, ErrorRule) or (rule.service, rule.operation) != (
                        call.service, call.operation):
                    continue
                arming = self._arming(rule, call)
                if arming is None:
                    continue
                if rule.when is not None and not rule.when(self._with_peek(call)):
                    continue
                if rule.times is not None:
                    if arming.fired >= rule.times:
                        continue
                    arming.fired += 1
                message = _fill(rule.message, {"region": call.region, **call.params})
                self.fired.append((rule.name, call.operation, rule.code))
                return rule, message
        return None

    def ghost(self, call: Call) -> dict[str, Any] | None:
        """A body for a read of something AWS still shows but moto already forgot."""
        with self._lock:
            for rule in self.rules:
                if not isinstance(rule, GhostRule) or rule.service != call.service or \
                        call.operation not in rule.reads:
                    continue
                arming = self._arming(rule, call)
                if arming is not None:
                    self.fired.append((rule.name, call.operation, "ghost"))
                    if rule.body_from_answer:
                        return rule.body(arming.key, arming.extra.get("answer") or {})
                    return rule.body(arming.key)
        return None

    def patch(self, call: Call, parsed: dict[str, Any]) -> None:
        """Rewrite a successful read's answer with the transitional states in force."""
        with self._lock:
            for rule in self.rules:
                if isinstance(rule, GhostRule) and rule.service == call.service and \
                        call.operation in rule.list_reads and rule.add_to_list is not None:
                    for arming in self._armings(rule, call, keyed=False):
                        rule.add_to_list(parsed, arming.key, arming.extra.get("answer") or {},
                                         call.params)
                        self.fired.append((rule.name, call.operation, "ghost"))
                    continue
                if not isinstance(rule, StateRule) or rule.service != call.service or \
                        call.operation not in rule.reads:
                    continue
                for arming in self._armings(rule, call):
                    value = rule.value(arming.extra.get("params", {})) if callable(rule.value) \
                        else rule.value
                    rule.patch(parsed, arming.key, value)
                    self.fired.append((rule.name, call.operation, str(value)))

    def succeeded(self, call: Call, answer: dict[str, Any]) -> None:
        """A call went through: arm every rule it triggers, for the resource it acted on."""
        with self._lock:
            for rule in self.rules:
                if getattr(rule, "after", None) != (call.service, call.operation):
                    continue
                key = rule.trigger_key(call.params, answer) if rule.trigger_key else None
                self.armed = [a for a in self.armed if not (a.rule is rule and a.key == key)]
                self.armed.append(Armed(rule, key, call.now, extra={
                    "params": dict(call.params), "answer": answer}))

    # -- plumbing ------------------------------------------------------------------------------
    def _armings(self, rule: Rule, call: Call, keyed: bool = True) -> list[Armed]:
        """The armings in force for this call (``keyed=False``: for any resource, as a list)."""
        now = call.now
        key = rule.call_key(call.params) if rule.call_key and keyed else None
        found = []
        for arming in self.armed:
            if arming.rule is not rule or now - arming.since >= rule.duration_s:
                continue
            if keyed and rule.call_key is not None and arming.key != key:
                continue
            found.append(arming)
        return found

    def _arming(self, rule: Rule, call: Call) -> Armed | None:
        if getattr(rule, "after", None) is None:
            # Always armed; one shared record counts its refusals.
            for arming in self.armed:
                if arming.rule is rule:
                    return arming
            arming = Armed(rule, None, call.now)
            self.armed.append(arming)
            return arming
        found = self._armings(rule, call)
        return found[0] if found else None

    def _with_peek(self, call: Call) -> Call:
        if call.peek is None and self._peek_client is not None:
            make = self._peek_client

            def peek(service: str, method: str, **params: Any) -> dict[str, Any]:
                return getattr(make(service), method)(**params)

            call.peek = peek
        return call


def _fill(message: str, params: dict[str, Any]) -> str:
    try:
        return message.format(**{k: v for k, v in params.items() if isinstance(v, (str, int))})
    except (KeyError, IndexError, ValueError):
        return message


class _Http:
    """The little of an HTTP response botocore reads from a before-call short-circuit."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}
        self.content = b""


def error_body(rule: ErrorRule, message: str) -> dict[str, Any]:
    return {"Error": {"Code": rule.code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": rule.http_status}}


def install(events: Any, behaviour: Behaviour) -> Behaviour:
    """Apply ``behaviour`` to every call made through ``events`` (a session's event emitter).

    A refusal or a ghost short-circuits the call in ``before-call`` (nothing reaches moto, as
    when AWS refuses); botocore then raises the modelled exception class, exactly as for a
    real answer. ``after-call`` rewrites transitional states and arms triggered rules.
    """

    def remember(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        # before-call sees the serialised request; the rules speak in API parameters.
        context["awsbehaviour.params"] = dict(params)

    def before(model: Any, context: dict[str, Any], **_: Any) -> Any:
        params = context.get("awsbehaviour.params", {})
        call = Call(model.service_model.service_name, model.name, params, behaviour.clock.now(),
                    region=str(context.get("client_region") or ""))
        context["awsbehaviour.call"] = call
        refused = behaviour.refusal(call)
        if refused is not None:
            rule, message = refused
            body = error_body(rule, message)
            if "awsQueryCompatible" in model.service_model.metadata:
                # What botocore's JSON parser makes of x-amzn-query-error: the class comes
                # from the shape name (AWS.SimpleQueueService.X -> X), the code stays.
                body["Error"]["QueryErrorCode"] = rule.code.rsplit(".", 1)[-1]
            return _Http(rule.http_status), body
        body = behaviour.ghost(call)
        if body is not None:
            context["awsbehaviour.ghost"] = True
            return _Http(200), body
        return None

    def after(http_response: Any, parsed: dict[str, Any], model: Any, context: dict[str, Any],
              **_: Any) -> None:
        call = context.get("awsbehaviour.call")
        if call is None or getattr(http_response, "status_code", 500) >= 300 or \
                context.get("awsbehaviour.ghost"):
            return
        call.now = behaviour.clock.now()
        behaviour.patch(call, parsed)
        behaviour.succeeded(call, parsed)

    uid = f"awsbehaviour-{id(behaviour)}"
    events.register("before-parameter-build.*.*", remember, unique_id=f"{uid}-params")
    events.register("before-call.*.*", before, unique_id=f"{uid}-before")
    events.register("after-call.*.*", after, unique_id=f"{uid}-after")
    return behaviour

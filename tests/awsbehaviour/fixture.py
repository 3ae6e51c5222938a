"""The in-process entry point: ``aws_world`` builds an AwsContext that sees AWS's behaviour."""

from __future__ import annotations

import types
from collections.abc import Iterable
from typing import Any

import boto3
import botocore.waiter

from tests.awsbehaviour.behaviour import Behaviour, install
from tests.awsbehaviour.clock import FakeClock
from tests.awsbehaviour.model import Rule


def fake_waiter_time(monkeypatch: Any, clock: FakeClock) -> None:
    """boto3 waiters sleep with ``time.sleep`` between polls: make them sleep on ``clock``.

    iotpipe waits through boto3 waiters; on AWS a table takes seconds to turn ACTIVE, and a
    test must not spend them. Only the waiter module's view of ``time`` changes.
    """
    shim = types.SimpleNamespace(sleep=clock.sleep, time=clock.now, monotonic=clock.now)
    monkeypatch.setattr(botocore.waiter, "time", shim)


def behaviour_for(rules: Iterable[Rule], clock: FakeClock, region: str) -> Behaviour:
    """A Behaviour whose quota checks read moto directly (a client without the rules)."""
    session = boto3.session.Session(region_name=region)
    clients: dict[str, Any] = {}

    def peek(service: str) -> Any:
        if service not in clients:
            clients[service] = session.client(service)
        return clients[service]

    return Behaviour(rules, clock, peek=peek)


def attach(aws: Any, rules: Iterable[Rule], clock: FakeClock) -> Behaviour:
    """Hang the rules on ``aws`` (an iotpipe AwsContext built with this clock)."""
    return install(aws.events, behaviour_for(rules, clock, aws.region))

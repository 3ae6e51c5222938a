"""`depends_on` is the truth the parallel engine schedules by: complete, and checked here.

A resource that reads another's ids (``ctx.refs``, ``ctx.ref``, ``ctx.recorded``) without
declaring it (directly or through what it declares) could run before that resource exists
and write a placeholder, or nothing, where an ARN belongs. Every command runs on moto with
each resource's methods attributed to it and every read of another resource's ids recorded;
a read outside the declared (transitive) dependencies fails the test.

The edges that encode existence on AWS rather than a read (the mapping needs the metrics
table, the topic rule the mapping, alarms what they watch) are checked by name in
``test_existence_edges``: no read would reveal them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

import pytest

from iotpipe.steps import all_resources
from iotpipe.steps.base import Current, Resource, Spec, StepContext


class Who(threading.local):
    """The resource whose method the current thread is in (the engine may run several at once)."""

    current: str | None = None


class TrackedRefs(dict):
    """``ctx.refs`` that records which resource read which logical id."""

    def __init__(self, who: Who, reads: set[tuple[str, str]]) -> None:
        super().__init__()
        self.who, self.reads = who, reads

    def _note(self, key: Any) -> None:
        if self.who.current is not None:
            self.reads.add((self.who.current, str(key)))

    def get(self, key: Any, default: Any = None) -> Any:
        self._note(key)
        return super().get(key, default)

    def __getitem__(self, key: Any) -> Any:
        self._note(key)
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self._note(key)
        return super().__contains__(key)


class Attributed:
    """A resource whose every method call is attributed to its logical id (``Who``)."""

    def __init__(self, res: Resource, who: Who) -> None:
        self._res, self._who = res, who

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._res, name)
        if not callable(value):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            before = self._who.current
            self._who.current = self._res.logical_id
            try:
                return value(*args, **kwargs)
            finally:
                self._who.current = before

        return call


def instrument(engine: Any) -> set[tuple[str, str]]:
    """Make ``engine`` record (reader, read logical id) for every id read; returns the set."""
    who, reads = Who(), set()
    engine.resources = [Attributed(r, who) for r in engine.resources]
    engine.ctx.refs = TrackedRefs(who, reads)
    recorded = engine.ctx.recorded

    def tracked_recorded(lid: str) -> dict[str, str]:
        if who.current is not None:
            reads.add((who.current, lid))
        return recorded(lid)

    engine.ctx.recorded = tracked_recorded
    return reads


def closure(resources: Iterable[Any]) -> dict[str, set[str]]:
    """Each logical id's declared dependencies, transitively."""
    direct = {r.logical_id: set(r.depends_on) for r in resources}
    out: dict[str, set[str]] = {}

    def walk(lid: str) -> set[str]:
        if lid not in out:
            out[lid] = set()
            for dep in direct.get(lid, ()):
                out[lid] |= {dep} | walk(dep)
        return out[lid]

    for lid in direct:
        walk(lid)
    return out


def undeclared(reads: set[tuple[str, str]], resources: Iterable[Any]) -> list[tuple[str, str]]:
    deps = closure(resources)
    return sorted((reader, read) for reader, read in reads if read != reader and read not in deps.get(reader, set()))


def test_every_dependency_names_a_resource_and_the_order_respects_them():
    resources = all_resources()
    ids = [r.logical_id for r in resources]
    assert len(ids) == len(set(ids))
    for pos, res in enumerate(resources):
        for dep in res.depends_on:
            assert dep in ids, (res.logical_id, dep)
            # The declared order is a topological order: parallelism 1 runs it as it stands.
            assert ids.index(dep) < pos, f"{res.logical_id} comes before {dep}, which it depends on"


def test_existence_edges():
    """Edges no id read reveals, kept from the sequential order's guarantees (see each declaration)."""
    deps = closure(all_resources())
    required = {
        "lambda.event_source_mapping": {"lambda.function", "lambda.role", "stream.sensor_stream",
                                        "storage.sensor_bucket", "storage.metrics_table"},
        "iot.topic_rule": {"iot.rule_role", "iot.log_group", "stream.sensor_stream",
                           "lambda.event_source_mapping"},
        "lambda.function": {"lambda.role", "lambda.log_group", "kms.key"},
        "iot.devices": {"iot.thing_type", "iot.device_policy"},
        "trail.trail": {"trail.bucket", "storage.access_log_bucket"},
        "storage.sensor_bucket": {"storage.access_log_bucket"},
        "monitor.rule_failures": {"iot.topic_rule", "monitor.topic"},
        "monitor.iterator_age": {"lambda.function"},
        "monitor.no_readings": {"stream.sensor_stream"},
        "monitor.dynamodb_throttles": {"storage.metrics_table"},
        "monitor.dashboard": {f"monitor.{a}" for a in (
            "iterator_age", "function_errors", "function_throttles", "failure_records", "rule_failures",
            "no_readings", "dynamodb_throttles", "rejected_rate", "anomaly_rate")},
    }
    for lid, needs in required.items():
        assert needs <= deps[lid], (lid, needs - deps[lid])
    # Everything encrypted with the key, or naming it, comes after it.
    assert all("kms.key" in deps[lid] for lid in deps if lid not in (
        "kms.key", "storage.access_log_bucket", "iot.thing_type", "iot.device_policy", "iot.devices"))


class _Reader(Resource):
    """Reads another resource's ARN in ``desired`` (the check must catch it undeclared)."""

    logical_id = "test.reader"
    resource_type = "Test::Reader"

    def __init__(self, depends_on: tuple[str, ...]) -> None:
        self.depends_on = depends_on

    def name(self, ctx: StepContext) -> str:
        return "reader"

    def desired(self, ctx: StepContext) -> Spec:
        return {"key": ctx.ref("kms.key", "arn")}

    def read(self, ctx: StepContext) -> Current | None:
        return None

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        return {"id": "reader"}

    def update(self, ctx, current, desired, changes):  # noqa: ANN001 - never called
        return None

    def delete(self, ctx, current):  # noqa: ANN001 - never called
        return None


@pytest.mark.parametrize(("declared", "expected"), [((), [("test.reader", "kms.key")]), (("kms.key",), [])])
def test_the_check_catches_an_undeclared_read(make, declared, expected):
    from iotpipe.steps import kms

    engine = make(resources=[*kms.RESOURCES, _Reader(declared)])
    reads = instrument(engine)
    engine.plan()
    assert ("test.reader", "kms.key") in reads
    assert undeclared(reads, engine.resources) == expected


def test_every_read_of_another_resource_is_declared(make):
    """Every command, on a new env, a converged one, and while it is taken down."""
    engine = make()
    reads = instrument(engine)
    engine.plan()
    engine.up()
    engine.up()
    engine.status()
    engine.plan()
    engine.outputs()
    engine.destroy_plan()
    engine.destroy()
    readers = {reader for reader, read in reads if read != reader}
    # The check saw the reads it is about (not an instrument that records nothing).
    assert {"kms.alias", "lambda.function", "iot.topic_rule", "monitor.failure_records"} <= readers
    assert undeclared(reads, engine.resources) == []


def instrument_reads(engine: Any) -> set[tuple[str, str]]:
    """Like ``instrument``, but only what ``read`` itself looks up is attributed."""
    who, reads = Who(), set()
    for res in engine.resources:
        read = res.read

        def attributed(ctx: Any, _read: Any = read, _lid: str = res.logical_id) -> Any:
            who.current = _lid
            try:
                return _read(ctx)
            finally:
                who.current = None

        res.read = attributed
    engine.ctx.refs = TrackedRefs(who, reads)
    return reads


def test_every_id_a_read_uses_is_in_its_read_needs(make, tmp_path):
    """destroy's survey and the converged commands' prefetch schedule by ``read_needs``: a
    read that uses another's ids without naming it there could run first and judge with a
    placeholder (the alias would ask for the key's tags again; a key id would not map to its
    ARN)."""
    engine = make()
    reads = instrument_reads(engine)
    engine.plan()
    engine.up()
    engine.status()
    engine.destroy_plan()
    lost = make(state_root=tmp_path / "lost")  # no recorded ids: reads fall back on others'
    lost_reads = instrument_reads(lost)
    lost.status()
    lost.destroy_plan()
    engine.destroy()
    reads |= lost_reads
    readers = {reader for reader, read in reads if read != reader}
    assert {"kms.alias", "stream.sensor_stream", "lambda.function"} <= readers
    for res in engine.resources:
        assert set(res.read_needs) <= set(res.depends_on), res.logical_id
    needs = {r.logical_id: set(r.read_needs) for r in engine.resources}
    unnamed = sorted((reader, read) for reader, read in reads if read != reader and read not in needs[reader])
    assert unnamed == [], unnamed

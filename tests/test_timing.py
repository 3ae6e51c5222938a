"""Waits that fit AWS: each wait ends soon after AWS is ready, and the slow work starts first.

The behaviour layer's rules hold a table CREATING, a stream CREATING or a role unusable for a
set time on a FakeClock; these tests time, on that clock, how long after AWS turned ready the
code under test noticed. The windows are set to odd lengths (21 s, 9 s) so that no poll
interval lands on the window's end by luck.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import pytest

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine, time_ahead
from iotpipe.graph import run_graph
from iotpipe.steps import all_resources, kms, lambda_, storage, stream
from iotpipe.timing import (
    BACKUPS_POLL_S,
    KEY_POLL_S,
    MAX_POLL_S,
    MIN_POLL_S,
    PROPAGATION_POLL_S,
    STREAM_ACTIVE,
    TABLE_ACTIVE,
    TABLE_UPDATED,
    Expected,
)
from tests.awsbehaviour import FakeClock, rules_named
from tests.awsbehaviour.fixture import attach, fake_waiter_time

REGION = "us-east-1"


@pytest.fixture
def timed(tmp_path: Path, moto, monkeypatch):
    """timed({rule name: window seconds}, resources) -> (engine, calls, behaviour) on one FakeClock.

    ``calls`` collects (operation, failed, clock time) for every call the engine makes.
    """
    monkeypatch.chdir(tmp_path)
    clock = FakeClock(start=0.0)
    fake_waiter_time(monkeypatch, clock)

    def build(windows: dict[str, float], resources):
        rules = [dataclasses.replace(rule, duration_s=windows[rule.name]) for rule in rules_named(*windows)]
        config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
        aws = AwsContext(config.region, sleep=clock.sleep, clock=clock.now)
        behaviour = attach(aws, rules, clock)
        calls: list[tuple[str, bool, float]] = []
        aws.events.register("after-call.*", lambda model, parsed, **_: calls.append(
            (model.name, "Error" in parsed, clock.now())))
        engine = make_engine(config, aws, tmp_path / ".iotpipe", resources=resources)
        engine.parallelism = 1
        return engine, calls, behaviour

    return build


def _first(calls, operation: str, *, failed: bool = False) -> float:
    return next(t for op, err, t in calls if op == operation and err == failed)


def _last(calls, operation: str) -> float:
    return [t for op, _err, t in calls if op == operation][-1]


@pytest.mark.parametrize(("rule", "created_by", "read", "expected"), [
    ("dynamodb.table-creating", "CreateTable", "DescribeTable", TABLE_ACTIVE),
    ("kinesis.stream-creating", "CreateStream", "DescribeStreamSummary", STREAM_ACTIVE),
])
def test_a_wait_ends_within_a_tenth_of_the_transition_it_waits_for(timed, rule, created_by, read, expected):
    """botocore's own waiter delays (20 s for a table, 10 s for a stream) overshoot a 21-second
    CREATING by up to the whole delay; iotpipe polls at a tenth of what it expects."""
    window = 21.0
    engine, calls, behaviour = timed({rule: window}, kms.RESOURCES + storage.RESOURCES + stream.RESOURCES)
    engine.up()
    assert rule in behaviour.fired_rules()
    created = _first(calls, created_by)
    # the last read of the wait (the table/stream is used right after it) saw it ready
    ready_seen = max(t for op, err, t in calls if op == read and t <= created + window + MAX_POLL_S + 1)
    overshoot = ready_seen - (created + window)
    assert 0 <= overshoot <= expected.seconds / 10


def test_destroy_deletes_the_table_within_a_tenth_of_its_update_after_lifting_protection(timed):
    """Lifting deletion protection leaves the table UPDATING (10 s typically) and DeleteTable
    waits for ACTIVE: polled at CREATING's 2 s, a 10.5 s UPDATING is seen 1.5 s late."""
    window = 10.5
    engine, calls, behaviour = timed({"dynamodb.table-updating": window}, kms.RESOURCES + storage.RESOURCES)
    engine.up()
    engine.destroy()
    assert "dynamodb.table-updating" in behaviour.fired_rules()
    lifted = _first(calls, "UpdateTable")
    deleted = _first(calls, "DeleteTable")
    assert window <= deleted - lifted <= window + TABLE_UPDATED.poll_s


def test_a_new_role_is_used_within_one_retry_of_turning_usable(timed):
    """A doubling backoff (1, 2, 4, 8 s) tries at 0, 1, 3, 7, 15 s: a role usable after 9 s is
    used after 15. The propagation retry asks at an even short cadence instead."""
    window = 9.0
    engine, calls, behaviour = timed({"lambda.create-function-role-not-assumable": window},
                                     kms.RESOURCES + stream.RESOURCES + lambda_.RESOURCES)
    engine.up()
    assert "lambda.create-function-role-not-assumable" in behaviour.fired_rules()
    role_made = _first(calls, "CreateRole")
    refused = [t for op, err, t in calls if op == "CreateFunction" and err]
    used = _first(calls, "CreateFunction", failed=False)
    assert len(refused) >= 2
    assert window <= used - role_made <= window + PROPAGATION_POLL_S


@pytest.mark.parametrize(("rule", "window", "caused_by", "refused", "cadence"), [
    ("kms.EnableKeyRotation-key-not-found-after-create", 5.5, "CreateKey", "EnableKeyRotation", KEY_POLL_S),
    ("dynamodb.backups-being-enabled", 61.0, "CreateTable", "UpdateContinuousBackups", BACKUPS_POLL_S),
])
def test_a_not_yet_answer_is_asked_again_at_an_even_cadence(timed, rule, window, caused_by, refused, cadence):
    """KMS's new key and DynamoDB's backups on a new table: both end a known while after the
    call; a doubling backoff (1, 2, 4, 8, 10 s) would try again up to 10 s after that."""
    engine, calls, behaviour = timed({rule: window}, kms.RESOURCES + storage.RESOURCES)
    engine.up()
    assert rule in behaviour.fired_rules()
    started = _first(calls, caused_by)
    done = _first(calls, refused, failed=False)
    assert len([t for op, err, t in calls if op == refused and err]) >= 2
    assert window <= done - started <= window + cadence


def test_poll_intervals_are_a_tenth_of_the_expected_time_within_bounds():
    assert Expected(20.0, "s").poll_s == 2.0
    assert Expected(3.0, "s").poll_s == MIN_POLL_S
    assert Expected(600.0, "s").poll_s == MAX_POLL_S


# ---------------------------------------------------------------------------------------------
# Scheduling: the longest AWS time ahead starts first
# ---------------------------------------------------------------------------------------------
def test_the_pipeline_starts_the_role_and_the_stream_before_what_nothing_waits_for():
    resources = all_resources()
    ahead = time_ahead({r.logical_id: list(r.depends_on) for r in resources},
                       {r.logical_id: r.expected_s for r in resources})
    # The Lambda role's propagation gates the function, the mapping and the topic rule; the
    # stream's CREATING and encryption gate the mapping and the rule.
    for slow in ("lambda.role", "stream.sensor_stream", "storage.metrics_table"):
        for quick in ("iot.log_group", "monitor.topic", "trail.bucket", "iot.rule_role", "kms.alias"):
            assert ahead[slow] > ahead[quick], (slow, quick)
    assert ahead["kms.key"] == max(ahead.values())  # everything encrypted waits for it


def _start_order(keys, depends_on, priority, parallelism):
    started: list[str] = []
    lock = threading.Lock()

    def work(key: str) -> str:
        with lock:
            started.append(key)
        return key

    run_graph(keys, depends_on, work, parallelism=parallelism, priority=priority)
    return started


def test_with_more_ready_than_workers_the_highest_priority_starts_first():
    """Two workers, four ready items: the first two submitted are the two with the most time
    ahead (which of them starts its thread first is the threads' business)."""
    keys = ["log", "alias", "topic", "role"]
    started = _start_order(keys, {}, {"role": 40.0, "topic": 3.0}, parallelism=2)
    assert set(started[:2]) == {"role", "topic"}
    assert set(started) == set(keys)


def test_one_worker_keeps_the_declared_order_whatever_the_priority():
    """The interruption matrix counts "the Nth call": one worker must mean one fixed order."""
    keys = ["log", "alias", "topic", "role"]
    assert _start_order(keys, {}, {"role": 40.0}, parallelism=1) == keys


def test_destroy_lifts_the_tables_protection_before_its_first_delete(timed):
    """UpdateTable (protection off) leaves the table UPDATING for a while: started before the
    mapping and the alarms go, that wait overlaps their deletes instead of following them."""
    engine, calls, behaviour = timed({"dynamodb.table-updating": 10.0},
                                     kms.RESOURCES + storage.RESOURCES + stream.RESOURCES + lambda_.RESOURCES)
    engine.up()
    calls.clear()
    engine.destroy()
    ops = [op for op, err, _t in calls if not err]
    lifted = ops.index("UpdateTable")
    first_delete = min(n for n, op in enumerate(ops) if op.startswith("Delete"))
    assert lifted < first_delete
    assert "DeleteTable" in ops
    assert "dynamodb.table-updating" in behaviour.fired_rules()

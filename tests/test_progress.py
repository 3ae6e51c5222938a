"""Every wait says what it waits for: events from the engine's layers, lines from render."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from typing import Any

import pytest

from iotpipe.engine import Event
from iotpipe.errors import LockHeldError
from iotpipe.progress import Progress
from iotpipe.render import Renderer
from iotpipe.state import StateStore
from iotpipe.steps import kms, lambda_, storage
from tests.support import fail_with


def _progress(events: list[Event], kind: str | None = None) -> list[Progress]:
    return [e.progress for e in events if e.kind == "progress" and e.progress
            and (kind is None or e.progress.kind == kind)]


class FakeTime:
    """An injected clock whose sleep advances it: waits take no real time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


# -- the lock --------------------------------------------------------------------------------------
def _held_by(store: StateStore, *, host: str, pid: int) -> None:
    store.lock_path.parent.mkdir(parents=True, exist_ok=True)
    store.lock_path.write_text(json.dumps({"ID": "x", "Operation": "up", "Host": host, "Pid": pid,
                                           "Who": "ops@" + host, "Created": "2026-01-01T00:00:00Z"}))


def test_lock_wait_says_who_holds_it_and_how_long_of_how_long(tmp_path):
    store = StateStore(tmp_path, "dev", "us-east-1")
    _held_by(store, host="elsewhere", pid=4242)
    seen: list[Progress] = []
    store.on_progress = seen.append
    t = FakeTime()
    with pytest.raises(LockHeldError), store.lock("destroy", timeout=12, sleep=t.sleep, clock=t.clock):
        pass
    waits = [p for p in seen if p.kind == "lock-wait"]
    assert waits[0].message.startswith("waiting for the lock of env 'dev' held by pid 4242 on elsewhere")
    assert waits[0].message.endswith("0 s of 12 s")
    assert [round(p.data["waited"]) for p in waits] == [0, 5, 10]  # said at once, then every 5 s
    assert "10 s of 12 s" in waits[-1].message


def test_stale_lock_taken_over_is_said(tmp_path):
    store = StateStore(tmp_path, "dev", "us-east-1")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _held_by(store, host=socket.gethostname(), pid=gone.pid)
    seen: list[Progress] = []
    store.on_progress = seen.append
    with store.lock("up"):
        pass
    (takeover,) = seen
    assert takeover.kind == "lock-takeover"
    assert f"pid {gone.pid}" in takeover.message and "gone" in takeover.message


def test_engine_forwards_lock_waits_as_events(make, tmp_path):
    engine = make(resources=())
    _held_by(engine.store, host="elsewhere", pid=7)
    events: list[Event] = []
    engine.on_event = events.append
    t = FakeTime()
    engine.ctx.aws.sleep, engine.ctx.aws.clock = t.sleep, t.clock
    engine.lock_timeout = 7
    with pytest.raises(LockHeldError):
        engine.up()
    waits = _progress(events, "lock-wait")
    assert [w.message.rsplit(": ", 1)[1] for w in waits] == ["0 s of 7 s", "5 s of 7 s"]
    assert "pid 7 on elsewhere" in waits[0].message
    assert {e.verb for e in events if e.kind == "progress"} == {"up"}
    assert t.now == 7  # the engine's injected clock and sleep, no real wait


# -- waiters ---------------------------------------------------------------------------------------
def test_waiter_reports_the_state_aws_reports_each_attempt(make):
    """The table_exists waiter's own acceptor (Table.TableStatus == ACTIVE) decides; each poll
    that is not there yet is said with the status DynamoDB answered."""
    engine = make(resources=kms.RESOURCES + storage.RESOURCES)
    t = FakeTime()
    engine.ctx.aws.sleep, engine.ctx.aws.clock = t.sleep, t.clock
    events: list[Event] = []
    engine.on_event = events.append
    answers = iter(["CREATING", "CREATING"])

    def creating(parsed: dict[str, Any], **_: Any) -> None:
        if "Table" in parsed and (status := next(answers, None)):
            parsed["Table"]["TableStatus"] = status

    engine.ctx.client("dynamodb").meta.events.register("after-call.dynamodb.DescribeTable", creating)
    engine.up()
    waits = _progress(events, "waiter")
    assert [p.data["state"] for p in waits] == ["Table.TableStatus = CREATING"] * 2
    assert f"waiting for sensor-metrics-dev: AWS reports Table.TableStatus = CREATING (attempt 1 of {storage.TABLE_WAIT['MaxAttempts']}" \
        in waits[0].message
    assert t.slept == [storage.TABLE_WAIT["Delay"]] * 2  # the injected sleep, the waiter's delay
    assert {e.logical_id for e in events if e.kind == "progress"} == {"storage.metrics_table"}


def test_waiter_gives_up_after_its_max_attempts(make):
    from iotpipe.errors import AwsCallError

    engine = make(resources=kms.RESOURCES + storage.RESOURCES)
    t = FakeTime()
    engine.ctx.aws.sleep, engine.ctx.aws.clock = t.sleep, t.clock
    engine.ctx.client("dynamodb").meta.events.register(
        "after-call.dynamodb.DescribeTable",
        lambda parsed, **_: parsed.get("Table", {}).__setitem__("TableStatus", "UPDATING"))
    gave_up = f"still Table.TableStatus = UPDATING after {storage.TABLE_WAIT['MaxAttempts']} attempts"
    with pytest.raises(AwsCallError, match=gave_up):
        engine.up()
    assert len(t.slept) == storage.TABLE_WAIT['MaxAttempts'] - 1


# -- IAM propagation -------------------------------------------------------------------------------
def test_role_propagation_retries_are_said(make):
    engine = make(resources=kms.RESOURCES + lambda_.RESOURCES)
    engine.ctx.client("kinesis").create_stream(StreamName="iot-sensor-stream-dev", ShardCount=1)
    t = FakeTime()
    engine.ctx.aws.sleep, engine.ctx.aws.clock = t.sleep, t.clock
    events: list[Event] = []
    engine.on_event = events.append
    calls = []
    refusal = fail_with("InvalidParameterValueException",
                        "The role defined for the function cannot be assumed by Lambda.")

    def twice(**kwargs: Any) -> None:
        calls.append(1)
        if len(calls) <= 2:
            refusal(**kwargs)

    engine.ctx.client("lambda").meta.events.register("before-call.lambda.CreateFunction", twice)
    engine.up()
    retries = _progress(events, "role-propagation")
    assert len(retries) == 2 and t.slept[:2] == [2.0, 2.0]
    assert retries[0].message.startswith("role not assumable yet (CreateFunction: The role defined")
    assert "retrying in 2 s (0 s of 120 s)" in retries[0].message
    assert "retrying in 2 s (2 s of 120 s)" in retries[1].message


# -- bucket emptying -------------------------------------------------------------------------------
def test_emptying_a_bucket_reports_counts(make, monkeypatch):
    from iotpipe.steps import s3util

    monkeypatch.setattr(s3util, "DELETE_BATCH", 2)
    engine = make(resources=kms.RESOURCES + storage.RESOURCES)
    engine.up()
    s3 = engine.ctx.client("s3")
    for i in range(5):
        s3.put_object(Bucket=engine.ctx.names.sensor_bucket, Key=f"raw/{i}.json", Body=b"{}")
    events: list[Event] = []
    engine.on_event = events.append
    engine.destroy()
    counts = [p.data["deleted"] for p in _progress(events, "emptying")]
    assert counts == [2, 4, 5]
    assert _progress(events, "emptying")[-1].message == (
        f"emptying bucket {engine.ctx.names.sensor_bucket}: 5 object version(s) deleted so far")


# -- demo publishing -------------------------------------------------------------------------------
def test_publishing_reports_counts_about_every_tenth(make):
    from iotpipe.local.simulator import make_readings, publish
    from iotpipe.steps import stream

    engine = make(resources=kms.RESOURCES + stream.RESOURCES)
    engine.up()
    events: list[Event] = []
    engine.on_event = events.append
    assert publish(engine.ctx, make_readings(5000)) == 5000
    sent = [p.data["sent"] for p in _progress(events, "publishing")]
    assert sent == list(range(500, 5001, 500))
    assert _progress(events, "publishing")[-1].message == "published 5000 of 5000 records to iot-sensor-stream-dev"


# -- render ----------------------------------------------------------------------------------------
def test_render_prints_waits_on_stderr_in_text_and_nothing_in_json(capsys):
    event = Event("progress", "storage.metrics_table", verb="up",
                  progress=Progress("waiter", "waiting for sensor-metrics-dev: AWS reports CREATING"))
    Renderer().progress(event)
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == \
        "… storage.metrics_table: waiting for sensor-metrics-dev: AWS reports CREATING"  # whose wait it is
    Renderer(json_mode=True).progress(event)
    assert capsys.readouterr() == ("", "")


def test_publishing_with_its_own_progress_is_not_reported_twice(make):
    from iotpipe.local.simulator import make_readings, publish
    from iotpipe.steps import stream

    engine = make(resources=kms.RESOURCES + stream.RESOURCES)
    engine.up()
    events: list[Event] = []
    engine.on_event = events.append
    counts: list[int] = []
    assert publish(engine.ctx, make_readings(1200), on_progress=counts.append) == 1200
    assert counts == [500, 1000, 1200]
    assert _progress(events, "publishing") == []

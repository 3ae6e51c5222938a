"""destroy does not wait out a DELETING table or stream: nothing deleted after them needs them
gone, a second destroy reads them as absent, and an `up` right after waits for the names.

moto forgets a deleted table or stream at once; the behaviour layer's ghost rules show them
DELETING for a while, as AWS does, on a fake clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from tests.awsbehaviour import FakeClock, rules_named
from tests.awsbehaviour.fixture import attach, fake_waiter_time
from tests.support import CallLog, by_id

REGION = "us-east-1"
GHOSTS = ("dynamodb.table-deleting", "kinesis.stream-deleting")


@pytest.fixture
def world(tmp_path: Path, moto, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    fake_waiter_time(monkeypatch, clock)
    config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
    aws = AwsContext(config.region, sleep=clock.sleep, clock=clock.now)
    log = CallLog().attach(aws.events)
    behaviour = attach(aws, rules_named(*GHOSTS), clock)
    return make_engine(config, aws, tmp_path / ".iotpipe"), behaviour, log


def _after(log: CallLog, operation: tuple[str, str]) -> list[tuple[str, str]]:
    return log.calls[log.calls.index(operation) + 1:]


def test_destroy_leaves_deleting_table_and_stream_to_aws_and_up_waits_for_the_names(world):
    engine, behaviour, log = world
    engine.up()
    log.clear()
    result = engine.destroy()
    assert {by_id(result, lid).action for lid in ("storage.metrics_table", "stream.sensor_stream")} == {"delete"}
    # Not a single poll after each delete was accepted.
    assert ("dynamodb", "DescribeTable") not in _after(log, ("dynamodb", "DeleteTable"))
    assert ("kinesis", "DescribeStreamSummary") not in _after(log, ("kinesis", "DeleteStream"))
    assert ("kinesis", "DescribeStream") not in _after(log, ("kinesis", "DeleteStream"))

    # Still DELETING at AWS: a second destroy finds nothing of them to do.
    again = engine.destroy()
    assert {by_id(again, lid).action for lid in ("storage.metrics_table", "stream.sensor_stream")} == {"absent"}
    assert behaviour.fired_rules() == set(GHOSTS)

    # An `up` at once waits for the names to free up, then makes both anew.
    up = engine.up()
    assert {by_id(up, lid).action for lid in ("storage.metrics_table", "stream.sensor_stream")} == {"create"}
    assert engine.status().in_sync

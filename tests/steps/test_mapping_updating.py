"""A mapping reads Updating for a while after UpdateEventSourceMapping (moto: never): a second
change right after the first waits on the clock for a stable state before it is sent."""

from __future__ import annotations

from pathlib import Path

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.steps import kms, lambda_, stream
from tests.awsbehaviour import FakeClock, install, rules_named
from tests.awsbehaviour.fixture import behaviour_for, fake_waiter_time
from tests.support import CallLog, by_id

REGION = "us-east-1"
RESOURCES = kms.RESOURCES + stream.RESOURCES + lambda_.RESOURCES


def test_a_second_mapping_change_waits_until_the_first_is_done(tmp_path: Path, moto, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    fake_waiter_time(monkeypatch, clock)
    behaviour = behaviour_for(rules_named("lambda.mapping-updating"), clock, REGION)

    def engine(*sets: str, log: CallLog | None = None):
        config = load_config("dev", region=REGION,
                             assignments=("storage.enforce_tls=false", *sets))
        aws = AwsContext(config.region, sleep=clock.sleep, clock=clock.now)
        if log is not None:
            log.attach(aws.events)
        install(aws.events, behaviour)
        return make_engine(config, aws, tmp_path / ".iotpipe", resources=RESOURCES)

    engine().up()
    assert by_id(engine("lambda.batch_size=50").up(), "lambda.event_source_mapping").action == "update"
    updated_at = clock.now()
    log = CallLog()
    assert by_id(engine("lambda.batch_size=60", log=log).up(),
                 "lambda.event_source_mapping").action == "update"
    assert "lambda.mapping-updating" in behaviour.fired_rules()
    assert clock.now() - updated_at >= 10  # the rule's window, waited on the clock
    polls = log.counts()["lambda.GetEventSourceMapping"]
    assert polls >= 2 and log.counts(mutating_only=True)["lambda.UpdateEventSourceMapping"] == 1

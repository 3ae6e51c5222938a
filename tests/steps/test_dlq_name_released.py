"""SQS refuses a deleted queue's name for 60 seconds (moto does not): a destroy that stopped
right after deleting the dead-letter queue, then `up`, must wait the name out, not fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.errors import AwsCallError
from iotpipe.steps import kms, lambda_, stream
from tests.awsbehaviour import FakeClock, install, rules_named
from tests.awsbehaviour.fixture import behaviour_for, fake_waiter_time
from tests.support import CallLog, Interrupt, by_id

REGION = "us-east-1"
RESOURCES = kms.RESOURCES + stream.RESOURCES + lambda_.RESOURCES


@pytest.fixture
def run(tmp_path: Path, moto, monkeypatch):
    """run(): an engine whose calls all meet one behaviour (so a delete arms what a later run
    meets), on one FakeClock."""
    monkeypatch.chdir(tmp_path)
    clock = FakeClock()
    fake_waiter_time(monkeypatch, clock)
    behaviour = behaviour_for(rules_named("sqs.queue-deleted-recently"), clock, REGION)

    def build(log: CallLog | None = None):
        config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
        aws = AwsContext(config.region, sleep=clock.sleep, clock=clock.now)
        if log is not None:  # first: a refusal ends before-call at the behaviour's hook
            log.attach(aws.events)
        install(aws.events, behaviour)
        return make_engine(config, aws, tmp_path / ".iotpipe", resources=RESOURCES)

    build.clock, build.behaviour = clock, behaviour
    return build


def _stop_after_delete_queue(engine) -> None:
    def stop(**_):
        raise Interrupt()

    engine.ctx.aws.events.register("after-call.sqs.DeleteQueue", stop)


def test_up_right_after_a_destroy_stopped_past_the_queue_waits_the_name_out(run):
    run().up()
    stopped = run()
    _stop_after_delete_queue(stopped)
    with pytest.raises(Interrupt):
        stopped.destroy()
    deleted_at = run.clock.now()

    log = CallLog()
    result = run(log).up()
    assert by_id(result, "lambda.dlq").action == "create"
    assert "sqs.queue-deleted-recently" in run.behaviour.fired_rules()
    assert log.counts()["sqs.CreateQueue"] >= 2  # refused, then created
    assert run.clock.now() - deleted_at >= 60  # waited on the clock, not in real time
    assert {r.action for r in run(CallLog()).up().resources} == {"unchanged"}


def test_the_wait_for_the_name_is_bounded(run, monkeypatch):
    """A name that never frees (a rule longer than SQS's 60 s) fails with AWS's words, bounded."""
    import dataclasses

    from tests.awsbehaviour import rules

    forever = dataclasses.replace(rules_named("sqs.queue-deleted-recently")[0], duration_s=1e9)
    run.behaviour.rules = [forever]
    run().up()
    stopped = run()
    _stop_after_delete_queue(stopped)
    with pytest.raises(Interrupt):
        stopped.destroy()
    started = run.clock.now()
    with pytest.raises(AwsCallError, match="You must wait 60 seconds after deleting a queue"):
        run().up()
    assert 60 <= run.clock.now() - started <= 120
    assert rules.rules_named("sqs.queue-deleted-recently")[0].duration_s == 60.0

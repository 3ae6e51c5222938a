"""The pass before `up` (its plan) and `destroy` (its survey) reads every resource, and so does
the prefetch of `status`, `plan` and `up`; the command uses those reads instead of asking AWS
again, where that is sound (see Engine.up, Engine.destroy, Engine._read)."""

from __future__ import annotations

import boto3
import pytest

from tests.support import CallLog, by_id

REGION = "us-east-1"
ROLES = 2  # lambda.role, iot.rule_role


def _reads(log: CallLog, operation: str) -> int:
    return log.counts()[operation]


def test_destroy_reads_each_resource_once_in_its_survey(make):
    log = CallLog()
    engine = make(log=log)
    engine.up()
    log.clear()
    result = engine.destroy()
    assert {r.action for r in result.resources} <= {"delete", "scheduled", "absent"}
    assert _reads(log, "iam.GetRole") == ROLES  # the survey's; no second read before DeleteRole
    assert _reads(log, "cloudtrail.GetTrail") == 1
    assert _reads(log, "sns.GetTopicAttributes") == 1
    assert boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"] == []


def test_a_converged_up_after_its_defaults_plan_reads_each_resource_once(make):
    """`up` with a plan first (the CLI's defaults guard passes ``confirm``): in sync, the plan's
    reads are the ones `up` would make a moment later under the same lock."""
    log = CallLog()
    engine = make(log=log)
    engine.up()
    log.clear()
    seen = []
    result = engine.up(confirm=lambda plan: seen.append(plan) or True)
    assert seen and {r.action for r in seen[0].resources} == {"unchanged"}
    assert {r.action for r in result.resources} == {"unchanged"}
    assert log.mutating == []
    assert _reads(log, "iam.GetRole") == ROLES
    assert _reads(log, "dynamodb.DescribeTable") == 1


def test_an_up_with_changes_reads_again_after_its_plan(make):
    """Something to change: each resource is read again once what it depends on converged."""
    log = CallLog()
    engine = make(log=log)
    engine.up()
    boto3.client("logs", region_name=REGION).put_retention_policy(
        logGroupName=engine.ctx.names.lambda_log_group, retentionInDays=1)
    log.clear()
    result = engine.up(confirm=lambda plan: True)
    assert by_id(result, "lambda.log_group").action == "update"
    assert _reads(log, "iam.GetRole") == 2 * ROLES  # the plan's, then up's own
    assert _reads(log, "dynamodb.DescribeTable") == 2


@pytest.mark.parametrize("command", ["destroy_plan", "status", "plan", "up"])
def test_reads_do_not_wait_for_the_reads_of_what_a_resource_depends_on(make, command):
    """Destroy's survey judges ownership, not drift, and the converged commands read everything
    first (prefetch): a read waits only for ``read_needs``. The dashboard (which depends on
    every alarm, each on the key) is read while the key's read is still held; scheduled by
    ``depends_on`` it could not start before the key's read ended."""
    import threading

    engine = make(parallelism=4)
    engine.up()
    dashboard_reading = threading.Event()
    held = []
    resources = {r.logical_id: r for r in engine.resources}
    key, dashboard = resources["kms.key"], resources["monitor.dashboard"]
    key_read, dashboard_read = key.read, dashboard.read

    def read_key(ctx):
        # A bounded wait: it returns at once when the survey is right, and fails the test
        # (instead of hanging it) when the dashboard waits for the key.
        held.append(dashboard_reading.wait(timeout=10))
        return key_read(ctx)

    def read_dashboard(ctx):
        dashboard_reading.set()
        return dashboard_read(ctx)

    key.read, dashboard.read = read_key, read_dashboard
    result = getattr(engine, command)()
    assert held[:1] == [True]
    assert {r.action for r in result.resources} <= {"delete", "scheduled", "unchanged", "read"}


def test_up_reads_again_only_what_lies_downstream_of_a_write(make):
    """`up` uses its prefetched reads while nothing a resource depends on was written in this
    run: the log group's retention is repaired, so the function (which depends on it) is read
    again after that; the stream (which does not) is not."""
    log = CallLog()
    engine = make(log=log)
    engine.up()
    log.clear()
    assert {r.action for r in engine.up().resources} == {"unchanged"}
    assert _reads(log, "lambda.GetFunction") == 1
    assert _reads(log, "kinesis.DescribeStreamSummary") == 1
    boto3.client("logs", region_name=REGION).put_retention_policy(
        logGroupName=engine.ctx.names.lambda_log_group, retentionInDays=1)
    log.clear()
    result = engine.up()
    assert by_id(result, "lambda.log_group").action == "update"
    assert by_id(result, "lambda.function").action == "unchanged"
    assert _reads(log, "lambda.GetFunction") == 2  # prefetched, then again after the log group's write
    assert _reads(log, "kinesis.DescribeStreamSummary") == 1


def test_a_read_that_failed_in_the_prefetch_is_made_again_in_its_own_turn(make):
    """The key's read fails once in `status`'s prefetch (throttled past botocore's retries,
    say), on an env whose state was lost, so that no id is known but what reads find. The
    key is read again in its own turn, and it and everything that reads with its ARN
    (``read_needs``) come out in sync: one failed read is not a failed status."""
    from tests.support import fail_with

    first = make()
    first.up()
    first.store.path.unlink()  # the state is lost: no recorded ids either; every id comes from a read
    log = CallLog()
    engine = make(log=log)
    failed: list[str] = []
    throttled = fail_with("ThrottlingException", "Rate exceeded")

    def once(model, **kwargs):
        if model.name == "DescribeKey" and not failed:
            failed.append(model.name)
            throttled(model, **kwargs)

    engine.ctx.aws.events.register("before-call.kms.DescribeKey", once)
    result = engine.status()
    assert failed == ["DescribeKey"]
    drifted = {r.logical_id: [c.field for c in r.changes] for r in result.resources if r.health != "ok"}
    assert result.in_sync, drifted

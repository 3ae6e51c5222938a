"""The pass before `up` (its plan) and `destroy` (its survey) reads every resource; the command
uses those reads instead of asking AWS again, where that is sound (see Engine.up/destroy)."""

from __future__ import annotations

import boto3

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

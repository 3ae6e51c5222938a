"""The KMS key search stays cheap on a busy account, and every policy iotpipe writes names the
partition the env lives in (aws, aws-cn, aws-us-gov)."""

from __future__ import annotations

import json

import boto3
import pytest

from iotpipe.aws import AwsContext
from iotpipe.config import Names, load_config
from iotpipe.steps import iot, kms, lambda_, trail
from iotpipe.steps.base import StepContext
from tests.support import CallLog, by_id

REGION = "us-east-1"
OTHER_KEYS = 40  # a busy account: other teams' keys


def kms_client():
    return boto3.client("kms", region_name=REGION)


def scan_calls(log: CallLog) -> tuple[int, int]:
    counts = log.counts()
    return counts["kms.ListKeys"], counts["kms.ListResourceTags"]


@pytest.fixture
def busy_account(moto):
    for n in range(OTHER_KEYS):
        kms_client().create_key(Description=f"another team's key {n}")


def test_after_a_complete_destroy_status_and_plan_do_not_scan_the_account(busy_account, make, log):
    make(resources=kms.RESOURCES).up()
    make(resources=kms.RESOURCES).destroy()
    engine = make(resources=kms.RESOURCES, log=log)
    for _ in range(3):  # e.g. a dashboard polling status
        assert by_id(engine.status(), "kms.key").health == "missing"
        assert by_id(engine.plan(), "kms.key").action == "create"
    assert scan_calls(log) == (0, 0)


def test_destroy_polls_scan_at_most_once_per_run(busy_account, make, log):
    make(resources=kms.RESOURCES).up()
    engine = make(resources=kms.RESOURCES, log=log)
    engine.destroy()
    for _ in range(5):  # what `destroy --wait` does while a thing type is pending
        assert {r.action for r in engine.destroy().resources} == {"absent"}
    listed, tag_reads = scan_calls(log)
    # one scan (every key once, ours included) plus the first destroy's ownership reads;
    # before, each of the five polls scanned the whole account again (over 200 reads)
    assert listed == 1 and tag_reads <= OTHER_KEYS + 3


def test_up_still_finds_a_key_whose_alias_and_state_were_both_lost(busy_account, make, tmp_path, log):
    make(resources=kms.RESOURCES, state_root=tmp_path / "lost").up()
    ours = kms_client().describe_key(KeyId="alias/iot-manufacturing-dev")["KeyMetadata"]["KeyId"]
    kms_client().delete_alias(AliasName="alias/iot-manufacturing-dev")
    result = make(resources=kms.RESOURCES, log=log, state_root=tmp_path / "fresh").up()
    assert by_id(result, "kms.key").action == "unchanged" and by_id(result, "kms.key").ids["id"] == ours
    assert log.counts(mutating_only=True) == {"kms.CreateAlias": 1}
    assert scan_calls(log)[0] == 1


def test_a_recorded_key_is_found_without_a_scan(make, log):
    make(resources=kms.RESOURCES).up()
    kms_client().delete_alias(AliasName="alias/iot-manufacturing-dev")
    engine = make(resources=kms.RESOURCES, log=log)
    assert by_id(engine.status(), "kms.key").health == "ok"
    engine.up()
    assert scan_calls(log)[0] == 0


# --- partitions ------------------------------------------------------------------------------------
def context(region: str) -> StepContext:
    config = load_config("dev", region=region, assignments=("storage.enforce_tls=true",))
    aws = AwsContext(region)
    aws._account = "123456789012"  # no STS call: only names and policies are built here
    return StepContext(aws=aws, config=config, names=Names.derive(config, aws._account))


def arns_in(document) -> list[str]:
    text = json.dumps(document)
    return [part.split('"')[0] for part in text.split('"arn:')[1:]]


@pytest.mark.parametrize(("region", "partition", "logs_principal"), [
    ("eu-west-1", "aws", "logs.eu-west-1.amazonaws.com"),
    ("cn-north-1", "aws-cn", "logs.cn-north-1.amazonaws.com.cn"),
    ("us-gov-west-1", "aws-us-gov", "logs.us-gov-west-1.amazonaws.com"),
])
def test_key_policy_follows_the_partition(region, partition, logs_principal):
    policy = kms.key_policy(context(region))
    sids = {s["Sid"]: s for s in policy["Statement"]}
    assert set(sids) == {"Enable IAM User Permissions", "Allow CloudWatch Logs",
                         "Allow CloudTrail to encrypt logs", "Allow CloudTrail to describe key",
                         "Allow CloudWatch alarms to publish to the alert topic"}
    alarms = sids["Allow CloudWatch alarms to publish to the alert topic"]
    assert alarms["Condition"] == {
        "StringEquals": {"aws:SourceAccount": "123456789012"},
        "ArnLike": {"aws:SourceArn": f"arn:{partition}:cloudwatch:{region}:123456789012:alarm:iot-dev-*"}}
    trail = f"arn:{partition}:cloudtrail:{region}:123456789012:trail/iot-audit-trail-dev"
    for sid in ("Allow CloudTrail to encrypt logs", "Allow CloudTrail to describe key"):
        assert sids[sid]["Condition"]["StringEquals"] == {"aws:SourceArn": trail}
    assert sids["Enable IAM User Permissions"]["Principal"] == {"AWS": f"arn:{partition}:iam::123456789012:root"}
    logs = sids["Allow CloudWatch Logs"]
    assert logs["Principal"] == {"Service": logs_principal}
    assert logs["Condition"] == {"ArnLike": {
        "kms:EncryptionContext:aws:logs:arn": f"arn:{partition}:logs:{region}:123456789012:*"}}
    # Nothing lets a service principal use the key without naming our account.
    assert not any("kinesis" in json.dumps(s["Principal"]) for s in policy["Statement"])


@pytest.mark.parametrize(("region", "partition"), [("cn-north-1", "aws-cn"), ("us-gov-west-1", "aws-us-gov")])
def test_every_arn_in_every_policy_names_the_partition(region, partition):
    ctx = context(region)
    ctx.refs["kms.key"] = {"arn": ctx.aws.arn("kms", "key/1234"), "id": "1234"}
    documents = [kms.key_policy(ctx), lambda_.lambda_policy(ctx), iot.rule_role_policy(ctx),
                 iot.device_policy_document(ctx), trail.trail_bucket_policy(ctx)]
    arns = [arn for doc in documents for arn in arns_in(doc)]
    assert len(arns) > 15
    assert all(arn.startswith(f"{partition}:") for arn in arns), arns

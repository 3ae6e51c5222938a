"""An env deployed before failed batches went to S3 moves over with a plain `up`.

The old env has the SQS dead-letter queue as the mapping's on-failure destination, a role
allowed to send to it, and a bucket lifecycle without the failure-record rule. `plan`,
`status` and `up` say what changes; `up` re-points the mapping, then deletes the queue (ours
and empty only); interrupted at any of its mutating calls, in any way, a re-run ends in the
same env as a fresh `up`, with nothing orphaned; `destroy` of an old env removes the queue too.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.steps import kms, lambda_, storage, stream
from iotpipe.steps.base import policy_json
from iotpipe.steps.lambda_ import lambda_policy
from iotpipe.steps.storage import FAILURE_RECORDS_RULE_ID
from tests.pipeline_checks import Clients, assert_nothing_left, verify_pipeline
from tests.support import CallLog, FaultAt, by_id

REGION = "us-east-1"
ENV = "dev"
MOTO = {"lambda": {"use_docker": False}}
MIGRATION_CALLS = [("s3", "PutBucketLifecycleConfiguration"), ("iam", "PutRolePolicy"),
                   ("lambda", "UpdateEventSourceMapping"), ("sqs", "DeleteQueue")]


def _engine(root: Path, log: CallLog | None = None, fault: FaultAt | None = None, resources=None):
    config = load_config(ENV, region=REGION, assignments=("storage.enforce_tls=false",))
    aws = AwsContext(REGION, sleep=lambda _s: None)
    if log:
        log.attach(aws.events)
    if fault:
        fault.attach(aws.events)
    return make_engine(config, aws, root, resources=resources)


# What the move touches, and what it rests on: enough for the interruption matrix.
PROCESSING = (*kms.RESOURCES, *storage.RESOURCES, *stream.RESOURCES, *lambda_.RESOURCES)


def make_old_env(root: Path, *, tagged: bool = True, resources=None) -> str:
    """A fresh env turned into what iotpipe deployed before: returns the queue's URL."""
    engine = _engine(root, resources=resources)
    engine.up()
    ctx, names = engine.ctx, engine.ctx.names
    sqs = boto3.client("sqs", region_name=REGION)
    url = sqs.create_queue(QueueName=names.dlq, tags=ctx.tags("lambda.dlq") if tagged else {},
                           Attributes={"KmsMasterKeyId": ctx.ref("kms.key", "arn"),
                                       "MessageRetentionPeriod": "1209600"})["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    lam = boto3.client("lambda", region_name=REGION)
    uuid = engine.store.get("lambda.event_source_mapping").ids["uuid"]
    lam.update_event_source_mapping(UUID=uuid, DestinationConfig={"OnFailure": {"Destination": arn}})
    old = lambda_policy(ctx)
    old["Statement"] = [s for s in old["Statement"] if s["Sid"] not in ("WriteFailureRecords", "FindFailureRecordsBucket")]
    old["Statement"].append({"Sid": "SendFailedBatchesToDlq", "Effect": "Allow", "Action": "sqs:SendMessage",
                             "Resource": arn})
    boto3.client("iam", region_name=REGION).put_role_policy(
        RoleName=names.lambda_role, PolicyName="lambda-permissions", PolicyDocument=policy_json(old))
    s3 = boto3.client("s3", region_name=REGION)
    rules = [r for r in s3.get_bucket_lifecycle_configuration(Bucket=names.sensor_bucket)["Rules"]
             if r["ID"] != FAILURE_RECORDS_RULE_ID]
    s3.put_bucket_lifecycle_configuration(Bucket=names.sensor_bucket, LifecycleConfiguration={"Rules": rules},
                                          TransitionDefaultMinimumObjectSize="all_storage_classes_128K")
    return url


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    with mock_aws(config=MOTO):
        _engine(tmp_path_factory.mktemp("fresh")).up()
        return verify_pipeline(Clients(REGION), ENV)


def _queues() -> list[str]:
    return boto3.client("sqs", region_name=REGION).list_queues().get("QueueUrls", [])


def test_status_plan_and_up_move_an_old_env_over(tmp_path, reference):
    with mock_aws(config=MOTO):
        make_old_env(tmp_path)
        status = _engine(tmp_path).status()
        assert by_id(status, "lambda.dlq").health == "unwanted"
        assert "the next `up` deletes it" in by_id(status, "lambda.dlq").message
        assert [c.field for c in by_id(status, "lambda.event_source_mapping").changes] == ["on_failure_destination"]
        assert by_id(status, "lambda.role").health == "drifted"
        assert by_id(status, "storage.sensor_bucket").health == "drifted"
        plan = _engine(tmp_path).plan()
        assert by_id(plan, "lambda.dlq").action == "delete" and not plan.in_sync
        log = CallLog()
        result = _engine(tmp_path, log).up()
        assert sorted(log.mutating) == sorted(MIGRATION_CALLS)
        assert log.mutating.index(("lambda", "UpdateEventSourceMapping")) < log.mutating.index(("sqs", "DeleteQueue"))
        assert by_id(result, "lambda.dlq").action == "delete"
        assert verify_pipeline(Clients(REGION), ENV) == reference and _queues() == []
        log.clear()
        again = _engine(tmp_path, log).up()
        assert log.mutating == [] and "lambda.dlq" not in by_id(again)
        assert _engine(tmp_path).status().in_sync


def test_a_queue_still_holding_failure_records_is_kept_until_they_are_replayed(tmp_path):
    with mock_aws(config=MOTO):
        url = make_old_env(tmp_path, resources=PROCESSING)
        sqs = boto3.client("sqs", region_name=REGION)
        sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"KinesisBatchInfo": {}}))
        result = _engine(tmp_path, resources=PROCESSING).up()
        kept = by_id(result, "lambda.dlq")
        assert kept.action == "skipped" and "replay failed" in kept.message
        assert _queues() == [url]
        assert "replay failed" in by_id(_engine(tmp_path, resources=PROCESSING).status(), "lambda.dlq").message
        sqs.purge_queue(QueueUrl=url)  # what `replay failed` does, message by message, once persisted
        assert by_id(_engine(tmp_path, resources=PROCESSING).up(), "lambda.dlq").action == "delete"
        assert _queues() == []


def test_a_queue_iotpipe_did_not_create_is_left_alone(tmp_path):
    with mock_aws(config=MOTO):
        url = make_old_env(tmp_path, tagged=False, resources=PROCESSING)
        result = _engine(tmp_path, resources=PROCESSING).up()
        assert "lambda.dlq" not in by_id(result)
        assert _queues() == [url]
        assert by_id(_engine(tmp_path, resources=PROCESSING).destroy(), "lambda.dlq").action == "skipped"  # "left alone"
        assert _queues() == [url]


def test_destroy_of_an_old_env_removes_the_queue(tmp_path):
    with mock_aws(config=MOTO):
        make_old_env(tmp_path, resources=PROCESSING)
        assert by_id(_engine(tmp_path, resources=PROCESSING).destroy_plan(), "lambda.dlq").action == "delete"
        assert by_id(_engine(tmp_path, resources=PROCESSING).destroy(), "lambda.dlq").action == "delete"
        assert_nothing_left(Clients(REGION), ENV)


# As tests/test_interrupt.py: by default each call is interrupted once, the mode rotating;
# IOTPIPE_FULL_MATRIX=1 interrupts every call in all three ways.
FULL_MATRIX = os.environ.get("IOTPIPE_FULL_MATRIX") == "1"
ROTATION = ("lost", "error", "lost", "abort")


def _points(total: int):
    for n in range(1, total + 1):
        for mode in (("error", "abort", "lost") if FULL_MATRIX else (ROTATION[n % len(ROTATION)],)):
            yield n, mode


def test_the_move_interrupted_at_every_call_converges(tmp_path):
    failures = []
    for n, mode in _points(len(MIGRATION_CALLS)):
        root = tmp_path / f"{mode}-{n}"
        with mock_aws(config=MOTO):
            make_old_env(root, resources=PROCESSING)
            fault = FaultAt(n, mode)
            with contextlib.suppress(KeyboardInterrupt, Exception):  # the interruption is the point
                interrupted = _engine(root, fault=fault, resources=PROCESSING)
                interrupted.parallelism = 1  # the Nth call: a fixed one (as tests/test_interrupt.py)
                interrupted.up()
            if fault.fired is None:
                failures.append((n, "fault did not fire"))
                continue
            try:
                _engine(root, resources=PROCESSING).up()
                assert _queues() == []
                (mapping,) = boto3.client("lambda", region_name=REGION).list_event_source_mappings()[
                    "EventSourceMappings"]
                assert mapping["DestinationConfig"]["OnFailure"]["Destination"].startswith("arn:aws:s3:::")
                policy = json.dumps(boto3.client("iam", region_name=REGION).get_role_policy(
                    RoleName=f"iot-lambda-role-{ENV}", PolicyName="lambda-permissions")["PolicyDocument"])
                assert "WriteFailureRecords" in policy and "sqs:" not in policy
                rules = boto3.client("s3", region_name=REGION).get_bucket_lifecycle_configuration(
                    Bucket=f"iot-sensor-data-{ENV}-123456789012")["Rules"]
                assert FAILURE_RECORDS_RULE_ID in {r["ID"] for r in rules}
            except (AssertionError, Exception) as err:  # noqa: BLE001 - collect every N, report all
                failures.append((n, fault.fired, f"{type(err).__name__}: {err}"[:400]))
    assert not failures, failures

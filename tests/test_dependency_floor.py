"""The declared dependency floor has every parameter iotpipe sends.

Service models grow: ``CreateStream(Tags=...)`` and ``CreateEventSourceMapping(Tags=...)``
appeared in botocore 1.35.26 and 1.35.23, ``PutBucketLifecycleConfiguration(
TransitionDefaultMinimumObjectSize=...)`` in 1.35.32, ``PutObject(IfMatch=...)`` (the S3 state
backend's conditional writes) in 1.35.69. An older botocore rejects an unknown
parameter before any request (ParamValidationError): `up` would fail halfway on a machine that
satisfies ``pyproject.toml``. What this proves, and what not:

- every parameter path iotpipe sends in a full `up`, a config change, device add/remove,
  `destroy` and the S3 state backend's bootstrap, lock, writes and delete (recorded from the calls themselves) exists in the service models of the declared
  floor: ``tests/data/botocore-<floor>-params.json`` is those models' input paths for the
  operations iotpipe uses, extracted from the floor's wheel by
  ``tests/data/make_botocore_params.py``;
- the floor is the one the data file was made from, and the installed botocore is at least it.

It does not prove anything of calls this scenario does not make (rarer repairs), nor of the
handler, which runs with the Lambda runtime's own boto3.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import botocore
import botocore.session
import pytest
from moto import mock_aws

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.devices import add_device, remove_device
from iotpipe.engine import make_engine
from tests.botocore_params import sent_paths

REPO = Path(__file__).resolve().parent.parent
REGION = "us-east-1"
# Where each parameter first appears, found by reading the wheels' models (1.35.22: neither Tags;
# 1.35.23: the mapping's; 1.35.26: the stream's; 1.35.31: no TransitionDefaultMinimumObjectSize;
# 1.35.68: PutObject has IfNoneMatch but not IfMatch, 1.35.69 both).
INTRODUCED = {
    ("lambda", "CreateEventSourceMapping", "Tags"): "1.35.23",
    ("kinesis", "CreateStream", "Tags"): "1.35.26",
    ("s3", "PutBucketLifecycleConfiguration", "TransitionDefaultMinimumObjectSize"): "1.35.32",
    ("s3", "PutObject", "IfMatch"): "1.35.69",
}
OPERATIONS: frozenset[tuple[str, str]] = frozenset(
    (service, operation) for service, operations in {
        "cloudwatch": ("DeleteAlarms", "DeleteDashboards", "DescribeAlarms", "GetDashboard", "ListTagsForResource", "PutDashboard", "PutMetricAlarm", "TagResource"),
        "cloudtrail": ("AddTags", "CreateTrail", "DeleteTrail", "DescribeTrails", "GetEventSelectors", "GetInsightSelectors", "GetTrail", "GetTrailStatus", "ListTags", "PutEventSelectors", "PutInsightSelectors", "StartLogging", "UpdateTrail"),
        "dynamodb": ("CreateTable", "DeleteTable", "DescribeContinuousBackups", "DescribeTable", "ListTagsOfResource", "TagResource", "UpdateContinuousBackups", "UpdateTable"),
        "iam": ("CreateRole", "DeleteRole", "DeleteRolePolicy", "GetRole", "GetRolePolicy", "ListAttachedRolePolicies", "ListRolePolicies", "ListRoleTags", "PutRolePolicy", "TagRole"),
        "iot": ("AttachPolicy", "AttachThingPrincipal", "CreateKeysAndCertificate", "CreatePolicy", "CreateThing", "CreateThingType", "CreateTopicRule", "DeleteCertificate", "DeletePolicy", "DeleteThing", "DeleteThingType", "DeleteTopicRule", "DeprecateThingType", "DescribeCertificate", "DescribeEndpoint", "DescribeThing", "DescribeThingType", "DetachPolicy", "DetachThingPrincipal", "GetPolicy", "GetTopicRule", "ListAttachedPolicies", "ListPolicyVersions", "ListPrincipalThings", "ListTagsForResource", "ListTargetsForPolicy", "ListThingPrincipals", "ListThings", "ListTopicRules", "UpdateCertificate"),
        "kinesis": ("AddTagsToStream", "CreateStream", "DeleteStream", "DescribeStream", "DescribeStreamSummary", "IncreaseStreamRetentionPeriod", "ListTagsForStream", "StartStreamEncryption"),
        "kms": ("CreateAlias", "CreateKey", "DeleteAlias", "DescribeKey", "EnableKeyRotation", "GetKeyPolicy", "GetKeyRotationStatus", "ListAliases", "ListKeys", "ListResourceTags", "ScheduleKeyDeletion", "TagResource"),
        "lambda": ("CreateEventSourceMapping", "CreateFunction", "DeleteEventSourceMapping", "DeleteFunction", "GetEventSourceMapping", "GetFunction", "ListEventSourceMappings", "ListTags", "TagResource", "UpdateEventSourceMapping", "UpdateFunctionConfiguration"),
        "logs": ("CreateLogGroup", "DeleteLogGroup", "DescribeLogGroups", "ListTagsForResource", "PutRetentionPolicy", "TagResource"),
        "s3": ("CreateBucket", "DeleteBucket", "DeleteBucketPolicy", "DeleteObject", "DeleteObjects", "GetObject", "ListObjectsV2", "PutObject", "GetBucketEncryption", "GetBucketLifecycleConfiguration", "GetBucketLogging", "GetBucketOwnershipControls", "GetBucketPolicy", "GetBucketTagging", "GetBucketVersioning", "GetPublicAccessBlock", "HeadBucket", "ListObjectVersions", "PutBucketEncryption", "PutBucketLifecycleConfiguration", "PutBucketLogging", "PutBucketOwnershipControls", "PutBucketPolicy", "PutBucketTagging", "PutBucketVersioning", "PutPublicAccessBlock"),
        "sns": ("CreateTopic", "DeleteTopic", "GetTopicAttributes", "ListSubscriptionsByTopic", "ListTagsForResource", "Subscribe", "TagResource"),
        "sqs": ("CreateQueue", "DeleteQueue", "GetQueueAttributes", "GetQueueUrl", "ListQueueTags", "TagQueue"),
        "sts": ("GetCallerIdentity",),
    }.items() for operation in operations
)


def version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def declared_floor(package: str) -> str:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (found,) = [d for d in deps if re.match(rf"{package}\s*>=", d)]
    return found.split(">=")[1].strip()


def floor_models() -> dict:
    (path,) = sorted((REPO / "tests" / "data").glob("botocore-*-params.json"))
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def sent(tmp_path_factory) -> list[tuple[str, str, dict]]:
    """Every call of a full scenario, with its parameters as iotpipe passed them."""
    calls: list[tuple[str, str, dict]] = []
    root = tmp_path_factory.mktemp("floor")
    with mock_aws(config={"lambda": {"use_docker": False}}):
        aws = AwsContext(REGION, sleep=lambda _s: None)
        aws.events.register("provide-client-params.*.*", lambda model, params, **_: calls.append(
            (model.service_model.service_name, model.name, copy.deepcopy(params))), unique_id="floor")
        config = load_config("dev", region=REGION, assignments=("storage.enforce_tls=false",))
        engine = make_engine(config, aws, root / "state")
        engine.up()
        changed = load_config("dev", region=REGION, assignments=(
            "storage.enforce_tls=true", "lambda.memory_mb=512", "lambda.batch_size=50",
            "trail.multi_region=false", "stream.retention_hours=48", "logs.retention_days=60",
            'tags.team="iot"', "storage.point_in_time_recovery=false", "trail.insights=false",
            'alerts.emails=["ops@example.com"]', "alerts.iterator_age_s=60"))
        make_engine(changed, aws, root / "state").up()
        attributes = {"location": "hall-2", "facility": None, "equipment_type": None}
        add_device(engine, "press-1", attributes=attributes)
        remove_device(engine, "press-1")
        add_device(engine, "press-2", attributes=attributes)
        engine.destroy()
        # the S3 state backend: bootstrap, the lock object, conditional writes, the conditional delete
        from iotpipe.s3state import parse_location
        from iotpipe.statecmd import bootstrap, show

        bootstrap(aws, parse_location("s3://iotpipe-floor-state/envs"), enforce_tls=False)
        shared = make_engine(config, aws, root / "s3", state="s3://iotpipe-floor-state/envs").store
        with shared.lock("up"):
            shared.set_account(aws.account_id)
            shared.record("kms.key", "AWS::KMS::Key", "alias/x", {"arn": "arn:x"})
            shared.forget("kms.key")
            shared.remove_if_empty()
        show(shared)
    return calls


def test_the_floor_is_declared_and_installed():
    floor = declared_floor("botocore")
    assert floor_models()["botocore"] == floor
    assert version(declared_floor("boto3")) >= version(floor)  # boto3 1.35.x pins botocore 1.35.x
    assert version(botocore.__version__) >= version(floor)
    for where, first in INTRODUCED.items():
        assert version(floor) >= version(first), where


def test_the_parameters_that_need_the_floor_are_really_sent(sent):
    for service, operation, path in INTRODUCED:
        assert any(s == service and o == operation and path in p for s, o, p in sent), (service, operation, path)


def test_every_parameter_sent_exists_in_the_floors_models(sent):
    models = floor_models()["operations"]
    session = botocore.session.get_session()
    missing = set()
    for service, operation, params in sent:
        assert (service, operation) in OPERATIONS, (
            f"{service}.{operation} is new: add it to OPERATIONS and regenerate the data file with "
            "tests/data/make_botocore_params.py")
        shape = session.get_service_model(service).operation_model(operation).input_shape
        known = set(models[service][operation])
        missing |= {f"{service}.{operation}: {path}" for path in sent_paths(shape, params) - known}
    assert not missing, sorted(missing)

"""A delete sequence tolerates "already gone" per call, never per block (issue 8, item 5).

Each test reads a resource, then removes one part of it out of band (as a concurrent operator
or a previous, interrupted destroy would), then deletes with the stale read. The old
``with ignore_not_found():`` around the whole sequence stopped at the first missing part and
skipped the final delete, yet destroy reported "deleted" and forgot the record.
"""

from __future__ import annotations

from types import SimpleNamespace

import boto3
import pytest

from iotpipe.steps import iot, kms, lambda_, storage
from tests.support import by_id

REGION = "us-east-1"
ROLE = "iot-lambda-role-dev"
POLICY = "iot-sensor-device-policy-dev"


def client(service: str):
    return boto3.client(service, region_name=REGION)


def role_exists(name: str) -> bool:
    return any(r["RoleName"] == name for r in client("iam").list_roles()["Roles"])


@pytest.fixture
def role_engine(make):
    engine = make(resources=kms.RESOURCES + (lambda_.LAMBDA_ROLE,))
    engine.up()
    return engine


def test_role_whose_inline_policy_is_already_gone_is_still_deleted(role_engine):
    ctx = role_engine.ctx
    current = lambda_.LAMBDA_ROLE.read(ctx)
    assert list(current.spec["inline_policies"]) == ["lambda-permissions"]
    client("iam").delete_role_policy(RoleName=ROLE, PolicyName="lambda-permissions")

    lambda_.LAMBDA_ROLE.delete(ctx, current)

    assert not role_exists(ROLE)
    assert lambda_.LAMBDA_ROLE.read(ctx) is None


def test_managed_policy_already_detached_does_not_skip_delete_role(role_engine):
    iam = client("iam")
    arn = iam.create_policy(PolicyName="extra", PolicyDocument='{"Version":"2012-10-17","Statement":'
                            '[{"Effect":"Allow","Action":"s3:ListBucket","Resource":"*"}]}')["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=ROLE, PolicyArn=arn)
    ctx = role_engine.ctx
    current = lambda_.LAMBDA_ROLE.read(ctx)
    assert current.spec["managed_policies"] == [arn]
    iam.detach_role_policy(RoleName=ROLE, PolicyArn=arn)  # a concurrent hand, or a destroy cut short

    lambda_.LAMBDA_ROLE.delete(ctx, current)

    assert not role_exists(ROLE)
    assert iam.get_policy(PolicyArn=arn)["Policy"]["Arn"] == arn  # not ours: never deleted


def test_destroy_reports_deleted_only_when_the_role_is_gone(role_engine, monkeypatch):
    """The engine forgets a record after delete(); with the stale read the role must be gone."""
    ctx = role_engine.ctx
    stale = lambda_.LAMBDA_ROLE.read(ctx)
    monkeypatch.setattr(type(lambda_.LAMBDA_ROLE), "read", lambda self, c: stale)  # read before the race
    client("iam").delete_role_policy(RoleName=ROLE, PolicyName="lambda-permissions")

    result = role_engine.destroy()

    assert by_id(result, "lambda.role").action == "delete"
    assert not role_exists(ROLE)


def test_device_policy_whose_target_is_already_detached_is_still_deleted(make):
    engine = make(resources=kms.RESOURCES + iot.RESOURCES)
    engine.up()
    iotc = client("iot")
    cert = iotc.create_keys_and_certificate(setAsActive=True)["certificateArn"]
    iotc.attach_policy(policyName=POLICY, target=cert)
    policy = next(r for r in iot.RESOURCES if r.logical_id == "iot.device_policy")
    current = policy.read(engine.ctx)
    iotc.detach_policy(policyName=POLICY, target=cert)  # gone between listing and detaching

    def stale_listing(model, **_):
        """ListTargetsForPolicy answers as it did before the detach (a short-circuited call)."""
        return SimpleNamespace(status_code=200, headers={}), {"targets": [cert]}

    engine.ctx.client("iot").meta.events.register("before-call.iot.ListTargetsForPolicy", stale_listing)
    policy.delete(engine.ctx, current)

    assert not [p for p in iotc.list_policies()["policies"] if p["policyName"] == POLICY]


def test_bucket_whose_policy_is_already_gone_is_still_emptied_and_deleted(make):
    engine = make(resources=kms.RESOURCES + storage.RESOURCES, sets=())
    engine.up()
    bucket = engine.ctx.names.sensor_bucket
    s3 = client("s3")
    current = storage.SensorBucket().read(engine.ctx)
    assert current.spec["policy"] is not None
    s3.delete_bucket_policy(Bucket=bucket)
    storage.SensorBucket().delete(engine.ctx, current)
    assert bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]

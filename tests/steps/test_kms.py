"""The KMS step: the key (found by alias, recorded id, then tags) and its alias."""

from __future__ import annotations

import json
import shutil

import boto3
import pytest

from iotpipe.errors import OwnershipError
from iotpipe.steps import kms
from tests.support import CallLog, assert_repaired, by_id

REGION = "us-east-1"
ALIAS = "alias/iot-manufacturing-dev"


def client():
    return boto3.client("kms", region_name=REGION)


def live_keys() -> list[str]:
    return [k["KeyId"] for k in client().list_keys()["Keys"]
            if client().describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"] != "PendingDeletion"]


@pytest.fixture
def engine(make, log):
    e = make(resources=kms.RESOURCES, log=log)
    e.up()
    log.clear()
    return e


def key_id() -> str:
    return client().describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyId"]


def test_key_and_alias_as_specified(engine):
    meta = client().describe_key(KeyId=ALIAS)["KeyMetadata"]
    assert meta["KeyState"] == "Enabled" and meta["KeyManager"] == "CUSTOMER"
    assert meta["Description"] == "KMS key for IoT manufacturing data encryption - dev"
    assert client().get_key_rotation_status(KeyId=meta["KeyId"])["KeyRotationEnabled"] is True
    policy = json.loads(client().get_key_policy(KeyId=meta["KeyId"], PolicyName="default")["Policy"])
    sids = {s["Sid"]: s for s in policy["Statement"]}
    assert sids["Enable IAM User Permissions"]["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"}
    assert sids["Allow CloudWatch Logs"]["Principal"] == {"Service": f"logs.{REGION}.amazonaws.com"}
    assert "Allow Kinesis" not in sids  # Kinesis uses the key with its callers' permissions
    tags = {t["TagKey"]: t["TagValue"] for t in client().list_resource_tags(KeyId=meta["KeyId"])["Tags"]}
    assert tags == {"iotpipe:env": "dev", "iotpipe:resource": "kms.key", "managed-by": "iotpipe",
                    "iotpipe:region": REGION}


def test_converged_run_makes_no_writes(engine, log):
    result = engine.up()
    assert {r.action for r in result.resources} == {"unchanged"}
    assert log.mutating == []


@pytest.mark.parametrize(
    ("drift", "lid", "field", "calls"),
    [
        (lambda k: client().disable_key_rotation(KeyId=k), "kms.key", "rotation", {"kms.EnableKeyRotation": 1}),
        (lambda k: client().disable_key(KeyId=k), "kms.key", "enabled", {"kms.EnableKey": 1}),
        (lambda k: client().put_key_policy(KeyId=k, PolicyName="default", Policy=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Sid": "x", "Effect": "Allow", "Principal": {
                "AWS": "arn:aws:iam::123456789012:root"}, "Action": "kms:*", "Resource": "*"}]})),
         "kms.key", "policy", {"kms.PutKeyPolicy": 1}),
        (lambda k: client().untag_resource(KeyId=k, TagKeys=["iotpipe:resource"]), "kms.key", "tags",
         {"kms.TagResource": 1}),
        (lambda k: client().update_key_description(KeyId=k, Description="hand-edited"), "kms.key",
         "description", {"kms.UpdateKeyDescription": 1}),
    ],
)
def test_drift_is_repaired_with_only_the_needed_call(engine, log, drift, lid, field, calls):
    drift(key_id())
    assert_repaired(engine, log, lid, field, calls)


def test_alias_repointed_by_hand_to_another_key_is_refused(engine, log):
    """The alias is how iotpipe names its key: if someone points it at a key that is not
    iotpipe's, iotpipe stops rather than re-pointing it or touching that key."""
    ours = key_id()
    other = client().create_key(Description="hand-made")["KeyMetadata"]["KeyId"]
    client().update_alias(AliasName=ALIAS, TargetKeyId=other)
    log.clear()
    with pytest.raises(OwnershipError, match="kms.key"):
        engine.up()
    assert log.mutating == []
    assert client().describe_key(KeyId=other)["KeyMetadata"]["Description"] == "hand-made"
    assert ours in live_keys()


def test_lost_state_and_alias_key_is_found_by_its_tags(engine, make, tmp_path):
    ours = key_id()
    client().delete_alias(AliasName=ALIAS)
    shutil.rmtree(tmp_path / ".iotpipe")
    log = CallLog()
    result = make(resources=kms.RESOURCES, log=log).up()
    assert by_id(result, "kms.key").action == "unchanged"
    assert by_id(result, "kms.alias").action == "create"
    assert log.counts(mutating_only=True) == {"kms.CreateAlias": 1}  # no second key
    assert key_id() == ours and live_keys() == [ours]


def test_key_left_pending_deletion_by_destroy_is_not_reused(engine, make):
    """After `destroy` (alias gone, record forgotten) only the tag scan could find the old key:
    a new env gets a new key. A key the alias still names is recovered instead
    (tests/steps/test_key_recovery.py)."""
    old = key_id()
    engine.destroy()
    result = make(resources=kms.RESOURCES).up()
    assert by_id(result, "kms.key").action == "create"
    assert by_id(result, "kms.alias").action == "create"
    assert key_id() != old and live_keys() == [key_id()]


def test_alias_to_a_key_that_is_not_ours_is_refused_and_left_alone(make):
    foreign = client().create_key(Description="someone else's")["KeyMetadata"]["KeyId"]
    client().create_alias(AliasName=ALIAS, TargetKeyId=foreign)
    engine = make(resources=kms.RESOURCES)
    with pytest.raises(OwnershipError, match="alias/iot-manufacturing-dev"):
        engine.up()
    result = engine.destroy()
    assert {r.action for r in result.resources} == {"skipped"}
    assert client().describe_key(KeyId=foreign)["KeyMetadata"]["KeyState"] == "Enabled"
    assert client().describe_key(KeyId=ALIAS)["KeyMetadata"]["KeyId"] == foreign


def test_destroy_schedules_deletion_with_the_configured_window(make, log):
    engine = make(resources=kms.RESOURCES, sets=("kms.deletion_window_days=9",), log=log)
    engine.up()
    kid = key_id()
    log.clear()
    result = engine.destroy()
    assert [r.action for r in result.resources] == ["delete", "scheduled"]  # the key is not gone yet
    assert result.resources[1].message.startswith("scheduled for deletion (9 days)")
    assert log.counts(mutating_only=True) == {"kms.DeleteAlias": 1, "kms.ScheduleKeyDeletion": 1}
    assert client().describe_key(KeyId=kid)["KeyMetadata"]["KeyState"] == "PendingDeletion"
    assert not [a for a in client().list_aliases()["Aliases"] if a["AliasName"] == ALIAS]
    log.clear()
    again = engine.destroy()
    assert {r.action for r in again.resources} == {"absent"} and log.mutating == []

"""`state bootstrap`, `state migrate`, `state show` (in-process moto)."""

from __future__ import annotations

import json

import pytest

from iotpipe.aws import AwsContext
from iotpipe.errors import OwnershipError, StateError
from iotpipe.s3state import parse_location
from iotpipe.state import StateStore
from iotpipe.statecmd import bootstrap, migrate, s3_store, show

REGION = "us-east-1"
LOCATION = "s3://acme-iotpipe-state/plants"


def test_bootstrap_is_idempotent_and_leaves_a_foreign_bucket_alone(moto):
    aws = AwsContext("eu-west-1")
    first = bootstrap(aws, parse_location(LOCATION))
    assert dict(first.settings) == {"bucket": "created", "tags": "set", "versioning": "set", "encryption": "set",
                                    "public access block": "set", "object ownership": "set",
                                    "TLS-only policy": "set"}
    s3 = aws.client("s3")
    assert s3.get_bucket_location(Bucket="acme-iotpipe-state")["LocationConstraint"] == "eu-west-1"
    assert s3.get_bucket_versioning(Bucket="acme-iotpipe-state")["Status"] == "Enabled"
    policy = json.loads(s3.get_bucket_policy(Bucket="acme-iotpipe-state")["Policy"])
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    again = bootstrap(aws, parse_location(LOCATION))
    assert {action for _s, action in again.settings} == {"ok"}
    s3.create_bucket(Bucket="someone-elses-bucket", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    with pytest.raises(OwnershipError, match="iotpipe did not create it"):
        bootstrap(aws, parse_location("s3://someone-elses-bucket/x"))
    assert s3.get_bucket_versioning(Bucket="someone-elses-bucket").get("Status") is None  # untouched


def test_migrate_moves_the_record_never_the_keys_and_never_overwrites(moto, tmp_path):
    aws = AwsContext(REGION)
    bootstrap(aws, parse_location(LOCATION), enforce_tls=False)
    local = StateStore(tmp_path, "plant-a", REGION)
    local.set_account("123456789012")
    local.record("kms.key", "AWS::KMS::Key", "alias/x", {"arn": "arn:k"})
    key = tmp_path / "devices" / "plant-a" / "press-1" / "private.pem.key"
    key.parent.mkdir(parents=True)
    key.write_text("secret")
    target = s3_store(tmp_path, "plant-a", REGION, aws, LOCATION)
    result = migrate(local, target)
    assert result.resources == 1 and result.kept_keys == [str(key)]
    assert not local.path.exists() and (tmp_path / "state" / "plant-a.json.migrated").exists()
    keys = [o["Key"] for o in aws.client("s3").list_objects_v2(Bucket="acme-iotpipe-state")["Contents"]]
    assert keys == ["plants/plant-a.json"]  # no key, no lock left
    shown = show(s3_store(tmp_path, "plant-a", REGION, aws, LOCATION))
    assert shown["resources"][0]["logical_id"] == "kms.key" and shown["envs"] == ["plant-a"]
    assert shown["lock"] is None
    other = StateStore(tmp_path / "elsewhere", "plant-a", REGION)
    other.set_account("123456789012")
    other.record("kms.key", "AWS::KMS::Key", "alias/x", {"arn": "arn:DIFFERENT"})
    with pytest.raises(StateError, match="already holds a record"):
        migrate(other, s3_store(tmp_path, "plant-a", REGION, aws, LOCATION))
    assert other.path.exists()
    with pytest.raises(StateError, match="nothing to migrate"):
        migrate(StateStore(tmp_path / "empty", "plant-a", REGION), target)

"""One env, one region (issue 8, item 2), in-process: how a global resource's region is decided
when it carries no iotpipe:region tag (made before iotpipe recorded regions), and device key
files that belong to another region's certificate."""

from __future__ import annotations

import shutil
from pathlib import Path

import boto3
import pytest

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.devices import add_device, remove_device
from iotpipe.engine import make_engine
from iotpipe.errors import OwnershipError, StateError
from iotpipe.steps import iot, kms, lambda_, storage
from tests.support import CallLog, by_id

FIRST, SECOND = "us-east-1", "eu-west-1"
ACCOUNT = "123456789012"
BUCKET = f"iot-sensor-data-dev-{ACCOUNT}"
ROLE = "iot-lambda-role-dev"
TLS_OFF = ("storage.enforce_tls=false",)


@pytest.fixture
def engine_in(moto, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def build(region: str, state: str, resources, log: CallLog | None = None):
        config = load_config("dev", region=region, assignments=TLS_OFF)
        aws = AwsContext(region, sleep=lambda _s: None)
        if log is not None:
            log.attach(aws.events)
        return make_engine(config, aws, tmp_path / state, resources=resources)

    return build


def strip_region_tags() -> None:
    """Make the first region's global resources look as iotpipe left them before this change."""
    s3 = boto3.client("s3", region_name=FIRST)
    tags = [t for t in s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"] if t["Key"] != "iotpipe:region"]
    s3.put_bucket_tagging(Bucket=BUCKET, Tagging={"TagSet": tags})
    boto3.client("iam").untag_role(RoleName=ROLE, TagKeys=["iotpipe:region"])


GLOBALS = kms.RESOURCES + (storage.AccessLogBucket(), storage.SensorBucket(), lambda_.LAMBDA_ROLE)


def test_untagged_bucket_and_role_of_another_region_are_foreign(engine_in):
    engine_in(FIRST, "a", GLOBALS).up()
    strip_region_tags()
    log = CallLog()
    second = engine_in(SECOND, "b", GLOBALS, log=log)

    status = second.status()
    assert by_id(status, "storage.sensor_bucket").health == "foreign"  # its location says us-east-1
    assert by_id(status, "lambda.role").health == "foreign"  # its policies name us-east-1 ARNs
    assert FIRST in by_id(status, "lambda.role").message
    log.clear()
    with pytest.raises(OwnershipError, match=rf"iot-(access-logs|sensor-data)-dev-\d{{12}}.*{FIRST}"):
        second.up()
    assert not [c for c in log.mutating if c[0] in ("s3", "iam")]
    result = second.destroy()
    assert by_id(result, "storage.sensor_bucket").action == "skipped"
    assert by_id(result, "lambda.role").action == "skipped"
    assert boto3.client("iam").get_role(RoleName=ROLE)
    assert boto3.client("s3", region_name=FIRST).head_bucket(Bucket=BUCKET)


def test_untagged_bucket_and_role_of_this_region_are_ours_and_get_the_tag(engine_in):
    engine_in(FIRST, "a", GLOBALS).up()
    strip_region_tags()
    log = CallLog()
    result = engine_in(FIRST, "a", GLOBALS, log=log).up()  # the same laptop after the upgrade
    assert by_id(result, "storage.sensor_bucket").action == "update"
    assert by_id(result, "lambda.role").action == "update"
    assert log.counts(mutating_only=True) == {"s3.PutBucketTagging": 1, "iam.TagRole": 1}
    role_tags = {t["Key"]: t["Value"] for t in boto3.client("iam").list_role_tags(RoleName=ROLE)["Tags"]}
    assert role_tags["iotpipe:region"] == FIRST


def test_a_regional_resource_without_the_region_tag_is_ours(engine_in):
    engine_in(FIRST, "a", kms.RESOURCES).up()
    k = boto3.client("kms", region_name=FIRST)
    key = k.describe_key(KeyId="alias/iot-manufacturing-dev")["KeyMetadata"]["KeyId"]
    k.untag_resource(KeyId=key, TagKeys=["iotpipe:region"])
    result = engine_in(FIRST, "a", kms.RESOURCES).up()
    assert by_id(result, "kms.key").action == "update"
    tags = {t["TagKey"]: t["TagValue"] for t in k.list_resource_tags(KeyId=key)["Tags"]}
    assert tags["iotpipe:region"] == FIRST


DEVICE_RESOURCES = kms.RESOURCES + tuple(
    r for r in iot.RESOURCES if r.logical_id in ("iot.thing_type", "iot.device_policy"))


def test_device_files_of_another_regions_certificate_are_never_removed(engine_in, tmp_path):
    """A copied state directory on a second laptop: the certificate is missing in this region
    because it lives in the first one; `device add` and `device remove` leave the key alone."""
    first = engine_in(FIRST, "a", DEVICE_RESOURCES)
    first.up()
    add_device(first, "press-07")
    key = tmp_path / "a" / "devices" / "dev" / "press-07" / "private.pem.key"
    secret = key.read_bytes()
    shutil.copytree(tmp_path / "a" / "devices", tmp_path / "b" / "devices")  # devices only, no state
    second = engine_in(SECOND, "b", DEVICE_RESOURCES)
    second.up()  # the env's IoT resources exist in the second region too
    copied = tmp_path / "b" / "devices" / "dev" / "press-07"

    with pytest.raises(StateError, match=f"region {FIRST}"):
        add_device(second, "press-07")
    with pytest.raises(StateError, match=f"region {FIRST}"):
        remove_device(second, "press-07")

    assert (copied / "private.pem.key").read_bytes() == secret
    assert Path(copied / "certificate.json").exists()
    assert key.read_bytes() == secret
    assert not boto3.client("iot", region_name=SECOND).list_things()["things"]  # nothing made there

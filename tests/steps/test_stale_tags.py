"""Config tags iotpipe set earlier are removed once the config drops them (issue 8, item 9);
tags others added out of band are left alone."""

from __future__ import annotations

import boto3
import pytest
from pydantic import ValidationError

from iotpipe.config import PipelineConfig
from iotpipe.steps import kms, lambda_, storage, stream
from iotpipe.steps.base import decode_tag_keys, encode_tag_keys, tag_dict
from tests.support import CallLog, by_id

REGION = "us-east-1"
ACCOUNT = "123456789012"
RESOURCES = kms.RESOURCES + storage.RESOURCES + stream.RESOURCES + lambda_.RESOURCES
TLS_OFF = "storage.enforce_tls=false"
FOREIGN = {"cost-centre": "4711"}  # put on by someone else's tooling


def client(service: str):
    return boto3.client(service, region_name=REGION)


def tags_of(lid: str) -> dict[str, str]:
    """Each resource's tags as an independent client reads them."""
    if lid == "kms.key":
        key = client("kms").describe_key(KeyId="alias/iot-manufacturing-dev")["KeyMetadata"]["KeyId"]
        return tag_dict(client("kms").list_resource_tags(KeyId=key)["Tags"], "TagKey", "TagValue")
    if lid == "storage.sensor_bucket":
        return tag_dict(client("s3").get_bucket_tagging(Bucket=f"iot-sensor-data-dev-{ACCOUNT}")["TagSet"])
    if lid == "storage.metrics_table":
        arn = client("dynamodb").describe_table(TableName="sensor-metrics-dev")["Table"]["TableArn"]
        return tag_dict(client("dynamodb").list_tags_of_resource(ResourceArn=arn)["Tags"])
    if lid == "stream.sensor_stream":
        return tag_dict(client("kinesis").list_tags_for_stream(StreamName="iot-sensor-stream-dev")["Tags"])
    if lid == "lambda.role":
        return tag_dict(client("iam").list_role_tags(RoleName="iot-lambda-role-dev")["Tags"])
    if lid == "lambda.function":
        return client("lambda").get_function(FunctionName="iot-processor-dev").get("Tags", {})
    if lid == "lambda.log_group":
        arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/iot-processor-dev"
        return client("logs").list_tags_for_resource(resourceArn=arn)["tags"]
    raise AssertionError(lid)


def add_foreign_tags(lid: str) -> None:
    if lid == "kms.key":
        key = client("kms").describe_key(KeyId="alias/iot-manufacturing-dev")["KeyMetadata"]["KeyId"]
        client("kms").tag_resource(KeyId=key, Tags=[{"TagKey": k, "TagValue": v} for k, v in FOREIGN.items()])
    elif lid == "storage.sensor_bucket":
        name = f"iot-sensor-data-dev-{ACCOUNT}"
        have = client("s3").get_bucket_tagging(Bucket=name)["TagSet"]
        client("s3").put_bucket_tagging(Bucket=name, Tagging={"TagSet": have + [
            {"Key": k, "Value": v} for k, v in FOREIGN.items()]})
    elif lid == "storage.metrics_table":
        arn = client("dynamodb").describe_table(TableName="sensor-metrics-dev")["Table"]["TableArn"]
        client("dynamodb").tag_resource(ResourceArn=arn, Tags=[{"Key": k, "Value": v} for k, v in FOREIGN.items()])
    elif lid == "stream.sensor_stream":
        client("kinesis").add_tags_to_stream(StreamName="iot-sensor-stream-dev", Tags=FOREIGN)
    elif lid == "lambda.role":
        client("iam").tag_role(RoleName="iot-lambda-role-dev", Tags=[{"Key": k, "Value": v} for k, v in FOREIGN.items()])
    elif lid == "lambda.function":
        arn = client("lambda").get_function(FunctionName="iot-processor-dev")["Configuration"]["FunctionArn"]
        client("lambda").tag_resource(Resource=arn, Tags=FOREIGN)
    elif lid == "lambda.log_group":
        arn = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:/aws/lambda/iot-processor-dev"
        client("logs").tag_resource(resourceArn=arn, tags=FOREIGN)


CHECKED = ("kms.key", "storage.sensor_bucket", "storage.metrics_table", "stream.sensor_stream",
           "lambda.role", "lambda.function", "lambda.log_group")


def test_a_tag_dropped_from_the_config_is_removed_and_foreign_tags_stay(make):
    make(resources=RESOURCES, sets=(TLS_OFF, "tags.owner='alice'", "tags.team='line-3'")).up()
    for lid in CHECKED:
        tags = tags_of(lid)
        assert tags["owner"] == "alice" and tags["team"] == "line-3", lid
        assert decode_tag_keys(tags) == {"owner", "team"}, lid
        add_foreign_tags(lid)

    log = CallLog()
    engine = make(resources=RESOURCES, sets=(TLS_OFF, "tags.team='line-3'"), log=log)
    status = engine.status()
    for lid in CHECKED:
        assert by_id(status, lid).health == "drifted", lid  # owner is still there: drift
    result = engine.up()

    for lid in CHECKED:
        assert by_id(result, lid).action == "update", lid
        tags = tags_of(lid)
        assert "owner" not in tags, lid
        assert tags["team"] == "line-3", lid
        assert tags["cost-centre"] == "4711", lid  # not iotpipe's: left alone
        assert decode_tag_keys(tags) == {"team"}, lid
    log.clear()
    assert engine.status().in_sync
    engine.up()
    assert log.mutating == []


def test_dropping_every_config_tag_removes_them_and_the_list(make):
    make(resources=kms.RESOURCES + stream.RESOURCES, sets=(TLS_OFF, "tags.owner='alice'")).up()
    add_foreign_tags("stream.sensor_stream")
    make(resources=kms.RESOURCES + stream.RESOURCES).up()
    for lid in ("kms.key", "stream.sensor_stream"):
        tags = tags_of(lid)
        assert "owner" not in tags and "iotpipe:tags" not in tags, lid
        assert tags["iotpipe:env"] == "dev"
    assert tags_of("stream.sensor_stream")["cost-centre"] == "4711"


def test_a_foreign_tag_of_the_same_name_set_before_iotpipe_listed_it_is_not_removed(make):
    """Only keys iotpipe itself listed count as its own: a tag 'owner' somebody else put on
    a resource whose config never had 'owner' stays."""
    make(resources=kms.RESOURCES + stream.RESOURCES).up()
    client("kinesis").add_tags_to_stream(StreamName="iot-sensor-stream-dev", Tags={"owner": "ops"})
    log = CallLog()
    make(resources=kms.RESOURCES + stream.RESOURCES, log=log).up()
    assert tags_of("stream.sensor_stream")["owner"] == "ops"
    assert log.mutating == []


@pytest.mark.parametrize("keys", [
    {"owner": "a"},
    {"a:b": "1", "12:x": "2", "with space": "3", "x/y=z+1@q": "4"},
    {f"key-{n:03d}-" + "k" * 22: "v" for n in range(40)},  # the most keys: spills into 6 tags
])
def test_the_key_list_round_trips_for_any_key_and_fits_tag_values(keys):
    PipelineConfig.model_validate({"env": "dev", "tags": keys})  # the config accepts them
    encoded = encode_tag_keys(keys)
    assert all(len(v) <= 256 for v in encoded.values())
    assert len(encoded) + len(keys) + 4 <= 50
    assert decode_tag_keys(encoded) == set(keys)


def test_tag_keys_too_long_to_list_are_refused_before_any_aws_call():
    keys = {f"key-{n:03d}-" + "k" * 100: "v" for n in range(40)}
    with pytest.raises(ValidationError, match="tag keys too long in total"):
        PipelineConfig.model_validate({"env": "dev", "tags": keys})

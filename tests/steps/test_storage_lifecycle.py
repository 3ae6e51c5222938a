"""The sensor bucket's lifecycle: the transition size rule sent explicitly (AWS keeps it, moto
forgets it: the behaviour table keeps it for moto), replaced versions expired and abandoned
multipart uploads aborted after the configured days; read back, drift, repair."""

from __future__ import annotations

import boto3
import pytest

from iotpipe.steps import kms, storage
from tests.awsbehaviour import FakeClock, install, rules_named
from tests.awsbehaviour.fixture import attach
from tests.support import CallLog, assert_repaired, by_id

REGION = "us-east-1"
BUCKET = "iot-sensor-data-dev-123456789012"
RESOURCES = kms.RESOURCES + storage.RESOURCES
KEEPS_SIZE = "s3.lifecycle-keeps-transition-minimum-object-size"


def sent_params(aws, operation: str) -> list[dict]:
    """The parameters of every ``operation`` call made through ``aws``, as sent."""
    seen: list[dict] = []

    def remember(params, model, **_):
        if model.name == operation:
            seen.append(dict(params))

    aws.events.register("provide-client-params.s3.*", remember, unique_id=f"sent-{operation}")
    return seen


def with_aws_memory(engine):
    """The engine's clients and an out-of-band client both see S3 keep the size rule."""
    behaviour = attach(engine.ctx.aws, rules_named(KEEPS_SIZE), FakeClock())
    session = boto3.session.Session(region_name=REGION)
    install(session._session.get_component("event_emitter"), behaviour)
    return session.client("s3")


def lifecycle_rules(client=None) -> dict[str, dict]:
    rules = (client or boto3.client("s3", region_name=REGION)).get_bucket_lifecycle_configuration(
        Bucket=BUCKET)["Rules"]
    return {rule["ID"]: rule for rule in rules}


def lifecycle_rule(client=None):
    return lifecycle_rules(client)[storage.LIFECYCLE_RULE_ID]


def test_the_size_rule_is_always_sent_and_the_cleanup_rules_are_set(make, log):
    engine = make(resources=RESOURCES, log=log)
    sent = sent_params(engine.ctx.aws, "PutBucketLifecycleConfiguration")
    engine.up()
    (params,) = [p for p in sent if p["Bucket"] == BUCKET]  # the access-log bucket has its own
    assert params["TransitionDefaultMinimumObjectSize"] == "all_storage_classes_128K"
    rule = lifecycle_rule()
    assert rule["Transitions"] == [{"Days": 90, "StorageClass": "GLACIER"}]
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 7}
    log.clear()
    engine.up()
    assert log.mutating == []


def test_days_come_from_the_config(make):
    make(resources=RESOURCES, sets=("storage.enforce_tls=false", "storage.noncurrent_version_expiration_days=14",
                                    "storage.abort_incomplete_upload_days=2")).up()
    rule = lifecycle_rule()
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 14}
    assert rule["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 2}


def test_small_objects_to_glacier_on_request_read_back_and_kept(make, log):
    engine = make(resources=RESOURCES, log=log,
                  sets=("storage.enforce_tls=false", "storage.glacier_min_object_size=\"varies_by_storage_class\""))
    outside = with_aws_memory(engine)
    engine.up()
    assert outside.get_bucket_lifecycle_configuration(Bucket=BUCKET)[
        "TransitionDefaultMinimumObjectSize"] == "varies_by_storage_class"
    log.clear()
    assert engine.up().in_sync and log.mutating == []
    # Someone rewrites the lifecycle without the header: AWS falls back to 128 KB.
    rules = list(lifecycle_rules(outside).values())
    outside.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": rules})
    assert_repaired(engine, log, "storage.sensor_bucket", "lifecycle",
                    {"s3.PutBucketLifecycleConfiguration": 1})
    assert outside.get_bucket_lifecycle_configuration(Bucket=BUCKET)[
        "TransitionDefaultMinimumObjectSize"] == "varies_by_storage_class"


@pytest.mark.parametrize("drop", ["NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload"])
def test_a_cleanup_rule_removed_out_of_band_is_drift_and_repaired(make, drop):
    log = CallLog()
    engine = make(resources=RESOURCES, log=log)
    engine.up()
    rules = lifecycle_rules()
    rule = {k: v for k, v in rules.pop(storage.LIFECYCLE_RULE_ID).items() if k != drop}
    boto3.client("s3", region_name=REGION).put_bucket_lifecycle_configuration(
        Bucket=BUCKET, LifecycleConfiguration={"Rules": [rule, *rules.values()]})
    changed = by_id(engine.status(), "storage.sensor_bucket").changes
    assert [c.field for c in changed] == ["lifecycle"]
    assert_repaired(engine, log, "storage.sensor_bucket", "lifecycle", {"s3.PutBucketLifecycleConfiguration": 1})
    assert drop in lifecycle_rule()


def test_failure_records_expire_after_their_own_days_and_stay_out_of_glacier(make, log):
    """The mapping's failure records (aws/lambda/) expire after storage.failure_record_expiration_days;
    a rule removed out of band is drift; days beyond the Glacier transition are refused."""
    engine = make(resources=RESOURCES, log=log,
                  sets=("storage.enforce_tls=false", "storage.failure_record_expiration_days=9"))
    engine.up()
    rule = lifecycle_rules()[storage.FAILURE_RECORDS_RULE_ID]
    assert rule["Filter"] == {"Prefix": "aws/lambda/"}
    assert rule["Expiration"] == {"Days": 9}
    assert rule["NoncurrentVersionExpiration"] == {"NoncurrentDays": 30}
    assert "Transitions" not in rule
    others = [r for i, r in lifecycle_rules().items() if i != storage.FAILURE_RECORDS_RULE_ID]
    boto3.client("s3", region_name=REGION).put_bucket_lifecycle_configuration(
        Bucket=BUCKET, LifecycleConfiguration={"Rules": others})
    assert_repaired(engine, log, "storage.sensor_bucket", "lifecycle", {"s3.PutBucketLifecycleConfiguration": 1})
    from iotpipe.config import load_config
    from iotpipe.errors import ConfigError

    with pytest.raises(ConfigError, match="failure_record_expiration_days"):
        load_config("dev", region=REGION, assignments=("storage.failure_record_expiration_days=91",))

"""The Kinesis stream against in-process moto."""

from __future__ import annotations

import boto3
import pytest

from iotpipe.errors import OwnershipError
from iotpipe.steps import kms, stream
from iotpipe.steps.stream import SensorStream
from tests.support import CallLog, by_id

REGION = "us-east-1"
STREAM = "iot-sensor-stream-dev"
LID = SensorStream.logical_id
RESOURCES = kms.RESOURCES + stream.RESOURCES


def kinesis():
    return boto3.client("kinesis", region_name=REGION)


def summary():
    return kinesis().describe_stream_summary(StreamName=STREAM)["StreamDescriptionSummary"]


def tags():
    return {t["Key"]: t["Value"] for t in kinesis().list_tags_for_stream(StreamName=STREAM)["Tags"]}



@pytest.fixture
def env(make):
    log = CallLog()
    engine = make(resources=RESOURCES, log=log)
    result = engine.up()
    log.clear()
    return engine, log, result.outputs


def test_stream_is_created_with_every_attribute(env):
    engine, _log, outputs = env
    s = summary()
    assert s["StreamStatus"] == "ACTIVE"
    assert s["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}
    assert s["RetentionPeriodHours"] == engine.ctx.config.stream.retention_hours
    assert s["EncryptionType"] == "KMS"
    assert s["KeyId"] == outputs["kms_key_arn"]
    t = tags()
    assert t["iotpipe:env"] == "dev" and t["iotpipe:resource"] == LID and t["managed-by"] == "iotpipe"
    assert engine.store.get(LID).ids == {"name": STREAM, "arn": s["StreamARN"]}
    assert outputs["kinesis_stream_arn"] == s["StreamARN"]


def test_converged_stream_costs_reads_only(env):
    engine, log, _ = env
    result = engine.up()
    assert log.mutating == []
    assert {r.action for r in result.resources} == {"unchanged"}


def _retention_up():
    kinesis().increase_stream_retention_period(StreamName=STREAM,
                                               RetentionPeriodHours=summary()["RetentionPeriodHours"] + 24)


def _stop_encryption():
    s = summary()
    kinesis().stop_stream_encryption(StreamName=STREAM, EncryptionType="KMS", KeyId=s["KeyId"])


def _untag():
    kinesis().remove_tags_from_stream(StreamName=STREAM, TagKeys=["iotpipe:resource"])


def _provisioned():
    kinesis().update_stream_mode(StreamARN=summary()["StreamARN"],
                                 StreamModeDetails={"StreamMode": "PROVISIONED"})


DRIFTS = {
    "retention_hours": (_retention_up, {"kinesis.DecreaseStreamRetentionPeriod": 1}),
    "encryption": (_stop_encryption, {"kinesis.StartStreamEncryption": 1}),
    "tags": (_untag, {"kinesis.AddTagsToStream": 1}),
    "mode": (_provisioned, {"kinesis.UpdateStreamMode": 1}),
}


@pytest.mark.parametrize("field", sorted(DRIFTS))
def test_stream_drift_is_reported_and_repaired(env, field):
    engine, log, _ = env
    drift, expected = DRIFTS[field]
    drift()
    status = by_id(engine.status())[LID]
    assert status.health == "drifted"
    assert [c.field for c in status.changes] == [field]
    planned = by_id(engine.plan())[LID]
    assert planned.action == "update" and [c.field for c in planned.changes] == [field]
    assert log.mutating == []
    assert by_id(engine.up())[LID].action == "update"
    assert dict(log.counts(mutating_only=True)) == expected
    assert engine.status().in_sync


def test_retention_follows_the_config(env, make):
    log = CallLog()
    make(resources=RESOURCES, sets=("stream.retention_hours=8000",), log=log).up()
    assert dict(log.counts(mutating_only=True)) == {"kinesis.IncreaseStreamRetentionPeriod": 1}
    assert summary()["RetentionPeriodHours"] == 8000


def test_a_key_given_by_id_is_not_drift(env):
    """describe_stream_summary echoes KeyId as given: the seed passes the key id, not the ARN."""
    engine, log, outputs = env
    kinesis().start_stream_encryption(StreamName=STREAM, EncryptionType="KMS", KeyId=outputs["kms_key_id"])
    assert summary()["KeyId"] == outputs["kms_key_id"]
    assert engine.status().in_sync
    engine.up()
    assert log.mutating == []


def test_a_bare_stream_left_by_a_crash_is_finished(make):
    log = CallLog()
    engine = make(resources=RESOURCES, log=log)
    kinesis().create_stream(StreamName=STREAM, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    engine.store.intend(LID, SensorStream.resource_type, STREAM)
    result = by_id(engine.up())[LID]
    assert result.action == "update"
    assert {c.field for c in result.changes} == {"encryption", "tags"}
    counts = log.counts(mutating_only=True)
    assert counts["kinesis.StartStreamEncryption"] == 1 and counts["kinesis.AddTagsToStream"] == 1
    assert "kinesis.CreateStream" not in counts
    assert engine.status().in_sync


def test_a_foreign_stream_is_refused_and_left_alone(make):
    kinesis().create_stream(StreamName=STREAM, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    engine = make(resources=RESOURCES)
    with pytest.raises(OwnershipError, match=STREAM):
        engine.up()
    assert by_id(engine.status())[LID].health == "foreign"
    assert by_id(engine.destroy())[LID].action == "skipped"
    assert summary()["StreamStatus"] == "ACTIVE"


def test_destroy_twice_is_quiet(env):
    engine, log, _ = env
    result = by_id(engine.destroy())
    assert result[LID].action == "delete"
    assert STREAM not in kinesis().list_streams()["StreamNames"]
    assert dict(log.counts(mutating_only=True))["kinesis.DeleteStream"] == 1
    log.clear()
    assert {r.action for r in engine.destroy().resources} == {"absent"}
    assert log.mutating == []

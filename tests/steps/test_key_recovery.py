"""A key scheduled for deletion out of band is recovered, never replaced (issue 8, item 3).

moto is lenient where AWS is not, so the AWS behaviour is reproduced here (KeyStates.attach):

- EnableKey on a key in PendingDeletion fails with KMSInvalidStateException ("... is pending
  deletion."); only CancelKeyDeletion takes a key out of that state, and leaves it Disabled.
  https://docs.aws.amazon.com/kms/latest/developerguide/key-state.html (key state table) and
  https://docs.aws.amazon.com/kms/latest/developerguide/deleting-keys-cancelling-key-deletion.html
  (moto enables a pending key without complaint.)
- ScheduleKeyDeletion on a key already pending deletion fails the same way (same table).
- GetKeyRotationStatus answers false while the key is pending deletion and the earlier status
  comes back once the deletion is cancelled.
  https://docs.aws.amazon.com/kms/latest/APIReference/API_GetKeyRotationStatus.html
  (also nccgroup/ScoutSuite#1174). moto keeps answering true.
"""

from __future__ import annotations

from datetime import UTC
from types import SimpleNamespace
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from iotpipe.errors import ExitCode
from iotpipe.steps import kms, storage, stream
from iotpipe.steps.kms import KeyPendingDeletionError
from tests.support import CallLog, by_id

REGION = "us-east-1"
ACCOUNT = "123456789012"
ALIAS = "alias/iot-manufacturing-dev"
RESOURCES = kms.RESOURCES + storage.RESOURCES + stream.RESOURCES


def client(service: str):
    return boto3.client(service, region_name=REGION)


def key_state(key_id: str) -> str:
    return client("kms").describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"]


class KeyStates:
    """The two AWS key-state rules moto does not enforce (see the module docstring)."""

    def attach(self, kms_client: Any) -> None:
        self.key_id: str | None = None
        events = kms_client.meta.events
        events.register("provide-client-params.kms.EnableKey", self._remember)
        events.register("provide-client-params.kms.GetKeyRotationStatus", self._remember)
        events.register("provide-client-params.kms.ScheduleKeyDeletion", self._remember)
        events.register("before-call.kms.EnableKey", self._refuse_if_pending)
        events.register("before-call.kms.ScheduleKeyDeletion", self._refuse_if_pending)
        events.register("before-call.kms.GetKeyRotationStatus", self._rotation)

    def _remember(self, params: dict[str, Any], **_: Any) -> None:
        self.key_id = params["KeyId"]

    def _refuse_if_pending(self, model: Any, **_: Any) -> None:
        if key_state(self.key_id) == "PendingDeletion":
            arn = client("kms").describe_key(KeyId=self.key_id)["KeyMetadata"]["Arn"]
            raise ClientError({"Error": {"Code": "KMSInvalidStateException",
                                         "Message": f"{arn} is pending deletion."}}, model.name)

    def _rotation(self, model: Any, **_: Any):
        if key_state(self.key_id) == "PendingDeletion":
            return SimpleNamespace(status_code=200, headers={}), {"KeyRotationEnabled": False}
        return None


def engine_with_aws_rules(make, sets=("storage.enforce_tls=false",), log: CallLog | None = None):
    engine = make(resources=RESOURCES, sets=sets, log=log)
    KeyStates().attach(engine.ctx.client("kms"))
    return engine


@pytest.fixture
def scheduled(make):
    """A deployed kms + storage + stream env whose key someone scheduled for deletion."""
    make(resources=RESOURCES).up()
    key = client("kms").describe_key(KeyId=ALIAS)["KeyMetadata"]
    client("kms").schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    assert key_state(key["KeyId"]) == "PendingDeletion"
    return key


def encryption_keys() -> dict[str, str]:
    bucket = client("s3").get_bucket_encryption(Bucket=f"iot-sensor-data-dev-{ACCOUNT}")
    rule = bucket["ServerSideEncryptionConfiguration"]["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    table = client("dynamodb").describe_table(TableName="sensor-metrics-dev")["Table"]["SSEDescription"]
    summary = client("kinesis").describe_stream_summary(StreamName="iot-sensor-stream-dev")
    return {"bucket": rule["KMSMasterKeyID"], "table": table["KMSMasterKeyArn"],
            "stream": summary["StreamDescriptionSummary"]["KeyId"]}


def test_status_names_the_pending_deletion_and_its_date(scheduled, make):
    result = by_id(engine_with_aws_rules(make).status(), "kms.key")
    assert result.health == "drifted" and result.ids["id"] == scheduled["KeyId"]
    deletion = client("kms").describe_key(KeyId=scheduled["KeyId"])["KeyMetadata"]["DeletionDate"]
    assert result.message == f"pending-deletion (until {deletion.astimezone(UTC):%Y-%m-%d %H:%M} UTC)"
    assert {"pending_deletion", "enabled"} <= {c.field for c in result.changes}


def test_up_recovers_the_same_key_and_makes_no_second_one(scheduled, make):
    before = encryption_keys()
    log = CallLog()
    engine = engine_with_aws_rules(make, log=log)

    result = engine.up()

    assert by_id(result, "kms.key").action == "update"
    assert log.counts(mutating_only=True) == {"kms.CancelKeyDeletion": 1, "kms.EnableKey": 1}
    assert ("kms", "CreateKey") not in log.calls
    key = client("kms").describe_key(KeyId=ALIAS)["KeyMetadata"]
    assert key["KeyId"] == scheduled["KeyId"] and key["KeyState"] == "Enabled"
    assert client("kms").get_key_rotation_status(KeyId=key["KeyId"])["KeyRotationEnabled"] is True
    assert encryption_keys() == before  # bucket, table and stream still on the same key
    assert scheduled["Arn"] in before.values()
    assert len([k for k in client("kms").list_keys()["Keys"]]) == 1
    log.clear()
    assert engine.status().in_sync
    engine.up()
    assert log.mutating == []


def test_recovery_switched_off_stops_up_with_the_key_and_date_and_writes_nothing(scheduled, make):
    log = CallLog()
    engine = engine_with_aws_rules(make, sets=("storage.enforce_tls=false",
                                               "kms.recover_pending_deletion=false"), log=log)
    with pytest.raises(KeyPendingDeletionError) as raised:
        engine.up()
    assert raised.value.exit_code == ExitCode.KEY_PENDING_DELETION
    assert scheduled["KeyId"] in str(raised.value) and "kms.recover_pending_deletion" in str(raised.value)
    deletion = client("kms").describe_key(KeyId=scheduled["KeyId"])["KeyMetadata"]["DeletionDate"]
    assert deletion.strftime("%Y-%m-%d") in str(raised.value)
    assert log.mutating == []
    assert key_state(scheduled["KeyId"]) == "PendingDeletion"
    assert len(client("kms").list_keys()["Keys"]) == 1


def test_destroy_of_a_key_already_pending_deletion_is_done_and_keeps_its_date(scheduled, make):
    deletion = client("kms").describe_key(KeyId=scheduled["KeyId"])["KeyMetadata"]["DeletionDate"]
    engine = make(resources=kms.RESOURCES)
    KeyStates().attach(engine.ctx.client("kms"))
    result = engine.destroy()
    assert by_id(result, "kms.key").action == "scheduled"
    meta = client("kms").describe_key(KeyId=scheduled["KeyId"])["KeyMetadata"]
    assert meta["KeyState"] == "PendingDeletion" and meta["DeletionDate"] == deletion
    assert engine.store.get("kms.key") is None

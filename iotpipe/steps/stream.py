"""The Kinesis stream IoT Core writes sensor readings into and the processor reads from.

On-demand capacity (no shard sizing to get wrong), the configured retention, and encryption
with the pipeline's KMS key. A stream goes UPDATING after each of those changes and refuses
the next one until it is ACTIVE again, so every change is followed by the `stream_exists`
waiter (which waits for ACTIVE).
"""

from __future__ import annotations

from typing import Any

from iotpipe.aws import error_code
from iotpipe.steps.base import (
    Change,
    Current,
    Resource,
    Spec,
    StepContext,
    UnknownYet,
    changed_fields,
    filter_tags,
    get_or_none,
    known_key,
    our_key_arn,
    tag_changes,
    tolerate_gone,
)
from iotpipe.timing import STREAM_ACTIVE

ADD_TAGS_MAX = 10  # AddTagsToStream takes at most 10 tags per call
REMOVE_TAGS_MAX = 50
# Stream changes finish in seconds to a few minutes: polled at the interval that fits
# (timing.py), for up to 10 minutes.
STREAM_WAIT = {"Delay": STREAM_ACTIVE.poll_s, "MaxAttempts": int(600 / STREAM_ACTIVE.poll_s)}


class SensorStream(Resource):
    logical_id = "stream.sensor_stream"
    resource_type = "AWS::Kinesis::Stream"
    depends_on = ("kms.key",)  # encrypted with it (its ARN is read)
    read_needs = ("kms.key",)  # the key its encryption names is told by the key's ARN
    name_field = "stream"
    expected_s = 2 * STREAM_ACTIVE.seconds  # CREATING, then UPDATING while encryption starts

    def desired(self, ctx: StepContext) -> Spec:
        key_arn = ctx.ref("kms.key", "arn")
        return {
            "mode": "ON_DEMAND",
            "retention_hours": ctx.config.stream.retention_hours,
            "encryption": key_arn if isinstance(key_arn, UnknownYet) else {"type": "KMS", "key": key_arn},
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        kinesis = ctx.client("kinesis")
        name = ctx.names.stream
        found = get_or_none(kinesis.describe_stream_summary, StreamName=name)
        if found is None:
            return None
        summary = found["StreamDescriptionSummary"]
        if summary.get("StreamStatus") == "DELETING":
            return None  # going away: create() waits for the name to free up
        tags = _list_tags(kinesis, name)
        encryption = summary.get("EncryptionType") or "NONE"
        spec = {
            "mode": (summary.get("StreamModeDetails") or {}).get("StreamMode", "PROVISIONED"),
            "retention_hours": summary.get("RetentionPeriodHours"),
            "encryption": {"type": encryption,
                           "key": our_key_arn(ctx, summary.get("KeyId")) if encryption != "NONE" else None},
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        return Current(spec, {"name": name, "arn": summary["StreamARN"]}, managed=ctx.owns(tags))

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        kinesis = ctx.client("kinesis")
        name = ctx.names.stream
        kwargs = {"StreamName": name, "StreamModeDetails": {"StreamMode": desired["mode"]},
                  "Tags": desired["tags"]}
        try:
            kinesis.create_stream(**kwargs)
        except Exception as err:
            if error_code(err) != "ResourceInUseException" or not _deleting(kinesis, name):
                raise
            # A destroy moments ago left the old stream DELETING; its name frees up shortly.
            ctx.aws.wait(kinesis, "stream_not_exists", StreamName=name, WaiterConfig=STREAM_WAIT)
            kinesis.create_stream(**kwargs)
        _wait_active(ctx, kinesis, name)
        summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
        # Some implementations (moto) drop CreateStream's Tags: add what did not land.
        to_set, _ = tag_changes(_list_tags(kinesis, name), desired["tags"])
        _add_tags(kinesis, name, to_set)
        if summary["RetentionPeriodHours"] != desired["retention_hours"]:
            _set_retention(ctx, kinesis, name, summary["RetentionPeriodHours"], desired["retention_hours"])
        _encrypt(ctx, kinesis, name, desired["encryption"])
        return {"name": name, "arn": summary["StreamARN"]}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        kinesis = ctx.client("kinesis")
        name = ctx.names.stream
        fields = changed_fields(changes)
        if fields - {"tags"}:
            _wait_active(ctx, kinesis, name)  # a run interrupted mid-change may have left it UPDATING
        if "mode" in fields:
            kinesis.update_stream_mode(StreamARN=current.ids["arn"],
                                       StreamModeDetails={"StreamMode": desired["mode"]})
            _wait_active(ctx, kinesis, name)
        if "retention_hours" in fields:
            _set_retention(ctx, kinesis, name, current.spec["retention_hours"], desired["retention_hours"])
        if "encryption" in fields:
            _encrypt(ctx, kinesis, name, desired["encryption"])
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec.get("tags") or {}, desired["tags"])
            _add_tags(kinesis, name, to_set)
            for start in range(0, len(to_remove), REMOVE_TAGS_MAX):
                kinesis.remove_tags_from_stream(StreamName=name,
                                                TagKeys=to_remove[start:start + REMOVE_TAGS_MAX])

    def delete(self, ctx: StepContext, current: Current) -> None:
        """EnforceConsumerDeletion: registered enhanced fan-out consumers die with the stream.

        No wait for the stream to be gone: nothing deleted after it (the KMS key, scheduled)
        needs that, ``read`` takes a DELETING stream for absent (a second destroy is quiet),
        and ``create`` waits for the name to free up (an `up` right after a destroy).
        """
        kinesis = ctx.client("kinesis")
        tolerate_gone(kinesis.delete_stream, StreamName=ctx.names.stream, EnforceConsumerDeletion=True)


def _wait_active(ctx: StepContext, kinesis: Any, name: str) -> None:
    ctx.aws.wait(kinesis, "stream_exists", StreamName=name, WaiterConfig=STREAM_WAIT)


def _deleting(kinesis: Any, name: str) -> bool:
    found = get_or_none(kinesis.describe_stream_summary, StreamName=name)
    return found is None or found["StreamDescriptionSummary"]["StreamStatus"] == "DELETING"


def _list_tags(kinesis: Any, name: str) -> dict[str, str]:
    """ListTagsForStream pages by the last key seen (moto has no ListTagsForResource)."""
    tags: dict[str, str] = {}
    kwargs: dict[str, Any] = {"StreamName": name}
    while True:
        page = kinesis.list_tags_for_stream(**kwargs)
        items = page.get("Tags", [])
        tags.update({t["Key"]: t.get("Value", "") for t in items})
        if not page.get("HasMoreTags") or not items:
            return tags
        kwargs["ExclusiveStartTagKey"] = items[-1]["Key"]


def _add_tags(kinesis: Any, name: str, tags: dict[str, str]) -> None:
    items = sorted(tags.items())
    for start in range(0, len(items), ADD_TAGS_MAX):
        kinesis.add_tags_to_stream(StreamName=name, Tags=dict(items[start:start + ADD_TAGS_MAX]))


def _set_retention(ctx: StepContext, kinesis: Any, name: str, current: int, want: int) -> None:
    if want > current:
        kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=want)
    else:
        kinesis.decrease_stream_retention_period(StreamName=name, RetentionPeriodHours=want)
    _wait_active(ctx, kinesis, name)


def _encrypt(ctx: StepContext, kinesis: Any, name: str, want: Any) -> None:
    want = known_key(want)
    kinesis.start_stream_encryption(StreamName=name, EncryptionType=want["type"], KeyId=want["key"])
    _wait_active(ctx, kinesis, name)


RESOURCES: tuple[Resource, ...] = (SensorStream(),)

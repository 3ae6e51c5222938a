"""S3: a bucket name is not free again the moment its bucket was deleted; settings AWS keeps that
moto forgets."""

from __future__ import annotations

from typing import Any

from tests.awsbehaviour.model import ErrorRule, StateRule, param, trigger_param

# What AWS applies when PutBucketLifecycleConfiguration omits the header (since September 2024).
DEFAULT_MIN_OBJECT_SIZE = "all_storage_classes_128K"


def _min_object_size(params: dict[str, Any]) -> str:
    return params.get("TransitionDefaultMinimumObjectSize") or DEFAULT_MIN_OBJECT_SIZE


def _set_min_object_size(parsed: dict[str, Any], _bucket: Any, value: Any) -> None:
    if "Rules" in parsed:
        parsed["TransitionDefaultMinimumObjectSize"] = value


RULES = (
    ErrorRule(
        # moto serialises every request, so two conditional writes never meet: it answers 412 or
        # 200, never AWS's 409. A scenario rule (no trigger, no condition): a test picks it.
        name="s3.conditional-write-conflict",
        service="s3", operation="PutObject", code="ConditionalRequestConflict", http_status=409,
        message="A conflicting operation occurred. If using PutObject you can retry the request. "
                "If using multipart upload you should initiate another CreateMultipartUpload "
                "request and re-upload each part.",
        times=1,
        source="https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html and "
               "https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html (IfMatch/IfNoneMatch: "
               "\"If a conflicting operation occurs during the upload S3 returns a 409 "
               "ConditionalRequestConflict response. On a 409 failure you should retry the upload\"); "
               "https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html (ConditionalRequestConflict, 409)",
    ),
    ErrorRule(
        name="s3.create-bucket-name-being-released",
        service="s3", operation="CreateBucket", code="OperationAborted", http_status=409,
        message="A conflicting conditional operation is currently in progress against this "
                "resource. Please try again.",
        after=("s3", "DeleteBucket"), duration_s=30.0,
        trigger_key=trigger_param("Bucket"), call_key=param("Bucket"),
        source="https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html (OperationAborted, "
               "409 Conflict); terraform-provider-aws docs/retries-and-waiters.md retries this text",
    ),
    StateRule(
        # moto accepts the header and drops it: every read says all_storage_classes_128K.
        name="s3.lifecycle-keeps-transition-minimum-object-size",
        service="s3", reads=("GetBucketLifecycleConfiguration",), value=_min_object_size,
        patch=_set_min_object_size,
        after=("s3", "PutBucketLifecycleConfiguration"), duration_s=float("inf"),
        trigger_key=trigger_param("Bucket"), call_key=param("Bucket"),
        source="https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutBucketLifecycleConfiguration.html "
               "and API_GetBucketLifecycleConfiguration.html (x-amz-transition-default-minimum-object-size: "
               "varies_by_storage_class | all_storage_classes_128K, echoed by GetBucketLifecycleConfiguration); "
               "https://docs.aws.amazon.com/AmazonS3/latest/userguide/lifecycle-transition-general-considerations.html "
               "(objects smaller than 128 KB are not transitioned by default since September 2024)",
    ),
)

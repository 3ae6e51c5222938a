"""S3: a bucket name is not free again the moment its bucket was deleted."""

from __future__ import annotations

from tests.awsbehaviour.model import ErrorRule, param, trigger_param

RULES = (
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
)

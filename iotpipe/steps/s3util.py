"""S3 pieces more than one step needs: emptying a bucket for deletion, the TLS-only statement.

Used by the trail bucket (trail.py); the sensor-data bucket (storage.py) can use the same.
"""

from __future__ import annotations

from typing import Any

from iotpipe.errors import AwsCallError

DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys per request


def tls_deny_statement(bucket_arn: str) -> dict[str, Any]:
    """Refuse every request to the bucket and its objects that does not arrive over TLS."""
    return {
        "Sid": "DenyInsecureTransport",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def empty_bucket(s3: Any, name: str) -> int:
    """Delete every object version and delete marker, so that DeleteBucket can succeed.

    Pages through ListObjectVersions (which also lists the objects of a bucket that was never
    versioned, with version id "null") and deletes each page in batches of at most 1000.
    DeleteObjects answers 200 even when some keys failed: those come back under ``Errors`` and
    are raised, since a bucket left half-full would fail its DeleteBucket anyway, less clearly.
    Returns the number of versions and markers deleted.
    """
    deleted = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        batch = [{"Key": item["Key"], "VersionId": item["VersionId"]}
                 for item in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(batch), DELETE_BATCH):
            chunk = batch[start:start + DELETE_BATCH]
            answer = s3.delete_objects(Bucket=name, Delete={"Objects": chunk, "Quiet": True})
            errors = answer.get("Errors", [])
            if errors:
                first = errors[0]
                raise AwsCallError(
                    f"emptying bucket {name}: {len(errors)} object version(s) could not be deleted, "
                    f"first {first.get('Key')!r}: {first.get('Code')}: {first.get('Message')}")
            deleted += len(chunk)
    return deleted

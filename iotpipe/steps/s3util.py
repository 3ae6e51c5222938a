"""S3 bucket mechanics both buckets need (sensor data in storage.py, audit logs in trail.py).

Ansible's ``s3_bucket`` shape: each aspect (public access block, ownership, policy, tags) has
one reader that normalises it, None when never set, and one setter that makes the one call
that sets it. A step decides which aspects its bucket has and in which order they are set;
this module knows only how each is read and written, plus creating (global names!), emptying
and deleting a bucket.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from iotpipe.aws import BUCKET_NAME_BEING_RELEASED, error_code, is_not_found
from iotpipe.errors import AwsCallError, OwnershipError
from iotpipe.steps.base import (
    TAG_REGION,
    Current,
    Spec,
    StepContext,
    UnknownYet,
    filter_tags,
    get_or_none,
    known_key,
    our_key_arn,
    policy_json,
    read_together,
    tag_dict,
    tag_list,
    tolerate_gone,
)

DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys per request
LIST_PAGE = 1000  # ListObjectVersions returns at most 1000 entries per page
FORBIDDEN_CODES = frozenset({"403", "Forbidden", "AccessDenied"})
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}
OWNER_ENFORCED = "BucketOwnerEnforced"  # ACLs off: the bucket owner owns every object


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


def access_log_prefix(source_bucket: str) -> str:
    """One prefix per source bucket in the access-log bucket, so each bucket's logs stay apart."""
    return f"s3/{source_bucket}/"


def logging_target(ctx: StepContext, source_bucket: str) -> dict[str, str]:
    """The server access logging a bucket of the env gets: the env's access-log bucket."""
    return {"target_bucket": ctx.names.access_log_bucket, "target_prefix": access_log_prefix(source_bucket)}


# -- read ---------------------------------------------------------------------------------------
# What a bucket's read asks, besides HeadBucket: one GET per aspect, all at once (an
# aspect never configured answers NotFound: None).
COMMON_READS = ("get_bucket_tagging", "get_public_access_block", "get_bucket_ownership_controls",
                "get_bucket_policy")
# The steps' own aspects (each step asks the ones it sets; the access-log bucket logs nowhere).
ASPECT_READS = ("get_bucket_encryption", "get_bucket_versioning", "get_bucket_lifecycle_configuration",
                "get_bucket_logging")


def read_bucket_common(ctx: StepContext, logical_id: str, name: str, arn: str,
                       own_reads: tuple[str, ...], more: Callable[[dict[str, Any]], Spec]) -> Current | None:
    """The bucket's shared aspects plus ``more(answers)`` (the step's own), each None when unset.

    ``own_reads`` names the step's own GETs (``get_bucket_versioning``...); they are asked
    together with the shared ones (``read_together``) and ``more`` turns their answers,
    by name, into the step's fields. None when there is no bucket of that name. S3 names are
    global: a 403 on HeadBucket means another account owns this name, read as foreign and
    never adoptable. Every aspect is read as it is, so a bucket created by a run that
    stopped before its policy or tags reads as drifted and `up` finishes it.
    """
    s3 = ctx.client("s3")
    ids = {"name": name, "arn": arn}
    try:
        s3.head_bucket(Bucket=name)
    except Exception as err:
        if is_not_found(err):
            return None
        if error_code(err) in FORBIDDEN_CODES:
            return Current({}, ids, managed=False, adoptable=False)
        raise
    answers = read_together({op: _aspect_read(s3, op, name) for op in (*COMMON_READS, *own_reads)})
    tagging = answers["get_bucket_tagging"]
    tags = tag_dict(tagging["TagSet"]) if tagging else {}
    home = None if TAG_REGION in tags else bucket_region(s3, name)
    spec = {
        **more(answers),
        "public_access_block": norm_public_access_block(answers["get_public_access_block"]),
        "ownership": norm_ownership(answers["get_bucket_ownership_controls"]),
        "policy": norm_policy(answers["get_bucket_policy"]),
        "tags": filter_tags(ctx, logical_id, tags),
    }
    return Current.judged(ctx, spec, ids, tags, home_region=home)


def _aspect_read(s3: Any, op: str, name: str) -> Callable[[], Any]:
    return lambda: get_or_none(getattr(s3, op), Bucket=name)


def bucket_region(s3: Any, name: str) -> str | None:
    """Where the bucket lives: GetBucketLocation answers no LocationConstraint for us-east-1
    and the legacy "EU" for eu-west-1 (S3 API reference, GetBucketLocation). Used for a
    bucket made before iotpipe tagged its region: its location says which region's env it is."""
    found = get_or_none(s3.get_bucket_location, Bucket=name)
    if found is None:
        return None
    location = found.get("LocationConstraint") or "us-east-1"
    return "eu-west-1" if location == "EU" else location


def read_tags(s3: Any, name: str) -> dict[str, str]:
    answer = get_or_none(s3.get_bucket_tagging, Bucket=name)
    return tag_dict(answer["TagSet"]) if answer else {}


def norm_public_access_block(answer: dict[str, Any] | None) -> dict[str, bool] | None:
    if not answer:
        return None
    config = answer.get("PublicAccessBlockConfiguration") or {}
    return {k: bool(config.get(k, False)) for k in PUBLIC_ACCESS_BLOCK}


def norm_ownership(answer: dict[str, Any] | None) -> str | None:
    rules = ((answer or {}).get("OwnershipControls") or {}).get("Rules") or []
    return rules[0].get("ObjectOwnership") if rules else None


def norm_policy(answer: dict[str, Any] | None) -> dict[str, Any] | None:
    return json.loads(answer["Policy"]) if answer else None


def norm_logging(answer: dict[str, Any] | None) -> dict[str, str] | None:
    """GetBucketLogging answers without LoggingEnabled when server access logging is off."""
    enabled = (answer or {}).get("LoggingEnabled")
    if not enabled:
        return None
    return {"target_bucket": enabled.get("TargetBucket"), "target_prefix": enabled.get("TargetPrefix", "")}


def expiry_rule(rule_id: str, *, noncurrent_days: int, expiration_days: int | None = None) -> dict[str, Any]:
    """A lifecycle rule (our shape) that expires old versions, and current objects if given days."""
    return {"id": rule_id, "status": "Enabled", "prefix": "",
            "expiration_days": expiration_days, "noncurrent_days": noncurrent_days}


def norm_expiry_rules(answer: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """GetBucketLifecycleConfiguration's answer in ``expiry_rule``'s shape; anything else a
    rule does is kept under "other", so a transition or filter added by hand reads as drift."""
    if not answer:
        return None
    rules = []
    for rule in answer.get("Rules", []):
        rest = dict(rule)
        filt = dict(rest.pop("Filter", None) or {})
        out: dict[str, Any] = {
            "id": rest.pop("ID", None),
            "status": rest.pop("Status", None),
            "prefix": filt.pop("Prefix", rest.pop("Prefix", "")) or "",
            "expiration_days": (rest.pop("Expiration", None) or {}).get("Days"),
            "noncurrent_days": (rest.pop("NoncurrentVersionExpiration", None) or {}).get("NoncurrentDays"),
        }
        other = {k: v for k, v in rest.items() if v not in (None, [], {})}
        if filt:
            other["Filter"] = filt
        if other:
            out["other"] = other
        rules.append(out)
    return rules


def set_expiry_rules(s3: Any, name: str, want: list[dict[str, Any]]) -> None:
    rules = []
    for rule in want:
        aws_rule: dict[str, Any] = {"ID": rule["id"], "Status": rule["status"],
                                    "Filter": {"Prefix": rule["prefix"]},
                                    "NoncurrentVersionExpiration": {"NoncurrentDays": rule["noncurrent_days"]}}
        if rule.get("expiration_days"):
            aws_rule["Expiration"] = {"Days": rule["expiration_days"]}
        rules.append(aws_rule)
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": rules})


def kms_encryption(key_arn: Any) -> Any:
    """Default encryption with the env's key and a bucket key (placeholder while the key is unknown)."""
    return key_arn if isinstance(key_arn, UnknownYet) else {
        "algorithm": "aws:kms", "kms_key": key_arn, "bucket_key": True}


# S3 server access logs are delivered only into a bucket whose default encryption is SSE-S3:
# "Default server-side encryption with AWS KMS keys (SSE-KMS) is not supported" for the
# destination bucket (https://docs.aws.amazon.com/AmazonS3/latest/userguide/enable-server-access-logging.html).
SSE_S3 = {"algorithm": "AES256", "kms_key": None, "bucket_key": False}


def norm_encryption(ctx: StepContext, answer: dict[str, Any] | None) -> dict[str, Any] | None:
    rules = (answer or {}).get("ServerSideEncryptionConfiguration", {}).get("Rules") or []
    if not rules:
        return None
    default = rules[0].get("ApplyServerSideEncryptionByDefault") or {}
    return {
        "algorithm": default.get("SSEAlgorithm"),
        "kms_key": our_key_arn(ctx, default.get("KMSMasterKeyID")),
        "bucket_key": bool(rules[0].get("BucketKeyEnabled", False)),
    }


def set_encryption(s3: Any, name: str, want: dict[str, Any]) -> None:
    want = known_key(want)
    default: dict[str, Any] = {"SSEAlgorithm": want["algorithm"]}
    if want.get("kms_key"):
        default["KMSMasterKeyID"] = known_key(want["kms_key"])
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": want["bucket_key"]}]})


def norm_versioning(answer: dict[str, Any] | None) -> str | None:
    return (answer or {}).get("Status")


# -- write: one call per aspect ------------------------------------------------------------------
def create_bucket(ctx: StepContext, s3: Any, name: str, setting: str, **kwargs: Any) -> None:
    """CreateBucket; one already ours is no error (the caller finishes configuring it).

    ``setting`` is the config key that names the bucket, for the error when another account
    holds the name. S3 answers OperationAborted for a while after a bucket of the same name was
    deleted (an `up` right after a `destroy`): retried within aws.BUCKET_NAME_BEING_RELEASED.
    """
    if ctx.region != "us-east-1":  # us-east-1 rejects its own name as a LocationConstraint
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": ctx.region}
    try:
        ctx.aws.retrying(lambda: s3.create_bucket(Bucket=name, **kwargs), BUCKET_NAME_BEING_RELEASED)
    except Exception as err:
        code = error_code(err)
        if code == "BucketAlreadyExists":
            raise OwnershipError(
                f"S3 bucket name {name!r} is taken by another AWS account (bucket names are "
                f"global): set {setting} to another name in the config") from err
        if code != "BucketAlreadyOwnedByYou":
            raise


def set_public_access_block(s3: Any, name: str, want: dict[str, bool]) -> None:
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=want)


def set_ownership(s3: Any, name: str, want: str) -> None:
    s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": want}]})


def set_policy(s3: Any, name: str, want: dict[str, Any] | None) -> None:
    """None removes the policy: any policy present is not ours to keep."""
    if want is None:
        tolerate_gone(s3.delete_bucket_policy, Bucket=name)
    else:
        s3.put_bucket_policy(Bucket=name, Policy=policy_json(want))


def set_logging(s3: Any, name: str, want: dict[str, str] | None) -> None:
    """PutBucketLogging; None turns server access logging off (an empty BucketLoggingStatus).

    AWS checks, at this call, that the target bucket exists in the same region and account and
    that its policy lets logging.s3.amazonaws.com write (InvalidTargetBucketForLogging
    otherwise): the access-log bucket and its policy come first.
    """
    status = {} if want is None else {"LoggingEnabled": {"TargetBucket": want["target_bucket"],
                                                         "TargetPrefix": want["target_prefix"]}}
    s3.put_bucket_logging(Bucket=name, BucketLoggingStatus=status)


def set_versioning(s3: Any, name: str, want: str) -> None:
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": want})


def set_tags(ctx: StepContext, s3: Any, name: str, logical_id: str, want: dict[str, str]) -> None:
    """PutBucketTagging replaces the whole set: keep the tags others put on the bucket."""
    existing = read_tags(s3, name)
    ours = filter_tags(ctx, logical_id, existing)
    others = {k: v for k, v in existing.items() if k not in ours}
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_list({**others, **want})})


def emptying_reporter(ctx: StepContext) -> Callable[[str, int], None]:
    return lambda message, deleted: ctx.aws.report("emptying", message, deleted=deleted)


# -- delete --------------------------------------------------------------------------------------
def delete_bucket(s3: Any, name: str, report: Callable[[str, int], None] | None = None) -> None:
    """Policy first (a Deny must not block the emptying; a TLS-only Deny blocks object
    deletes on the emulator), then every version and delete marker, then the bucket.
    Each step tolerates its own target being gone, and DeleteBucket always runs."""
    tolerate_gone(s3.delete_bucket_policy, Bucket=name)
    tolerate_gone(empty_bucket, s3, name, report)
    tolerate_gone(s3.delete_bucket, Bucket=name)


def empty_bucket(s3: Any, name: str, report: Callable[[str, int], None] | None = None) -> int:
    """Delete every object version and delete marker, so that DeleteBucket can succeed.

    Lists from the start again after each deleted page instead of following the listing's
    markers: a marker may point at a version just deleted, and the emulator (moto) then
    answers the next page empty although versions remain (measured on moto 5.2), which left every
    bucket of more than 1,000 versions undeletable. On AWS the re-listing costs nothing more:
    the next page simply begins where the deleted one ended. ListObjectVersions also lists
    the objects of a bucket that was never versioned, with version id "null".
    DeleteObjects answers 200 even when some keys failed: those come back under ``Errors`` and
    are raised, since a bucket left half-full would fail its DeleteBucket anyway, less clearly.
    A page holding only versions already deleted means the deletes did not take: raised too,
    rather than listing forever. Returns the number of versions and markers deleted.
    """
    deleted: set[tuple[str, str]] = set()
    while True:
        page = s3.list_object_versions(Bucket=name, MaxKeys=LIST_PAGE)
        batch = [{"Key": item["Key"], "VersionId": item["VersionId"]}
                 for item in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        if not batch:
            return len(deleted)
        if all((v["Key"], v["VersionId"]) in deleted for v in batch):
            raise AwsCallError(f"emptying bucket {name}: {len(batch)} object version(s) still listed "
                               f"after DeleteObjects reported them deleted, first {batch[0]['Key']!r}")
        for start in range(0, len(batch), DELETE_BATCH):
            chunk = batch[start:start + DELETE_BATCH]
            answer = s3.delete_objects(Bucket=name, Delete={"Objects": chunk, "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise AwsCallError(
                    f"emptying bucket {name}: {len(errors)} object version(s) could not be deleted, "
                    f"first {first.get('Key')!r} ({first.get('VersionId')}): "
                    f"{first.get('Code')}: {first.get('Message')}")
            deleted.update((v["Key"], v["VersionId"]) for v in chunk)
            if report is not None:  # a bucket of a million versions takes minutes: say how far
                report(f"emptying bucket {name}: {len(deleted)} object version(s) deleted so far",
                       len(deleted))

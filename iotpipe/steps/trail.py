"""CloudTrail: the audit trail of every API call, and the bucket its log files land in.

Fixes over the seed: the bucket blocks all public access, enforces bucket-owner ownership and
(optionally) TLS; its policy lets CloudTrail write only for *our* trail (aws:SourceArn) and only
under AWSLogs/<account>/; the trail validates its log files (digest files), so tampering with
the audit log is detectable.

The bucket policy is part of the bucket's spec rather than a resource of its own: the bucket
is created with it before the trail step runs (CreateTrail checks the policy on AWS), and a
bucket whose policy went missing reads as drifted and gets it back.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from iotpipe.aws import error_code, is_not_found
from iotpipe.errors import OwnershipError
from iotpipe.steps.base import (
    Change,
    Current,
    Resource,
    Spec,
    StepContext,
    changed_fields,
    filter_tags,
    ignore_not_found,
    policy_json,
    tag_changes,
    tag_dict,
    tag_list,
)
from iotpipe.steps.s3util import empty_bucket, tls_deny_statement

CLOUDTRAIL = "cloudtrail.amazonaws.com"
OWNERSHIP = "BucketOwnerEnforced"  # ACLs off; CloudTrail's x-amz-acl condition still holds
PUBLIC_ACCESS_BLOCK = {
    "BlockPublicAcls": True,
    "IgnorePublicAcls": True,
    "BlockPublicPolicy": True,
    "RestrictPublicBuckets": True,
}


def bucket_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("s3", ctx.names.trail_bucket, region=False, account=False)


def trail_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("cloudtrail", f"trail/{ctx.names.trail}")


def trail_bucket_policy(ctx: StepContext) -> dict[str, Any]:
    """CloudTrail's documented bucket policy, pinned to our trail (confused-deputy guard)."""
    bucket = bucket_arn(ctx)
    only_our_trail = {"aws:SourceArn": trail_arn(ctx)}
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AWSCloudTrailAclCheck",
            "Effect": "Allow",
            "Principal": {"Service": CLOUDTRAIL},
            "Action": "s3:GetBucketAcl",
            "Resource": bucket,
            "Condition": {"StringEquals": only_our_trail},
        },
        {
            "Sid": "AWSCloudTrailWrite",
            "Effect": "Allow",
            "Principal": {"Service": CLOUDTRAIL},
            "Action": "s3:PutObject",
            "Resource": f"{bucket}/AWSLogs/{ctx.account}/*",
            "Condition": {"StringEquals": {"s3:x-amz-acl": "bucket-owner-full-control", **only_our_trail}},
        },
    ]
    if ctx.config.storage.enforce_tls:
        statements.append(tls_deny_statement(bucket))
    return {"Version": "2012-10-17", "Statement": statements}


def _get(call: Any, **kwargs: Any) -> Any | None:
    """One S3 configuration read; an aspect never set reads as None (so diff shows it)."""
    try:
        return call(**kwargs)
    except Exception as err:
        if is_not_found(err):
            return None
        raise


class TrailBucket(Resource):
    logical_id = "trail.bucket"
    resource_type = "AWS::S3::Bucket"

    def name(self, ctx: StepContext) -> str:
        return ctx.names.trail_bucket

    def desired(self, ctx: StepContext) -> Spec:
        return {
            "encryption": {"sse_algorithm": "AES256"},
            "public_access_block": dict(PUBLIC_ACCESS_BLOCK),
            "ownership": OWNERSHIP,
            "policy": trail_bucket_policy(ctx),
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        """Every aspect as it is, each None when unset: a bucket created by a run that crashed
        before its policy or tags reads as drifted and `up` finishes it."""
        s3 = ctx.client("s3")
        name = self.name(ctx)
        ids = {"name": name, "arn": bucket_arn(ctx)}
        try:
            s3.head_bucket(Bucket=name)
        except ClientError as err:
            if is_not_found(err):
                return None
            if error_code(err) in ("403", "AccessDenied", "Forbidden"):
                # Bucket names are global: another account owns this one.
                return Current({}, ids, managed=False, adoptable=False)
            raise
        tagging = _get(s3.get_bucket_tagging, Bucket=name)
        tags = tag_dict(tagging["TagSet"]) if tagging else {}
        encryption = _get(s3.get_bucket_encryption, Bucket=name)
        block = _get(s3.get_public_access_block, Bucket=name)
        ownership = _get(s3.get_bucket_ownership_controls, Bucket=name)
        policy = _get(s3.get_bucket_policy, Bucket=name)
        spec = {
            "encryption": _encryption(encryption),
            "public_access_block": block["PublicAccessBlockConfiguration"] if block else None,
            "ownership": (ownership["OwnershipControls"]["Rules"][0]["ObjectOwnership"]
                          if ownership and ownership["OwnershipControls"].get("Rules") else None),
            "policy": policy["Policy"] if policy else None,
            "tags": filter_tags(ctx, self.logical_id, tags),
            "all_tags": tags,  # not compared: PutBucketTagging replaces the set, keep others' tags
        }
        return Current(spec, ids, managed=ctx.owns(tags))

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        s3 = ctx.client("s3")
        name = self.name(ctx)
        kwargs: dict[str, Any] = {"Bucket": name, "ObjectOwnership": desired["ownership"]}
        if ctx.region != "us-east-1":  # us-east-1 rejects its own name as a LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": ctx.region}
        try:
            s3.create_bucket(**kwargs)
        except ClientError as err:
            if error_code(err) == "BucketAlreadyExists":
                raise OwnershipError(
                    f"S3 bucket name {name!r} is taken by another AWS account (bucket names are "
                    "global): set trail.bucket_name in the config") from err
            if error_code(err) != "BucketAlreadyOwnedByYou":
                raise
        # Tags first: they are what marks the bucket ours if the run stops here.
        s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_list(desired["tags"])})
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=desired["public_access_block"])
        self._put_encryption(s3, name, desired)
        s3.put_bucket_policy(Bucket=name, Policy=policy_json(desired["policy"]))
        return {"name": name, "arn": bucket_arn(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        s3 = ctx.client("s3")
        name = self.name(ctx)
        fields = changed_fields(changes)
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec["tags"], desired["tags"])
            merged = {k: v for k, v in current.spec.get("all_tags", {}).items() if k not in to_remove}
            merged.update(to_set)
            s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_list(merged)})
        if "public_access_block" in fields:
            s3.put_public_access_block(Bucket=name,
                                       PublicAccessBlockConfiguration=desired["public_access_block"])
        if "ownership" in fields:
            s3.put_bucket_ownership_controls(
                Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": desired["ownership"]}]})
        if "encryption" in fields:
            self._put_encryption(s3, name, desired)
        if "policy" in fields:
            s3.put_bucket_policy(Bucket=name, Policy=policy_json(desired["policy"]))

    def delete(self, ctx: StepContext, current: Current) -> None:
        """Policy first (a TLS-only Deny blocks object deletes on the emulator), then every
        version and delete marker, then the bucket."""
        s3 = ctx.client("s3")
        name = self.name(ctx)
        with ignore_not_found():
            s3.delete_bucket_policy(Bucket=name)
        with ignore_not_found():
            empty_bucket(s3, name)
        with ignore_not_found():
            s3.delete_bucket(Bucket=name)

    @staticmethod
    def _put_encryption(s3: Any, name: str, desired: Spec) -> None:
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": desired["encryption"]["sse_algorithm"]}}]})


def _encryption(answer: dict[str, Any] | None) -> dict[str, str] | None:
    if not answer:
        return None
    rules = answer.get("ServerSideEncryptionConfiguration", {}).get("Rules", [])
    default = rules[0].get("ApplyServerSideEncryptionByDefault", {}) if rules else {}
    if not default:
        return None
    found = {"sse_algorithm": default.get("SSEAlgorithm", "")}
    if default.get("KMSMasterKeyID"):
        found["kms_master_key_id"] = default["KMSMasterKeyID"]
    return found


# Spec field -> CreateTrail/UpdateTrail parameter, for the fields UpdateTrail sets.
TRAIL_PARAMS = {
    "s3_bucket_name": "S3BucketName",
    "include_global_service_events": "IncludeGlobalServiceEvents",
    "is_multi_region_trail": "IsMultiRegionTrail",
    "log_file_validation": "EnableLogFileValidation",
}
MANAGEMENT_EVENTS = [{"ReadWriteType": "All", "IncludeManagementEvents": True}]


class Trail(Resource):
    logical_id = "trail.trail"
    resource_type = "AWS::CloudTrail::Trail"
    depends_on = ("trail.bucket",)

    def name(self, ctx: StepContext) -> str:
        return ctx.names.trail

    def desired(self, ctx: StepContext) -> Spec:
        return {
            "s3_bucket_name": ctx.names.trail_bucket,
            "include_global_service_events": True,
            "is_multi_region_trail": False,
            "log_file_validation": ctx.config.trail.log_file_validation,
            "event_selectors": [dict(s) for s in MANAGEMENT_EVENTS],
            "insight_selectors": ["ApiCallRateInsight"] if ctx.config.trail.insights else [],
            "logging": True,
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        """The trail plus its selectors and logging status: a trail created by a run that
        stopped before StartLogging or PutEventSelectors reads as drifted, not as done."""
        cloudtrail = ctx.client("cloudtrail")
        name = self.name(ctx)
        try:
            trail = cloudtrail.get_trail(Name=name)["Trail"]
        except Exception as err:
            if is_not_found(err):
                return None
            raise
        arn = trail["TrailARN"]
        selectors = cloudtrail.get_event_selectors(TrailName=name).get("EventSelectors", [])
        listed = cloudtrail.list_tags(ResourceIdList=[arn]).get("ResourceTagList", [])
        tags = tag_dict(listed[0].get("TagsList", [])) if listed else {}
        spec = {
            "s3_bucket_name": trail.get("S3BucketName"),
            "include_global_service_events": trail.get("IncludeGlobalServiceEvents"),
            "is_multi_region_trail": trail.get("IsMultiRegionTrail"),
            "log_file_validation": trail.get("LogFileValidationEnabled"),
            "event_selectors": [_event_selector(s) for s in selectors],
            "insight_selectors": _insight_types(cloudtrail, name),
            "logging": bool(cloudtrail.get_trail_status(Name=name).get("IsLogging")),
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        return Current(spec, {"name": trail["Name"], "arn": arn}, managed=ctx.owns(tags))

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        cloudtrail = ctx.client("cloudtrail")
        name = self.name(ctx)
        made = cloudtrail.create_trail(
            Name=name,
            **{param: desired[field] for field, param in TRAIL_PARAMS.items()},
            TagsList=tag_list(desired["tags"]),
        )
        cloudtrail.put_event_selectors(TrailName=name, EventSelectors=desired["event_selectors"])
        if desired["insight_selectors"]:
            self._put_insights(cloudtrail, name, desired)
        if desired["logging"]:
            cloudtrail.start_logging(Name=name)
        return {"name": name, "arn": made["TrailARN"]}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        cloudtrail = ctx.client("cloudtrail")
        name = self.name(ctx)
        fields = changed_fields(changes)
        trail_fields = {TRAIL_PARAMS[f]: desired[f] for f in TRAIL_PARAMS if f in fields}
        if trail_fields:
            cloudtrail.update_trail(Name=name, **trail_fields)
        if "event_selectors" in fields:
            cloudtrail.put_event_selectors(TrailName=name, EventSelectors=desired["event_selectors"])
        if "insight_selectors" in fields:
            self._put_insights(cloudtrail, name, desired)  # an empty list turns Insights off
        if "tags" in fields:
            arn = current.ids["arn"]
            to_set, to_remove = tag_changes(current.spec["tags"], desired["tags"])
            if to_set:
                cloudtrail.add_tags(ResourceId=arn, TagsList=tag_list(to_set))
            if to_remove:
                cloudtrail.remove_tags(ResourceId=arn, TagsList=[{"Key": k} for k in to_remove])
        if "logging" in fields:  # last: a trail starts logging once it is fully configured
            if desired["logging"]:
                cloudtrail.start_logging(Name=name)
            else:
                cloudtrail.stop_logging(Name=name)

    def delete(self, ctx: StepContext, current: Current) -> None:
        with ignore_not_found():
            ctx.client("cloudtrail").delete_trail(Name=self.name(ctx))

    @staticmethod
    def _put_insights(cloudtrail: Any, name: str, desired: Spec) -> None:
        cloudtrail.put_insight_selectors(
            TrailName=name, InsightSelectors=[{"InsightType": t} for t in desired["insight_selectors"]])


def _event_selector(selector: dict[str, Any]) -> dict[str, Any]:
    """Only what matters: AWS also reports empty DataResources/ExcludeManagementEventSources."""
    found = {"ReadWriteType": selector.get("ReadWriteType"),
             "IncludeManagementEvents": selector.get("IncludeManagementEvents")}
    for key in ("DataResources", "ExcludeManagementEventSources"):
        if selector.get(key):
            found[key] = selector[key]
    return found


def _insight_types(cloudtrail: Any, name: str) -> list[str]:
    """The enabled Insights types, deduplicated (moto appends on every PutInsightSelectors).

    AWS answers InsightNotEnabledException for a trail that never had Insights.
    """
    try:
        answer = cloudtrail.get_insight_selectors(TrailName=name)
    except ClientError as err:
        if error_code(err) == "InsightNotEnabledException":
            return []
        raise
    return sorted({s["InsightType"] for s in answer.get("InsightSelectors", []) if s.get("InsightType")})


RESOURCES: tuple[Resource, ...] = (TrailBucket(), Trail())

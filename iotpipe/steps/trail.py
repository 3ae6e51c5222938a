"""CloudTrail: the audit trail of every API call, and the bucket its log files land in.

Fixes over the seed: the bucket blocks all public access, enforces bucket-owner ownership and
(optionally) TLS; its policy lets CloudTrail write only for *our* trail (aws:SourceArn) and only
under AWSLogs/<account>/; the trail validates its log files (digest files), so tampering with
the audit log is detectable. Log files are SSE-KMS with the env's key (trail KmsKeyId; the key
policy lets only this trail use it), the bucket is SSE-KMS too, versioned (old versions expire)
and its own access is logged into the env's access-log bucket.

The bucket policy is part of the bucket's spec rather than a resource of its own: the bucket
is created with it before the trail step runs (CreateTrail checks the policy on AWS), and a
bucket whose policy went missing reads as drifted and gets it back.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from iotpipe.aws import error_code
from iotpipe.errors import QuotaError
from iotpipe.steps import s3util
from iotpipe.steps.base import (
    Change,
    Current,
    Resource,
    Spec,
    StepContext,
    changed_fields,
    filter_tags,
    get_or_none,
    known_key,
    our_key_arn,
    read_together,
    tag_changes,
    tag_dict,
    tag_list,
    tolerate_gone,
)

CLOUDTRAIL = "cloudtrail.amazonaws.com"
# "Trails per Region: 5 ... This quota cannot be increased." A multi-region trail exists (as a
# shadow trail) in every region and takes a place there too.
# https://docs.aws.amazon.com/awscloudtrail/latest/userguide/WhatIsCloudTrail-Limits.html
TRAILS_PER_REGION = 5
# Since 2021-11-22 CloudTrail records IAM, STS and CloudFront events in us-east-1 only.
# https://docs.aws.amazon.com/awscloudtrail/latest/userguide/cloudtrail-create-and-update-a-trail-by-using-the-aws-cli-update-trail.html
GLOBAL_EVENTS_REGION = "us-east-1"
DISABLED = "trail.enabled = false"


def _disabled(ctx: StepContext) -> str | None:
    return None if ctx.config.trail.enabled else DISABLED


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
        statements.append(s3util.tls_deny_statement(bucket))
    return {"Version": "2012-10-17", "Statement": statements}


TRAIL_LOG_RULE_ID = "expire-old-log-versions"


class TrailBucket(Resource):
    """The audit log bucket: SSE-KMS with the env's key and a bucket key, versioned (a deleted
    or overwritten log file stays recoverable until its old version expires), its own access
    logged into the env's access-log bucket."""

    logical_id = "trail.bucket"
    resource_type = "AWS::S3::Bucket"
    depends_on = ("kms.key", "storage.access_log_bucket")  # encrypted with the key; logs to that bucket
    read_needs = ("kms.key",)  # the key its encryption names is told by the key's ARN

    name_field = "trail_bucket"

    def disabled_by(self, ctx: StepContext) -> str | None:
        return _disabled(ctx)

    def desired(self, ctx: StepContext) -> Spec:
        name = self.name(ctx)
        return {
            "encryption": s3util.kms_encryption(ctx.ref("kms.key", "arn")),
            "versioning": "Enabled",
            "lifecycle": [s3util.expiry_rule(
                TRAIL_LOG_RULE_ID, noncurrent_days=ctx.config.trail.noncurrent_version_expiration_days)],
            "logging": s3util.logging_target(ctx, name),
            "public_access_block": dict(s3util.PUBLIC_ACCESS_BLOCK),
            # ACLs off; CloudTrail's x-amz-acl condition still holds
            "ownership": s3util.OWNER_ENFORCED,
            "policy": trail_bucket_policy(ctx),
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        name = self.name(ctx)

        def own_aspects(answers: dict[str, Any]) -> Spec:
            return {
                "encryption": s3util.norm_encryption(ctx, answers["get_bucket_encryption"]),
                "versioning": s3util.norm_versioning(answers["get_bucket_versioning"]),
                "lifecycle": s3util.norm_expiry_rules(answers["get_bucket_lifecycle_configuration"]),
                "logging": s3util.norm_logging(answers["get_bucket_logging"]),
            }

        return s3util.read_bucket_common(ctx, self.logical_id, name, bucket_arn(ctx), s3util.ASPECT_READS,
                                         own_aspects)

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        s3 = ctx.client("s3")
        name = self.name(ctx)
        s3util.create_bucket(ctx, s3, name, "trail.bucket_name", ObjectOwnership=desired["ownership"])
        # Tags first: they are what marks the bucket ours if the run stops here.
        for field in TRAIL_BUCKET_ASPECTS:
            if field == "ownership":
                continue  # CreateBucket set it (ObjectOwnership)
            self._set(ctx, s3, field, desired[field])
        return {"name": name, "arn": bucket_arn(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        s3 = ctx.client("s3")
        fields = changed_fields(changes)
        for field in TRAIL_BUCKET_ASPECTS:
            if field in fields:
                self._set(ctx, s3, field, desired[field])

    def _set(self, ctx: StepContext, s3: Any, field: str, want: Any) -> None:
        name = self.name(ctx)
        if field == "tags":
            s3util.set_tags(ctx, s3, name, self.logical_id, want)
        else:
            TRAIL_BUCKET_SETTERS[field](s3, name, want)

    def delete(self, ctx: StepContext, current: Current) -> None:
        s3util.delete_bucket(ctx.client("s3"), self.name(ctx), report=s3util.emptying_reporter(ctx))


TRAIL_BUCKET_ASPECTS = ("tags", "public_access_block", "ownership", "encryption", "versioning", "lifecycle",
                        "logging", "policy")
TRAIL_BUCKET_SETTERS = {
    "public_access_block": s3util.set_public_access_block,
    "ownership": s3util.set_ownership,
    "encryption": s3util.set_encryption,
    "versioning": s3util.set_versioning,
    "lifecycle": s3util.set_expiry_rules,
    "logging": s3util.set_logging,
    "policy": s3util.set_policy,
}


# Spec field -> CreateTrail/UpdateTrail parameter, for the fields UpdateTrail sets.
TRAIL_PARAMS = {
    "s3_bucket_name": "S3BucketName",
    "kms_key_id": "KmsKeyId",
    "include_global_service_events": "IncludeGlobalServiceEvents",
    "is_multi_region_trail": "IsMultiRegionTrail",
    "log_file_validation": "EnableLogFileValidation",
}
MANAGEMENT_EVENTS = [{"ReadWriteType": "All", "IncludeManagementEvents": True}]


class Trail(Resource):
    logical_id = "trail.trail"
    resource_type = "AWS::CloudTrail::Trail"
    depends_on = ("kms.key", "trail.bucket")  # encrypts with the key; delivers to the bucket (its policy first)
    read_needs = ("kms.key",)  # the key it names is told by the key's ARN
    name_field = "trail"

    def disabled_by(self, ctx: StepContext) -> str | None:
        return _disabled(ctx)

    def note(self, ctx: StepContext) -> str:
        if ctx.config.trail.multi_region:
            return ""
        if ctx.region != GLOBAL_EVENTS_REGION:
            return (f"trail.multi_region = false: a single-region trail in {ctx.region} records no "
                    f"IAM, STS or CloudFront events (CloudTrail logs them in {GLOBAL_EVENTS_REGION} "
                    "only), so changes to this env's roles go unaudited, and no other region's calls")
        return ("trail.multi_region = false: the trail records calls made in us-east-1 only, "
                "none of any other region")

    def preflight(self, ctx: StepContext) -> None:
        """Refuse before the first write when a new trail would be the region's sixth.

        AWS would refuse CreateTrail (MaximumNumberOfTrailsExceededException) only at the
        last step, with the rest of the env made. DescribeTrails in this region lists the
        trails that take a place here: those whose home region it is and the shadows of other
        regions' multi-region trails (another account's organization trail is not ours to count).
        """
        cloudtrail = ctx.client("cloudtrail")
        name = self.name(ctx)
        if get_or_none(cloudtrail.get_trail, Name=name) is not None:
            return  # ours exists: no new place needed
        trails = cloudtrail.describe_trails(includeShadowTrails=True).get("trailList", [])
        others = [t for t in trails if t.get("Name") != name
                  and f":{ctx.account}:" in t.get("TrailARN", f":{ctx.account}:")]
        if len(others) >= TRAILS_PER_REGION:
            listed = ", ".join(sorted(t.get("Name", "?") for t in others))
            raise QuotaError(
                f"CloudTrail allows {TRAILS_PER_REGION} trails per region and {ctx.region} has "
                f"{len(others)} ({listed}); AWS does not raise this quota. Set trail.enabled = false "
                f"(e.g. --set trail.enabled=false) to run env {ctx.env!r} without its own trail, or "
                "remove a trail; nothing was created")

    def desired(self, ctx: StepContext) -> Spec:
        return {
            "s3_bucket_name": ctx.names.trail_bucket,
            # Log and digest files SSE-KMS with the env's key (its policy lets only this trail use it)
            "kms_key_id": ctx.ref("kms.key", "arn"),
            "include_global_service_events": True,
            # Multi-region by default (the seed's trail is single-region): see note().
            "is_multi_region_trail": ctx.config.trail.multi_region,
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
        found = get_or_none(cloudtrail.get_trail, Name=name)
        if found is None:
            return None
        trail = found["Trail"]
        arn = trail["TrailARN"]
        answers = read_together({
            "selectors": lambda: cloudtrail.get_event_selectors(TrailName=name).get("EventSelectors", []),
            "tags": lambda: cloudtrail.list_tags(ResourceIdList=[arn]).get("ResourceTagList", []),
            "insights": lambda: _insight_types(cloudtrail, name),
            "logging": lambda: bool(cloudtrail.get_trail_status(Name=name).get("IsLogging")),
        })
        selectors, listed = answers["selectors"], answers["tags"]
        tags = tag_dict(listed[0].get("TagsList", [])) if listed else {}
        spec = {
            "s3_bucket_name": trail.get("S3BucketName"),
            "kms_key_id": our_key_arn(ctx, trail.get("KmsKeyId")),
            "include_global_service_events": trail.get("IncludeGlobalServiceEvents"),
            "is_multi_region_trail": trail.get("IsMultiRegionTrail"),
            "log_file_validation": trail.get("LogFileValidationEnabled"),
            "event_selectors": [_event_selector(s) for s in selectors],
            "insight_selectors": answers["insights"],
            "logging": answers["logging"],
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        return Current(spec, {"name": trail["Name"], "arn": arn}, managed=ctx.owns(tags))

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        cloudtrail = ctx.client("cloudtrail")
        name = self.name(ctx)
        made = cloudtrail.create_trail(
            Name=name,
            **{param: known_key(desired[field]) for field, param in TRAIL_PARAMS.items()},
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
        trail_fields = {TRAIL_PARAMS[f]: known_key(desired[f]) for f in TRAIL_PARAMS if f in fields}
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
        tolerate_gone(ctx.client("cloudtrail").delete_trail, Name=self.name(ctx))

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

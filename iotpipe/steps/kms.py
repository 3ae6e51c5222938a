"""The pipeline's one customer-managed KMS key, and the alias that names it.

A key has no name, so it is found through its alias, then through the id the state file
recorded, then through its tags (the tags are set in CreateKey itself, so even a key whose
CreateKey answer was lost is found and adopted rather than duplicated).
"""

from __future__ import annotations

from typing import Any

from iotpipe.aws import is_not_found
from iotpipe.steps.base import (
    TAG_RESOURCE,
    Change,
    Current,
    Resource,
    Spec,
    StepContext,
    changed_fields,
    filter_tags,
    get_or_none,
    ignore_not_found,
    paginate,
    policy_json,
    tag_changes,
    tag_dict,
    tag_list,
)

GONE_STATES = {"PendingDeletion", "PendingReplicaDeletion"}
CLOUDTRAIL = "cloudtrail.amazonaws.com"


def key_policy(ctx: StepContext) -> dict[str, Any]:
    """The seed's key policy, each service statement confined to this env (confused deputy).

    Every service principal carries the condition its service documents for this: CloudWatch
    Logs and Kinesis the encryption context they put on every KMS call (the log group ARN, the
    stream ARN: https://docs.aws.amazon.com/AmazonCloudWatch/latest/logs/encrypt-log-data-kms.html,
    https://docs.aws.amazon.com/streams/latest/dev/permissions-user-key-KMS.html), CloudTrail
    aws:SourceArn = our trail plus its encryption context, as "Configure AWS KMS key policies
    for CloudTrail" prescribes
    (https://docs.aws.amazon.com/awscloudtrail/latest/userguide/create-kms-key-policy-for-cloudtrail.html).
    """
    account, region, partition = ctx.account, ctx.region, ctx.aws.partition
    trail = ctx.aws.arn("cloudtrail", f"trail/{ctx.names.trail}")
    only_our_trail = {"aws:SourceArn": trail}
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "Enable IAM User Permissions",
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
                "Action": "kms:*",
                "Resource": "*",
            },
            {
                "Sid": "Allow CloudWatch Logs",
                "Effect": "Allow",
                "Principal": {"Service": f"logs.{region}.amazonaws.com"},
                "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                           "kms:CreateGrant", "kms:DescribeKey"],
                "Resource": "*",
                "Condition": {"ArnLike": {
                    "kms:EncryptionContext:aws:logs:arn": f"arn:{partition}:logs:{region}:{account}:*"}},
            },
            {
                "Sid": "Allow Kinesis",
                "Effect": "Allow",
                "Principal": {"Service": "kinesis.amazonaws.com"},
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": "*",
                "Condition": {"ArnEquals": {
                    "kms:EncryptionContext:aws:kinesis:arn": ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}")}},
            },
            {
                "Sid": "Allow CloudTrail to encrypt logs",
                "Effect": "Allow",
                "Principal": {"Service": CLOUDTRAIL},
                "Action": "kms:GenerateDataKey*",
                "Resource": "*",
                "Condition": {
                    "StringEquals": only_our_trail,
                    "StringLike": {"kms:EncryptionContext:aws:cloudtrail:arn":
                                   f"arn:{partition}:cloudtrail:*:{account}:trail/*"},
                },
            },
            {
                "Sid": "Allow CloudTrail to describe key",
                "Effect": "Allow",
                "Principal": {"Service": CLOUDTRAIL},
                "Action": "kms:DescribeKey",
                "Resource": "*",
                "Condition": {"StringEquals": only_our_trail},
            },
        ],
    }


class KmsKey(Resource):
    logical_id = "kms.key"
    resource_type = "AWS::KMS::Key"

    name_field = "kms_alias"

    def desired(self, ctx: StepContext) -> Spec:
        return {
            "description": f"KMS key for IoT manufacturing data encryption - {ctx.env}",
            "enabled": True,
            "rotation": True,
            "policy": key_policy(ctx),
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        kms = ctx.client("kms")
        meta = self._find(ctx)
        if meta is None:
            return None
        key_id = meta["KeyId"]
        tags = tag_dict(paginate(kms, "list_resource_tags", "Tags", KeyId=key_id), "TagKey", "TagValue")
        spec = {
            "description": meta.get("Description", ""),
            "enabled": meta.get("KeyState") == "Enabled",
            "rotation": kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"],
            "policy": kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"],
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        ids = {"id": key_id, "arn": meta["Arn"], "name": ctx.names.kms_alias}
        return Current(spec, ids, managed=ctx.owns(tags))

    def _find(self, ctx: StepContext) -> dict[str, Any] | None:
        """Alias first (one call), then the recorded id, then a tag scan of the account's keys."""
        kms = ctx.client("kms")
        for key_ref in (ctx.names.kms_alias, ctx.recorded(self.logical_id).get("id")):
            if not key_ref:
                continue
            meta = _describe(kms, key_ref)
            if meta and meta["KeyState"] not in GONE_STATES:
                return meta
        return self._scan(ctx)

    def _scan(self, ctx: StepContext) -> dict[str, Any] | None:
        kms = ctx.client("kms")
        found = []
        for key in paginate(kms, "list_keys", "Keys"):
            try:
                tags = tag_dict(paginate(kms, "list_resource_tags", "Tags", KeyId=key["KeyId"]),
                                "TagKey", "TagValue")
            except Exception as err:  # noqa: BLE001 - keys of other principals may deny us
                if is_not_found(err) or "AccessDenied" in str(err):
                    continue
                raise
            if ctx.owns(tags) and tags.get(TAG_RESOURCE) == self.logical_id:
                meta = _describe(kms, key["KeyId"])
                if meta and meta["KeyState"] not in GONE_STATES:
                    found.append(meta)
        found.sort(key=lambda m: (str(m.get("CreationDate")), m["KeyId"]))
        return found[0] if found else None

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        kms = ctx.client("kms")
        meta = kms.create_key(
            Description=desired["description"],
            KeyUsage="ENCRYPT_DECRYPT",
            KeySpec="SYMMETRIC_DEFAULT",
            Policy=policy_json(desired["policy"]),
            Tags=tag_list(desired["tags"], "TagKey", "TagValue"),
        )["KeyMetadata"]
        kms.enable_key_rotation(KeyId=meta["KeyId"])
        return {"id": meta["KeyId"], "arn": meta["Arn"], "name": ctx.names.kms_alias}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        kms = ctx.client("kms")
        key_id = current.ids["id"]
        fields = changed_fields(changes)
        if "enabled" in fields:
            kms.enable_key(KeyId=key_id)
        if "description" in fields:
            kms.update_key_description(KeyId=key_id, Description=desired["description"])
        if "policy" in fields:
            kms.put_key_policy(KeyId=key_id, PolicyName="default", Policy=policy_json(desired["policy"]))
        if "rotation" in fields:
            kms.enable_key_rotation(KeyId=key_id)
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec["tags"], desired["tags"])
            if to_set:
                kms.tag_resource(KeyId=key_id, Tags=tag_list(to_set, "TagKey", "TagValue"))
            if to_remove:
                kms.untag_resource(KeyId=key_id, TagKeys=to_remove)

    def delete(self, ctx: StepContext, current: Current) -> None:
        kms = ctx.client("kms")
        try:
            kms.schedule_key_deletion(KeyId=current.ids["id"],
                                      PendingWindowInDays=ctx.config.kms.deletion_window_days)
        except Exception as err:
            if is_not_found(err) or "pending deletion" in str(err).lower():
                return
            raise


class KmsAlias(Resource):
    logical_id = "kms.alias"
    resource_type = "AWS::KMS::Alias"
    depends_on = ("kms.key",)
    name_field = "kms_alias"

    def desired(self, ctx: StepContext) -> Spec:
        return {"target_key_id": ctx.ref("kms.key", "id")}

    def read(self, ctx: StepContext) -> Current | None:
        kms = ctx.client("kms")
        for alias in paginate(kms, "list_aliases", "Aliases"):
            if alias["AliasName"] == ctx.names.kms_alias:
                target = alias.get("TargetKeyId", "")
                ids = {"name": alias["AliasName"], "arn": alias.get("AliasArn", ""), "target": target}
                return Current({"target_key_id": target}, ids, managed=self._target_is_ours(ctx, target))
        return None

    def _target_is_ours(self, ctx: StepContext, target: str) -> bool:
        if not target or target == ctx.refs.get("kms.key", {}).get("id"):
            return True  # no target, or the key this run already found (and checked) as ours
        try:
            tags = tag_dict(paginate(ctx.client("kms"), "list_resource_tags", "Tags", KeyId=target),
                            "TagKey", "TagValue")
        except Exception as err:  # noqa: BLE001
            if is_not_found(err):
                return True  # an alias to a deleted key: nothing of anyone's to protect
            raise
        return ctx.owns(tags)

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        ctx.client("kms").create_alias(AliasName=ctx.names.kms_alias, TargetKeyId=desired["target_key_id"])
        return {"name": ctx.names.kms_alias, "target": desired["target_key_id"],
                "arn": ctx.aws.arn("kms", ctx.names.kms_alias)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        ctx.client("kms").update_alias(AliasName=ctx.names.kms_alias, TargetKeyId=desired["target_key_id"])

    def delete(self, ctx: StepContext, current: Current) -> None:
        with ignore_not_found():
            ctx.client("kms").delete_alias(AliasName=ctx.names.kms_alias)


def _describe(kms: Any, key_ref: str) -> dict[str, Any] | None:
    found = get_or_none(kms.describe_key, KeyId=key_ref)
    return found["KeyMetadata"] if found else None


RESOURCES: tuple[Resource, ...] = (KmsKey(), KmsAlias())

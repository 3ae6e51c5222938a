"""The pipeline's one customer-managed KMS key, and the alias that names it.

A key has no name, so it is found through its alias, then through the id the state file
recorded, then through its tags (the tags are set in CreateKey itself, so even a key whose
CreateKey answer was lost is found and adopted rather than duplicated).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from iotpipe.aws import KEY_NOT_FOUND_YET, is_not_found
from iotpipe.errors import ExitCode, IotpipeError
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
    paginate,
    policy_json,
    read_together,
    tag_changes,
    tag_dict,
    tag_list,
    tolerate_gone,
)

GONE_STATES = {"PendingDeletion", "PendingReplicaDeletion"}
SCANNED = "kms.key:scan"  # StepContext.memo: the tag scan's answer, once per run


# Regional service principals end in the partition's DNS suffix: logs.cn-north-1.amazonaws.com.cn.
DNS_SUFFIX = {"aws": "amazonaws.com", "aws-cn": "amazonaws.com.cn", "aws-us-gov": "amazonaws.com"}
PENDING_DELETION = "PendingDeletion"


CLOUDTRAIL = "cloudtrail.amazonaws.com"  # the same name in every partition


class KeyPendingDeletionError(IotpipeError):
    """The env's key is scheduled for deletion and the config says not to recover it."""

    exit_code = ExitCode.KEY_PENDING_DELETION


def key_policy(ctx: StepContext) -> dict[str, Any]:
    """The account's IAM policies decide, plus CloudWatch Logs for our log groups only.

    The seed's "Allow Kinesis" statement (kms:Decrypt/GenerateDataKey for the service principal
    kinesis.amazonaws.com, no condition) is gone: Kinesis uses the key with the permissions of
    the producer or consumer calling it (AWS: "ensure that your Kinesis stream producers and
    consumers (IAM principals) are users in the KMS master key policy"), which the first
    statement delegates to IAM and the IoT rule and Lambda roles grant on this key only. A
    grant to the service principal is never used, and without an aws:SourceAccount condition
    it would name no account at all.

    CloudTrail gets what "Configure AWS KMS key policies for
    CloudTrail" prescribes, confined to our trail by aws:SourceArn and its encryption context
    (https://docs.aws.amazon.com/awscloudtrail/latest/userguide/create-kms-key-policy-for-cloudtrail.html).
    """
    account, region, partition = ctx.account, ctx.region, ctx.aws.partition
    suffix = DNS_SUFFIX.get(partition, "amazonaws.com")
    trail = ctx.aws.arn("cloudtrail", f"trail/{ctx.names.trail}")
    only_our_trail = {"aws:SourceArn": trail}
    statements: list[dict[str, Any]] = [
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
            "Principal": {"Service": f"logs.{region}.{suffix}"},
            "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                       "kms:CreateGrant", "kms:DescribeKey"],
            "Resource": "*",
            "Condition": {"ArnLike": {
                "kms:EncryptionContext:aws:logs:arn": f"arn:{partition}:logs:{region}:{account}:*"}},
        },
        # Kept with trail.enabled = false too: confined to this env's trail ARN it grants nothing
        # while no such trail exists, and a key policy that follows the switch would churn.
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
        # The alert topic (steps/monitor.py) is encrypted with this key: CloudWatch can publish
        # an alarm to it only with Decrypt and GenerateDataKey* on the key ("Enable compatibility
        # between event sources from AWS services and encrypted topics",
        # https://docs.aws.amazon.com/sns/latest/dg/sns-key-management.html#compatibility-with-aws-services),
        # confined to this env's alarms. Kept with alerts disabled: it grants nothing then.
        {
            "Sid": "Allow CloudWatch alarms to publish to the alert topic",
            "Effect": "Allow",
            "Principal": {"Service": "cloudwatch.amazonaws.com"},
            "Action": ["kms:Decrypt", "kms:GenerateDataKey*"],
            "Resource": "*",
            "Condition": {
                "StringEquals": {"aws:SourceAccount": account},
                "ArnLike": {"aws:SourceArn": f"arn:{partition}:cloudwatch:{region}:{account}:alarm:iot-{ctx.env}-*"},
            },
        },
    ]
    return {"Version": "2012-10-17", "Statement": statements}


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
            "pending_deletion": None,
        }

    def read(self, ctx: StepContext) -> Current | None:
        kms = ctx.client("kms")
        meta = self._find(ctx)
        if meta is None:
            return None
        key_id = meta["KeyId"]
        answers = read_together({
            "tags": lambda: paginate(kms, "list_resource_tags", "Tags", KeyId=key_id),
            "rotation": lambda: kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"],
            "policy": lambda: kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"],
        })
        tags = tag_dict(answers["tags"], "TagKey", "TagValue")
        pending = _deletion_date(meta)
        spec = {
            "description": meta.get("Description", ""),
            "enabled": meta.get("KeyState") == "Enabled",
            "rotation": answers["rotation"],
            "policy": answers["policy"],
            "tags": filter_tags(ctx, self.logical_id, tags),
            "pending_deletion": pending,
        }
        ids = {"id": key_id, "arn": meta["Arn"], "name": ctx.names.kms_alias}
        return Current(spec, ids, managed=ctx.owns(tags),
                       condition=f"pending-deletion (until {pending})" if pending else "")

    def _find(self, ctx: StepContext) -> dict[str, Any] | None:
        """Alias first (one call), then the recorded id, then a tag scan of the account's keys.

        A key the alias or the state file names is the env's key even while PendingDeletion:
        everything the pipeline stored is encrypted with it, so it is recovered, never
        replaced (a second key would leave the old data unreadable once the first is gone).
        The tag scan skips such keys: after `destroy` (alias deleted, record forgotten) a new
        env gets a new key.

        The scan costs ListKeys plus one ListResourceTags per key in the account, and it runs
        whenever the alias is gone: after a destroy, every `status`, `plan` and `destroy --wait`
        poll would pay it again. It exists so that `up` and `destroy` never miss a key whose
        alias and state record were both lost, so only they scan, and once per run: `plan` and
        `status` report such a key as missing (the next `up` adopts it instead of making one).
        """
        kms = ctx.client("kms")
        for key_ref in (ctx.names.kms_alias, ctx.recorded(self.logical_id).get("id")):
            if not key_ref:
                continue
            meta = _describe(kms, key_ref)
            if meta and meta["KeyState"] not in GONE_STATES - {PENDING_DELETION}:
                return meta
        if ctx.read_only:
            return None
        if SCANNED not in ctx.memo:
            ctx.memo[SCANNED] = self._scan(ctx)
        found = ctx.memo[SCANNED]
        if found is None:
            return None
        meta = _describe(kms, found["KeyId"])  # this run may have scheduled its deletion since
        return meta if meta and meta["KeyState"] not in GONE_STATES else None

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
        # KMS is eventually consistent: the key CreateKey just returned can be NotFound for a
        # moment (aws.KEY_NOT_FOUND_YET), here and in update() for a key a crashed run made.
        ctx.aws.retrying(lambda: kms.enable_key_rotation(KeyId=meta["KeyId"]), KEY_NOT_FOUND_YET)
        return {"id": meta["KeyId"], "arn": meta["Arn"], "name": ctx.names.kms_alias}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        kms = ctx.client("kms")
        key_id = current.ids["id"]
        fields = changed_fields(changes)
        if "pending_deletion" in fields:
            self._recover(ctx, current)
            # Pending deletion reads rotation as off; cancelling restores the earlier status
            # (GetKeyRotationStatus, AWS KMS API reference): look again before enabling it.
            if "rotation" in fields and kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"]:
                fields.discard("rotation")
        elif "enabled" in fields:
            kms.enable_key(KeyId=key_id)
        if "description" in fields:
            kms.update_key_description(KeyId=key_id, Description=desired["description"])
        if "policy" in fields:
            ctx.aws.retrying(lambda: kms.put_key_policy(
                KeyId=key_id, PolicyName="default", Policy=policy_json(desired["policy"])), KEY_NOT_FOUND_YET)
        if "rotation" in fields:
            ctx.aws.retrying(lambda: kms.enable_key_rotation(KeyId=key_id), KEY_NOT_FOUND_YET)
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec["tags"], desired["tags"])
            if to_set:
                kms.tag_resource(KeyId=key_id, Tags=tag_list(to_set, "TagKey", "TagValue"))
            if to_remove:
                kms.untag_resource(KeyId=key_id, TagKeys=to_remove)

    @staticmethod
    def _recover(ctx: StepContext, current: Current) -> None:
        """CancelKeyDeletion, then EnableKey: a cancelled key comes back Disabled, and AWS
        refuses EnableKey (KMSInvalidStateException) while the deletion is still pending.
        See https://docs.aws.amazon.com/kms/latest/developerguide/deleting-keys-cancelling-key-deletion.html
        """
        key_id = current.ids["id"]
        if not ctx.config.kms.recover_pending_deletion:
            raise KeyPendingDeletionError(
                f"KMS key {key_id} ({ctx.names.kms_alias}) is scheduled for deletion on "
                f"{current.spec['pending_deletion']} and kms.recover_pending_deletion is false: "
                f"cancel it (`aws kms cancel-key-deletion --key-id {key_id}`) or set "
                "kms.recover_pending_deletion = true; data encrypted with it is unreadable once it is gone")
        kms = ctx.client("kms")
        kms.cancel_key_deletion(KeyId=key_id)
        kms.enable_key(KeyId=key_id)

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
    depends_on = ("kms.key",)  # points at it (its id is read)
    read_needs = ("kms.key",)  # a target that is the key found ours needs no tag read
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
        tolerate_gone(ctx.client("kms").delete_alias, AliasName=ctx.names.kms_alias)


def _deletion_date(meta: dict[str, Any]) -> str | None:
    """When a key pending deletion goes for good (UTC, to the minute); None when it is not."""
    if meta.get("KeyState") != PENDING_DELETION:
        return None
    when = meta.get("DeletionDate")
    if not isinstance(when, datetime):
        return "an unknown date"
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _describe(kms: Any, key_ref: str) -> dict[str, Any] | None:
    found = get_or_none(kms.describe_key, KeyId=key_ref)
    return found["KeyMetadata"] if found else None


RESOURCES: tuple[Resource, ...] = (KmsKey(), KmsAlias())

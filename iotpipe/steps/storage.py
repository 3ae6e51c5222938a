"""Where the pipeline keeps its data: the raw sensor-data bucket and the metrics table.

The bucket follows Ansible's ``s3_bucket``: one small compare-then-act function per aspect
(versioning, encryption, lifecycle, public access block, ownership, policy, tags). ``update``
calls only the functions of the fields that drifted, and ``create`` is ``create_bucket``
followed by every aspect function, so a bucket whose creation was interrupted half-way is
read back as it is and finished by the next ``up``.

The seed's weaknesses fixed here: the bucket name carries the account (S3 names are global),
public access is blocked, ACLs are disabled (BucketOwnerEnforced) and plain-HTTP access is
denied by policy (switchable, because moto ignores the policy's Condition).
"""

from __future__ import annotations

import json
from typing import Any

from iotpipe.aws import error_code, is_not_found
from iotpipe.errors import AwsCallError, IotpipeError, OwnershipError
from iotpipe.steps.base import (
    Change,
    Current,
    Resource,
    Spec,
    StepContext,
    UnknownYet,
    changed_fields,
    filter_tags,
    ignore_not_found,
    paginate,
    policy_json,
    tag_changes,
    tag_dict,
    tag_list,
)

LIFECYCLE_RULE_ID = "archive-old-data"
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys per request
FORBIDDEN_CODES = {"403", "Forbidden", "AccessDenied"}
# DynamoDB tables take a few seconds to turn ACTIVE; 5 s polls for up to 10 minutes.
TABLE_WAIT = {"Delay": 5, "MaxAttempts": 120}


class ReplacementRequired(IotpipeError):
    """A field AWS cannot change in place differs; replacing it would lose data."""


def our_key_arn(ctx: StepContext, key_ref: str | None) -> str | None:
    """The ARN of the pipeline's key for any way of naming it (id, ARN, alias, alias ARN).

    Services echo the key reference they were given; mapping all of ours to the ARN keeps a
    key set by id (by hand, or by an older tool) from reading as drift.
    """
    if not key_ref:
        return None
    arn = ctx.ref("kms.key", "arn")
    if isinstance(arn, UnknownYet):
        return key_ref
    alias = ctx.names.kms_alias
    if key_ref in {arn, ctx.ref("kms.key", "id"), alias, ctx.aws.arn("kms", alias)}:
        return arn
    return key_ref


def _known(value: Any) -> Any:
    """Refuse to write a placeholder: it means the KMS key step did not run first."""
    if isinstance(value, UnknownYet):
        raise IotpipeError(f"the KMS key is not known yet {value}: run `up` with the kms step")
    return value


# ============================================================================================
# The sensor-data bucket
# ============================================================================================
class SensorBucket(Resource):
    """Raw sensor readings: versioned, SSE-KMS with a bucket key, archived to Glacier."""

    logical_id = "storage.sensor_bucket"
    resource_type = "AWS::S3::Bucket"
    depends_on = ("kms.key",)

    def name(self, ctx: StepContext) -> str:
        return ctx.names.sensor_bucket

    def arn(self, ctx: StepContext) -> str:
        return f"arn:{ctx.aws.partition}:s3:::{ctx.names.sensor_bucket}"

    def desired(self, ctx: StepContext) -> Spec:
        key_arn = ctx.ref("kms.key", "arn")
        return {
            "versioning": "Enabled",
            "encryption": key_arn if isinstance(key_arn, UnknownYet) else
            {"algorithm": "aws:kms", "kms_key": key_arn, "bucket_key": True},
            "lifecycle": [{
                "id": LIFECYCLE_RULE_ID,
                "status": "Enabled",
                "prefix": "",
                "transitions": [{"days": ctx.config.storage.glacier_transition_days,
                                 "storage_class": "GLACIER"}],
            }],
            "public_access_block": {
                "BlockPublicAcls": True, "IgnorePublicAcls": True,
                "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
            },
            "ownership": "BucketOwnerEnforced",
            "policy": self._policy(ctx) if ctx.config.storage.enforce_tls else None,
            "tags": ctx.tags(self.logical_id),
        }

    def _policy(self, ctx: StepContext) -> dict[str, Any]:
        arn = self.arn(ctx)
        return {
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "DenyInsecureTransport",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "s3:*",
                "Resource": [arn, f"{arn}/*"],
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            }],
        }

    # -- read ---------------------------------------------------------------------------------
    def read(self, ctx: StepContext) -> Current | None:
        s3 = ctx.client("s3")
        name = ctx.names.sensor_bucket
        ids = {"name": name, "arn": self.arn(ctx)}
        try:
            s3.head_bucket(Bucket=name)
        except Exception as err:
            if is_not_found(err):
                return None
            if error_code(err) in FORBIDDEN_CODES:
                # S3 names are global: a 403 means another account owns this name.
                return Current({}, ids, managed=False, adoptable=False)
            raise
        tags = _get(lambda: tag_dict(s3.get_bucket_tagging(Bucket=name)["TagSet"])) or {}
        spec = {
            "versioning": s3.get_bucket_versioning(Bucket=name).get("Status"),
            "encryption": _get(lambda: _norm_encryption(
                ctx, s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"])),
            "lifecycle": _get(lambda: [_norm_rule(r) for r in
                                       s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]]),
            "public_access_block": _get(lambda: _norm_pab(
                s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"])),
            "ownership": _get(lambda: _norm_ownership(
                s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"])),
            "policy": _get(lambda: json.loads(s3.get_bucket_policy(Bucket=name)["Policy"])),
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        return Current(spec, ids, managed=ctx.owns(tags))

    # -- write --------------------------------------------------------------------------------
    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        s3 = ctx.client("s3")
        name = ctx.names.sensor_bucket
        kwargs: dict[str, Any] = {"Bucket": name}
        if ctx.region != "us-east-1":  # us-east-1 rejects its own name as a LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": ctx.region}
        try:
            s3.create_bucket(**kwargs)
        except Exception as err:
            code = error_code(err)
            if code == "BucketAlreadyExists":
                raise OwnershipError(f"S3 bucket name {name!r} is taken by another AWS account: "
                                     "set storage.sensor_bucket_name to another name") from err
            if code != "BucketAlreadyOwnedByYou":  # ours already: finish configuring it
                raise
        for field in ASPECT_ORDER:
            if field == "policy" and desired["policy"] is None:
                continue  # a new bucket has no policy to remove
            ASPECTS[field](ctx, s3, name, desired[field])
        return {"name": name, "arn": self.arn(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        s3 = ctx.client("s3")
        fields = changed_fields(changes)
        for field in ASPECT_ORDER:
            if field in fields:
                ASPECTS[field](ctx, s3, ctx.names.sensor_bucket, desired[field])

    def delete(self, ctx: StepContext, current: Current) -> None:
        """Policy first (a Deny must not block the emptying), then every version, then the bucket."""
        s3 = ctx.client("s3")
        name = ctx.names.sensor_bucket
        with ignore_not_found():
            s3.delete_bucket_policy(Bucket=name)
        with ignore_not_found():
            _empty_bucket(s3, name)
        with ignore_not_found():
            s3.delete_bucket(Bucket=name)


def _get(read: Any) -> Any:
    """Run one aspect read; a configuration that was never set reads as None."""
    try:
        return read()
    except Exception as err:
        if is_not_found(err):
            return None
        raise


def _norm_encryption(ctx: StepContext, config: dict[str, Any]) -> dict[str, Any] | None:
    rules = config.get("Rules") or []
    if not rules:
        return None
    default = rules[0].get("ApplyServerSideEncryptionByDefault") or {}
    return {
        "algorithm": default.get("SSEAlgorithm"),
        "kms_key": our_key_arn(ctx, default.get("KMSMasterKeyID")),
        "bucket_key": bool(rules[0].get("BucketKeyEnabled", False)),
    }


def _norm_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A lifecycle rule in our shape; whatever we do not set is kept under "other" (drift)."""
    rest = dict(rule)
    filt = dict(rest.pop("Filter", None) or {})
    prefix = filt.pop("Prefix", rest.pop("Prefix", "")) or ""
    out: dict[str, Any] = {
        "id": rest.pop("ID", None),
        "status": rest.pop("Status", None),
        "prefix": prefix,
        "transitions": [{"days": t.get("Days"), "storage_class": t.get("StorageClass")}
                        for t in rest.pop("Transitions", None) or []],
    }
    other = {k: v for k, v in rest.items() if v not in (None, [], {})}
    if filt:
        other["Filter"] = filt
    if other:
        out["other"] = other
    return out


def _norm_pab(config: dict[str, Any]) -> dict[str, bool]:
    keys = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")
    return {k: bool(config.get(k, False)) for k in keys}


def _norm_ownership(controls: dict[str, Any]) -> str | None:
    rules = controls.get("Rules") or []
    return rules[0].get("ObjectOwnership") if rules else None


# -- one function per aspect: each makes the one call that sets it ---------------------------
def _set_versioning(ctx: StepContext, s3: Any, name: str, want: str) -> None:
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": want})


def _set_encryption(ctx: StepContext, s3: Any, name: str, want: dict[str, Any]) -> None:
    want = _known(want)
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": want["algorithm"],
                                               "KMSMasterKeyID": _known(want["kms_key"])},
        "BucketKeyEnabled": want["bucket_key"],
    }]})


def _set_lifecycle(ctx: StepContext, s3: Any, name: str, want: list[dict[str, Any]]) -> None:
    rules = [{
        "ID": rule["id"],
        "Status": rule["status"],
        "Filter": {"Prefix": rule["prefix"]},
        "Transitions": [{"Days": t["days"], "StorageClass": t["storage_class"]}
                        for t in rule["transitions"]],
    } for rule in want]
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": rules})


def _set_public_access_block(ctx: StepContext, s3: Any, name: str, want: dict[str, bool]) -> None:
    s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration=want)


def _set_ownership(ctx: StepContext, s3: Any, name: str, want: str) -> None:
    s3.put_bucket_ownership_controls(Bucket=name, OwnershipControls={"Rules": [{"ObjectOwnership": want}]})


def _set_policy(ctx: StepContext, s3: Any, name: str, want: dict[str, Any] | None) -> None:
    if want is None:  # TLS enforcement off: any policy present is not ours to keep
        with ignore_not_found():
            s3.delete_bucket_policy(Bucket=name)
    else:
        s3.put_bucket_policy(Bucket=name, Policy=policy_json(want))


def _set_tags(ctx: StepContext, s3: Any, name: str, want: dict[str, str]) -> None:
    """PutBucketTagging replaces the whole set: keep the tags others put on the bucket."""
    existing = _get(lambda: tag_dict(s3.get_bucket_tagging(Bucket=name)["TagSet"])) or {}
    ours = filter_tags(ctx, SensorBucket.logical_id, existing)
    others = {k: v for k, v in existing.items() if k not in ours}
    s3.put_bucket_tagging(Bucket=name, Tagging={"TagSet": tag_list({**others, **want})})


# Tags first, so that the ownership marker lands right after CreateBucket; the policy last,
# once everything it could block is configured.
ASPECTS = {
    "tags": _set_tags,
    "public_access_block": _set_public_access_block,
    "ownership": _set_ownership,
    "encryption": _set_encryption,
    "versioning": _set_versioning,
    "lifecycle": _set_lifecycle,
    "policy": _set_policy,
}
ASPECT_ORDER = tuple(ASPECTS)


def _empty_bucket(s3: Any, name: str) -> None:
    """Delete every object version and delete marker, page by page, ≤1000 keys per request.

    DeleteObjects answers 200 even when some keys failed; those are listed under ``Errors``
    and must not be ignored, or DeleteBucket fails later with a less useful BucketNotEmpty.
    """
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=name):
        keys = [{"Key": v["Key"], "VersionId": v["VersionId"]}
                for v in page.get("Versions", []) + page.get("DeleteMarkers", [])]
        for start in range(0, len(keys), DELETE_BATCH):
            answer = s3.delete_objects(Bucket=name, Delete={
                "Objects": keys[start:start + DELETE_BATCH], "Quiet": True})
            errors = answer.get("Errors") or []
            if errors:
                first = errors[0]
                raise AwsCallError(
                    f"emptying bucket {name}: {len(errors)} object(s) could not be deleted, first "
                    f"{first.get('Key')} ({first.get('VersionId')}): {first.get('Code')}: "
                    f"{first.get('Message')}")


# ============================================================================================
# The metrics table
# ============================================================================================
class MetricsTable(Resource):
    """Processed sensor metrics keyed by (device_id, timestamp).

    Deletion protection is ON. The table holds the pipeline's processed history; the only
    sanctioned way to remove it is `iotpipe destroy` (explicit, confirmed, ownership-checked),
    which turns protection off right before DeleteTable. Everything else (a console click,
    another tool, a stray script) gets refused by AWS itself. The cost is one extra
    UpdateTable during destroy.
    """

    logical_id = "storage.metrics_table"
    resource_type = "AWS::DynamoDB::Table"
    depends_on = ("kms.key",)

    def name(self, ctx: StepContext) -> str:
        return ctx.names.metrics_table

    def desired(self, ctx: StepContext) -> Spec:
        key_arn = ctx.ref("kms.key", "arn")
        return {
            "billing_mode": "PAY_PER_REQUEST",
            "key_schema": {"hash": {"name": "device_id", "type": "S"},
                           "range": {"name": "timestamp", "type": "N"}},
            "sse": key_arn if isinstance(key_arn, UnknownYet) else
            {"enabled": True, "type": "KMS", "kms_key": key_arn},
            "point_in_time_recovery": ctx.config.storage.point_in_time_recovery,
            "deletion_protection": True,
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        ddb = ctx.client("dynamodb")
        name = ctx.names.metrics_table
        try:
            table = ddb.describe_table(TableName=name)["Table"]
        except Exception as err:
            if is_not_found(err):
                return None
            raise
        if table.get("TableStatus") == "DELETING":
            return None  # going away: create() waits for it to be gone
        arn = table["TableArn"]
        tags = tag_dict(paginate(ddb, "list_tags_of_resource", "Tags", ResourceArn=arn))
        pitr = _get(lambda: ddb.describe_continuous_backups(TableName=name)
                    ["ContinuousBackupsDescription"].get("PointInTimeRecoveryDescription", {})
                    .get("PointInTimeRecoveryStatus"))
        spec = {
            # Tables created before on-demand existed carry no BillingModeSummary: provisioned.
            "billing_mode": (table.get("BillingModeSummary") or {}).get("BillingMode", "PROVISIONED"),
            "key_schema": _norm_key_schema(table),
            "sse": _norm_sse(ctx, table.get("SSEDescription")),
            "point_in_time_recovery": pitr == "ENABLED",
            "deletion_protection": bool(table.get("DeletionProtectionEnabled", False)),
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        return Current(spec, {"name": name, "arn": arn}, managed=ctx.owns(tags))

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        ddb = ctx.client("dynamodb")
        name = ctx.names.metrics_table
        keys = desired["key_schema"]
        sse = _known(desired["sse"])
        kwargs = {
            "TableName": name,
            "BillingMode": desired["billing_mode"],
            "KeySchema": [{"AttributeName": keys["hash"]["name"], "KeyType": "HASH"},
                          {"AttributeName": keys["range"]["name"], "KeyType": "RANGE"}],
            "AttributeDefinitions": [
                {"AttributeName": keys["hash"]["name"], "AttributeType": keys["hash"]["type"]},
                {"AttributeName": keys["range"]["name"], "AttributeType": keys["range"]["type"]}],
            "SSESpecification": {"Enabled": True, "SSEType": sse["type"], "KMSMasterKeyId": sse["kms_key"]},
            "DeletionProtectionEnabled": desired["deletion_protection"],
            "Tags": tag_list(desired["tags"]),
        }
        try:
            arn = ddb.create_table(**kwargs)["TableDescription"]["TableArn"]
        except Exception as err:
            if error_code(err) != "ResourceInUseException" or not self._deleting(ddb, name):
                raise
            # A destroy moments ago left the old table DELETING; its name frees up shortly.
            ddb.get_waiter("table_not_exists").wait(TableName=name, WaiterConfig=TABLE_WAIT)
            arn = ddb.create_table(**kwargs)["TableDescription"]["TableArn"]
        _wait_active(ddb, name)
        if desired["point_in_time_recovery"]:  # only an ACTIVE table accepts it
            _set_pitr(ddb, name, True)
        return {"name": name, "arn": arn}

    @staticmethod
    def _deleting(ddb: Any, name: str) -> bool:
        try:
            return ddb.describe_table(TableName=name)["Table"].get("TableStatus") == "DELETING"
        except Exception as err:
            if is_not_found(err):
                return True
            raise

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        ddb = ctx.client("dynamodb")
        name = ctx.names.metrics_table
        fields = changed_fields(changes)
        if "key_schema" in fields:  # refuse before changing anything else
            raise ReplacementRequired(
                f"DynamoDB table {name!r} has key schema {current.spec.get('key_schema')} but iotpipe "
                f"needs {desired['key_schema']}; a table's key cannot change in place and iotpipe will "
                "not delete a table holding data: export what you need, then `iotpipe destroy` (or "
                "delete the table) and run `up` again")
        table_updates: list[dict[str, Any]] = []
        if "billing_mode" in fields:
            table_updates.append({"BillingMode": desired["billing_mode"]})
        if "sse" in fields:
            sse = _known(desired["sse"])
            table_updates.append({"SSESpecification": {
                "Enabled": True, "SSEType": sse["type"], "KMSMasterKeyId": sse["kms_key"]}})
        if "deletion_protection" in fields:
            table_updates.append({"DeletionProtectionEnabled": desired["deletion_protection"]})
        for change in table_updates:  # one change per UpdateTable: AWS refuses some combinations
            _wait_active(ddb, name)
            ddb.update_table(TableName=name, **change)
            _wait_active(ddb, name)
        if "point_in_time_recovery" in fields:
            _wait_active(ddb, name)
            _set_pitr(ddb, name, desired["point_in_time_recovery"])
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec.get("tags") or {}, desired["tags"])
            if to_set:
                ddb.tag_resource(ResourceArn=current.ids["arn"], Tags=tag_list(to_set))
            if to_remove:
                ddb.untag_resource(ResourceArn=current.ids["arn"], TagKeys=to_remove)

    def delete(self, ctx: StepContext, current: Current) -> None:
        ddb = ctx.client("dynamodb")
        name = ctx.names.metrics_table
        try:
            if current.spec.get("deletion_protection"):
                _wait_active(ddb, name)
                ddb.update_table(TableName=name, DeletionProtectionEnabled=False)
                _wait_active(ddb, name)
            ddb.delete_table(TableName=name)
        except Exception as err:
            if not is_not_found(err):
                raise
        ddb.get_waiter("table_not_exists").wait(TableName=name, WaiterConfig=TABLE_WAIT)


def _wait_active(ddb: Any, name: str) -> None:
    """UpdateTable and UpdateContinuousBackups fail on a table that is not ACTIVE."""
    ddb.get_waiter("table_exists").wait(TableName=name, WaiterConfig=TABLE_WAIT)


def _set_pitr(ddb: Any, name: str, enabled: bool) -> None:
    ddb.update_continuous_backups(
        TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": enabled})


def _norm_key_schema(table: dict[str, Any]) -> dict[str, Any]:
    types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    out: dict[str, Any] = {}
    for key in table.get("KeySchema", []):
        role = "hash" if key["KeyType"] == "HASH" else "range"
        out[role] = {"name": key["AttributeName"], "type": types.get(key["AttributeName"])}
    return out


def _norm_sse(ctx: StepContext, sse: dict[str, Any] | None) -> dict[str, Any]:
    """No SSEDescription (or DISABLED) means the AWS-owned key: not ours, not KMS."""
    if not sse or sse.get("Status") in ("DISABLED", "DISABLING"):
        return {"enabled": False, "type": None, "kms_key": None}
    return {"enabled": True, "type": sse.get("SSEType"),
            "kms_key": our_key_arn(ctx, sse.get("KMSMasterKeyArn"))}


RESOURCES: tuple[Resource, ...] = (SensorBucket(), MetricsTable())

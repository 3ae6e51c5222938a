"""Where the pipeline keeps its data: the raw sensor-data bucket and the metrics table, and the
access-log bucket that receives the S3 server access logs of the env's buckets.

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

from typing import Any

from iotpipe.aws import BACKUPS_BEING_ENABLED, error_code, is_not_found
from iotpipe.errors import AwsCallError, ConfigError, IotpipeError
from iotpipe.steps import s3util
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
    paginate,
    read_together,
    tag_changes,
    tag_dict,
    tag_list,
    tolerate_gone,
)
from iotpipe.timing import PITR_ENABLED, TABLE_ACTIVE, TABLE_UPDATED

LIFECYCLE_RULE_ID = "archive-old-data"
FAILURE_RECORDS_RULE_ID = "expire-failure-records"
# Where Lambda writes an event source mapping's on-failure records in an S3 destination:
# "aws/lambda/<ESM-UUID>/<shardID>/YYYY/MM/DD/YYYY-MM-DDTHH.MM.SS-<Random UUID>"
# (https://docs.aws.amazon.com/lambda/latest/dg/kinesis-on-failure-destination.html).
FAILURE_RECORDS_PREFIX = "aws/lambda/"
# DynamoDB tables take seconds to turn ACTIVE: polled at the interval that fits (timing.py),
# for up to 10 minutes.
TABLE_WAIT = {"Delay": TABLE_ACTIVE.poll_s, "MaxAttempts": int(600 / TABLE_ACTIVE.poll_s)}
# After an UpdateTable of one setting: shorter than CREATING, so polled more often.
TABLE_UPDATE_WAIT = {"Delay": TABLE_UPDATED.poll_s, "MaxAttempts": int(600 / TABLE_UPDATED.poll_s)}
# No boto3 waiter exists for point-in-time recovery: DescribeContinuousBackups is polled.
PITR_WAIT_S = 600.0
PITR_POLL_S = PITR_ENABLED.poll_s


class ReplacementRequired(IotpipeError):
    """A field AWS cannot change in place differs; replacing it would lose data."""


# ============================================================================================
# The sensor-data bucket
# ============================================================================================
class SensorBucket(Resource):
    """Raw sensor readings: versioned, SSE-KMS with a bucket key, archived to Glacier."""

    logical_id = "storage.sensor_bucket"
    resource_type = "AWS::S3::Bucket"
    depends_on = ("kms.key", "storage.access_log_bucket")  # encrypted with the key; logs to that bucket
    read_needs = ("kms.key",)  # the key its encryption names is told by the key's ARN
    name_field = "sensor_bucket"

    def arn(self, ctx: StepContext) -> str:
        return f"arn:{ctx.aws.partition}:s3:::{ctx.names.sensor_bucket}"

    def desired(self, ctx: StepContext) -> Spec:
        key_arn = ctx.ref("kms.key", "arn")
        return {
            "versioning": "Enabled",
            "encryption": key_arn if isinstance(key_arn, UnknownYet) else
            {"algorithm": "aws:kms", "kms_key": key_arn, "bucket_key": True},
            "lifecycle": lifecycle(ctx),
            "public_access_block": dict(s3util.PUBLIC_ACCESS_BLOCK),
            "ownership": s3util.OWNER_ENFORCED,
            "policy": self._policy(ctx) if ctx.config.storage.enforce_tls else None,
            "logging": s3util.logging_target(ctx, ctx.names.sensor_bucket),
            "tags": ctx.tags(self.logical_id),
        }

    def _policy(self, ctx: StepContext) -> dict[str, Any]:
        return {"Version": "2012-10-17", "Statement": [s3util.tls_deny_statement(self.arn(ctx))]}

    # -- read ---------------------------------------------------------------------------------
    def read(self, ctx: StepContext) -> Current | None:
        name = ctx.names.sensor_bucket

        def own_aspects(answers: dict[str, Any]) -> Spec:
            lifecycle = answers["get_bucket_lifecycle_configuration"]
            return {
                "versioning": s3util.norm_versioning(answers["get_bucket_versioning"]),
                "encryption": s3util.norm_encryption(ctx, answers["get_bucket_encryption"]),
                "lifecycle": {
                    "min_object_size": lifecycle.get("TransitionDefaultMinimumObjectSize"),
                    "rules": [_norm_rule(r) for r in lifecycle["Rules"]],
                } if lifecycle else None,
                "logging": s3util.norm_logging(answers["get_bucket_logging"]),
            }

        return s3util.read_bucket_common(ctx, self.logical_id, name, self.arn(ctx), s3util.ASPECT_READS,
                                         own_aspects)

    # -- write --------------------------------------------------------------------------------
    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        s3 = ctx.client("s3")
        s3util.create_bucket(ctx, s3, ctx.names.sensor_bucket, "storage.sensor_bucket_name")
        for field in ASPECT_ORDER:  # a bucket already ours is finished the same way
            if field == "policy" and desired["policy"] is None:
                continue  # a new bucket has no policy to remove
            self._set(ctx, s3, field, desired[field])
        return {"name": ctx.names.sensor_bucket, "arn": self.arn(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        s3 = ctx.client("s3")
        fields = changed_fields(changes)
        for field in ASPECT_ORDER:
            if field in fields:
                self._set(ctx, s3, field, desired[field])

    def _set(self, ctx: StepContext, s3: Any, field: str, want: Any) -> None:
        name = ctx.names.sensor_bucket
        if field == "tags":  # the only aspect that must know whose tags are whose
            s3util.set_tags(ctx, s3, name, self.logical_id, want)
        else:
            SETTERS[field](s3, name, want)

    def delete(self, ctx: StepContext, current: Current) -> None:
        s3util.delete_bucket(ctx.client("s3"), ctx.names.sensor_bucket, report=s3util.emptying_reporter(ctx))


def lifecycle(ctx: StepContext) -> dict[str, Any]:
    """Archive to Glacier, expire replaced versions, abort abandoned uploads, and expire the
    event source mapping's failure records (``aws/lambda/``) after their own period.

    ``min_object_size`` is S3's TransitionDefaultMinimumObjectSize, always sent: since
    September 2024 a configuration that omits it stops objects under 128 KB from transitioning
    (older configurations behave otherwise), so leaving it to the default makes the outcome
    depend on when the bucket was configured. The default keeps small objects in STANDARD,
    where a few-KB batch archive costs less than in Glacier (40 KB of overhead billed per
    object, plus a transition fee); see docs/aws-behaviour.md.
    """
    storage = ctx.config.storage
    return {
        "min_object_size": storage.glacier_min_object_size,
        "rules": [{
            "id": LIFECYCLE_RULE_ID,
            "status": "Enabled",
            "prefix": "",
            "transitions": [{"days": storage.glacier_transition_days, "storage_class": "GLACIER"}],
            # A retried batch overwrites its archive object: the replaced version is a copy.
            "noncurrent_expiration_days": storage.noncurrent_version_expiration_days,
            "abort_incomplete_days": storage.abort_incomplete_upload_days,
        }, {
            # The mapping's failure records: kept until `replay failed` persists their readings
            # and deletes them, or until they expire; the version a replay deleted stays for
            # audit as long as any replaced version.
            "id": FAILURE_RECORDS_RULE_ID,
            "status": "Enabled",
            "prefix": FAILURE_RECORDS_PREFIX,
            "transitions": [],
            "expiration_days": storage.failure_records_expire_after_days,
            "noncurrent_expiration_days": storage.noncurrent_version_expiration_days,
            "abort_incomplete_days": storage.abort_incomplete_upload_days,
        }],
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
        "noncurrent_expiration_days": (rest.pop("NoncurrentVersionExpiration", None) or {}).get("NoncurrentDays"),
        "abort_incomplete_days": (rest.pop("AbortIncompleteMultipartUpload", None) or {}).get(
            "DaysAfterInitiation"),
    }
    expiration = rest.pop("Expiration", None)
    if expiration and set(expiration) == {"Days"}:
        out["expiration_days"] = expiration["Days"]
    elif expiration:
        rest["Expiration"] = expiration  # a date or delete-marker rule: not ours, shown as drift
    other = {k: v for k, v in rest.items() if v not in (None, [], {})}
    if filt:
        other["Filter"] = filt
    if other:
        out["other"] = other
    return out


# -- the aspects only this bucket has: each makes the one call that sets it --------------------
def _set_versioning(s3: Any, name: str, want: str) -> None:
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": want})


def _set_encryption(s3: Any, name: str, want: dict[str, Any]) -> None:
    want = known_key(want)
    s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [{
        "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": want["algorithm"],
                                               "KMSMasterKeyID": known_key(want["kms_key"])},
        "BucketKeyEnabled": want["bucket_key"],
    }]})


def _set_lifecycle(s3: Any, name: str, want: dict[str, Any]) -> None:
    rules = []
    for rule in want["rules"]:
        out: dict[str, Any] = {
            "ID": rule["id"],
            "Status": rule["status"],
            "Filter": {"Prefix": rule["prefix"]},
            "NoncurrentVersionExpiration": {"NoncurrentDays": rule["noncurrent_expiration_days"]},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": rule["abort_incomplete_days"]},
        }
        if rule["transitions"]:
            out["Transitions"] = [{"Days": t["days"], "StorageClass": t["storage_class"]}
                                  for t in rule["transitions"]]
        if "expiration_days" in rule:
            out["Expiration"] = {"Days": rule["expiration_days"]}
        rules.append(out)
    s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": rules},
                                          TransitionDefaultMinimumObjectSize=want["min_object_size"])


# Tags first, so that the ownership marker lands right after CreateBucket; the policy last,
# once everything it could block is configured. With TLS enforcement off the policy is None,
# and set_policy removes any policy present: it is not ours to keep.
ASPECT_ORDER = ("tags", "public_access_block", "ownership", "encryption", "versioning", "lifecycle",
                "logging", "policy")
SETTERS = {
    "public_access_block": s3util.set_public_access_block,
    "ownership": s3util.set_ownership,
    "encryption": _set_encryption,
    "versioning": _set_versioning,
    "lifecycle": _set_lifecycle,
    "logging": s3util.set_logging,
    "policy": s3util.set_policy,
}


# ============================================================================================
# The access-log bucket: where both buckets' S3 server access logs go
# ============================================================================================
ACCESS_LOG_RULE_ID = "expire-old-access-logs"
LOG_DELIVERY = "logging.s3.amazonaws.com"
# Deleting the access-log bucket can race a late log delivery (the log delivery is best effort
# and lags requests: https://docs.aws.amazon.com/AmazonS3/latest/userguide/ServerLogs.html), so
# DeleteBucket may answer BucketNotEmpty once the bucket was emptied: empty it again, a few times.
EMPTY_AGAIN = 3


def access_log_policy(ctx: StepContext) -> dict[str, Any]:
    """Log delivery may write each of our two buckets' logs only under that bucket's prefix,
    only for that bucket (confused deputy: aws:SourceArn and aws:SourceAccount), as AWS
    documents for server access logs:
    https://docs.aws.amazon.com/AmazonS3/latest/userguide/enable-server-access-logging.html
    (grant-log-delivery-permissions-general). BucketOwnerEnforced leaves no ACL way to do it."""
    bucket_arn = ctx.aws.arn("s3", ctx.names.access_log_bucket, region=False, account=False)
    statements: list[dict[str, Any]] = [{
        "Sid": f"S3ServerAccessLogs{label}",
        "Effect": "Allow",
        "Principal": {"Service": LOG_DELIVERY},
        "Action": "s3:PutObject",
        "Resource": f"{bucket_arn}/{s3util.access_log_prefix(source)}*",
        "Condition": {"ArnLike": {"aws:SourceArn": ctx.aws.arn("s3", source, region=False, account=False)},
                      "StringEquals": {"aws:SourceAccount": ctx.account}},
    } for label, source in (("SensorBucket", ctx.names.sensor_bucket), ("TrailBucket", ctx.names.trail_bucket))]
    if ctx.config.storage.enforce_tls:
        statements.append(s3util.tls_deny_statement(bucket_arn))
    return {"Version": "2012-10-17", "Statement": statements}


class AccessLogBucket(Resource):
    """The target of S3 server access logging for the sensor and trail buckets.

    Locked down as far as log delivery allows: SSE-S3 (AWS delivers no access logs into an
    SSE-KMS bucket), versioned, old logs expired, public access blocked, ACLs off, a policy that
    lets only S3 log delivery for our two buckets write, TLS only. Named in config as someone
    else's bucket (``storage.access_log_bucket_external``), it is only looked up: iotpipe never
    creates, changes or deletes it, and its owner grants the log delivery.
    """

    logical_id = "storage.access_log_bucket"
    resource_type = "AWS::S3::Bucket"
    name_field = "access_log_bucket"

    def _external(self, ctx: StepContext) -> bool:
        return ctx.config.storage.access_log_bucket_external

    def arn(self, ctx: StepContext) -> str:
        return ctx.aws.arn("s3", ctx.names.access_log_bucket, region=False, account=False)

    def desired(self, ctx: StepContext) -> Spec:
        if self._external(ctx):
            return {}
        days = ctx.config.storage.access_log_expiration_days
        return {
            "encryption": dict(s3util.SSE_S3),
            "versioning": "Enabled",
            "lifecycle": [s3util.expiry_rule(ACCESS_LOG_RULE_ID, expiration_days=days, noncurrent_days=days)],
            "public_access_block": dict(s3util.PUBLIC_ACCESS_BLOCK),
            "ownership": s3util.OWNER_ENFORCED,
            "policy": access_log_policy(ctx),
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        name = ctx.names.access_log_bucket
        if self._external(ctx):
            return self._read_external(ctx, name)

        def own_aspects(answers: dict[str, Any]) -> Spec:
            return {
                "encryption": s3util.norm_encryption(ctx, answers["get_bucket_encryption"]),
                "versioning": s3util.norm_versioning(answers["get_bucket_versioning"]),
                "lifecycle": s3util.norm_expiry_rules(answers["get_bucket_lifecycle_configuration"]),
            }

        return s3util.read_bucket_common(ctx, self.logical_id, name, self.arn(ctx),
                                         s3util.ASPECT_READS[:3], own_aspects)

    def _read_external(self, ctx: StepContext, name: str) -> Current | None:
        """Someone else's bucket: present is all we ask (a 403 means it exists, not ours to read)."""
        try:
            ctx.client("s3").head_bucket(Bucket=name)
        except Exception as err:
            if is_not_found(err):
                return None
            if error_code(err) not in s3util.FORBIDDEN_CODES:
                raise
        return Current({}, {"name": name, "arn": self.arn(ctx)})

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        name = ctx.names.access_log_bucket
        if self._external(ctx):
            raise ConfigError(
                f"storage.access_log_bucket_name: bucket {name!r} does not exist; iotpipe does not "
                "create a bucket marked access_log_bucket_external (create it, or drop that setting)")
        s3 = ctx.client("s3")
        s3util.create_bucket(ctx, s3, name, "storage.access_log_bucket_name",
                             ObjectOwnership=desired["ownership"])
        for field in ACCESS_LOG_ASPECTS:  # tags first: they mark the bucket ours if the run stops
            if field == "ownership":
                continue  # CreateBucket set it (ObjectOwnership)
            self._set(ctx, s3, field, desired[field])
        return {"name": name, "arn": self.arn(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        s3 = ctx.client("s3")
        fields = changed_fields(changes)
        for field in ACCESS_LOG_ASPECTS:
            if field in fields:
                self._set(ctx, s3, field, desired[field])

    def _set(self, ctx: StepContext, s3: Any, field: str, want: Any) -> None:
        name = ctx.names.access_log_bucket
        if field == "tags":
            s3util.set_tags(ctx, s3, name, self.logical_id, want)
        else:
            ACCESS_LOG_SETTERS[field](s3, name, want)

    def delete(self, ctx: StepContext, current: Current) -> None:
        if self._external(ctx):
            return  # not ours: the logs in it belong to its owner
        s3 = ctx.client("s3")
        name = ctx.names.access_log_bucket
        for attempt in range(EMPTY_AGAIN + 1):
            try:
                s3util.delete_bucket(s3, name)
                return
            except Exception as err:
                if error_code(err) != "BucketNotEmpty" or attempt == EMPTY_AGAIN:
                    raise


ACCESS_LOG_ASPECTS = ("tags", "public_access_block", "ownership", "encryption", "versioning", "lifecycle",
                      "policy")
ACCESS_LOG_SETTERS = {
    "public_access_block": s3util.set_public_access_block,
    "ownership": s3util.set_ownership,
    "encryption": s3util.set_encryption,
    "versioning": s3util.set_versioning,
    "lifecycle": s3util.set_expiry_rules,
    "policy": s3util.set_policy,
}


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
    replaced_only = frozenset({"key_schema"})  # UpdateTable has no KeySchema
    depends_on = ("kms.key",)  # encrypted with it (its ARN is read)
    read_needs = ("kms.key",)  # the key its encryption names is told by the key's ARN
    name_field = "metrics_table"
    expected_s = TABLE_ACTIVE.seconds + PITR_ENABLED.seconds  # CREATING, then PITR ENABLING

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
        found = get_or_none(ddb.describe_table, TableName=name)
        if found is None:
            return None
        table = found["Table"]
        if table.get("TableStatus") == "DELETING":
            return None  # going away: create() waits for it to be gone
        arn = table["TableArn"]
        answers = read_together({
            "tags": lambda: paginate(ddb, "list_tags_of_resource", "Tags", ResourceArn=arn),
            "backups": lambda: get_or_none(ddb.describe_continuous_backups, TableName=name),
        })
        tags = tag_dict(answers["tags"])
        pitr = _pitr_status(answers["backups"])
        spec = {
            # Tables created before on-demand existed carry no BillingModeSummary: provisioned.
            "billing_mode": (table.get("BillingModeSummary") or {}).get("BillingMode", "PROVISIONED"),
            "key_schema": _norm_key_schema(table),
            "sse": _norm_sse(ctx, table.get("SSEDescription")),
            # ENABLING is on its way to what we asked for: not drift, not a second request.
            "point_in_time_recovery": pitr in ("ENABLED", "ENABLING"),
            "deletion_protection": bool(table.get("DeletionProtectionEnabled", False)),
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        return Current(spec, {"name": name, "arn": arn}, managed=ctx.owns(tags))

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        ddb = ctx.client("dynamodb")
        name = ctx.names.metrics_table
        keys = desired["key_schema"]
        sse = known_key(desired["sse"])
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
            ctx.aws.wait(ddb, "table_not_exists", TableName=name, WaiterConfig=TABLE_WAIT)
            arn = ddb.create_table(**kwargs)["TableDescription"]["TableArn"]
        _wait_active(ctx, ddb, name)
        if desired["point_in_time_recovery"]:  # only an ACTIVE table accepts it
            _set_pitr(ctx, ddb, name, True)
        return {"name": name, "arn": arn}

    @staticmethod
    def _deleting(ddb: Any, name: str) -> bool:
        found = get_or_none(ddb.describe_table, TableName=name)
        return found is None or found["Table"].get("TableStatus") == "DELETING"

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        ddb = ctx.client("dynamodb")
        name = ctx.names.metrics_table
        fields = changed_fields(changes)
        if fields & self.replaced_only:  # refuse before changing anything else
            raise ReplacementRequired(
                f"DynamoDB table {name!r} has key schema {current.spec.get('key_schema')} but iotpipe "
                f"needs {desired['key_schema']}; a table's key cannot change in place and iotpipe will "
                "not delete a table holding data: export what you need, then `iotpipe destroy` (or "
                "delete the table) and run `up` again")
        table_updates: list[dict[str, Any]] = []
        if "billing_mode" in fields:
            table_updates.append({"BillingMode": desired["billing_mode"]})
        if "sse" in fields:
            sse = known_key(desired["sse"])
            table_updates.append({"SSESpecification": {
                "Enabled": True, "SSEType": sse["type"], "KMSMasterKeyId": sse["kms_key"]}})
        if "deletion_protection" in fields:
            table_updates.append({"DeletionProtectionEnabled": desired["deletion_protection"]})
        for change in table_updates:  # one change per UpdateTable: AWS refuses some combinations
            _wait_active(ctx, ddb, name)
            ddb.update_table(TableName=name, **change)
            _wait_active(ctx, ddb, name, after_update=True)
        if "point_in_time_recovery" in fields:
            _wait_active(ctx, ddb, name)
            _set_pitr(ctx, ddb, name, desired["point_in_time_recovery"])
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec.get("tags") or {}, desired["tags"])
            if to_set:
                ddb.tag_resource(ResourceArn=current.ids["arn"], Tags=tag_list(to_set))
            if to_remove:
                ddb.untag_resource(ResourceArn=current.ids["arn"], TagKeys=to_remove)

    def prepare_delete(self, ctx: StepContext, current: Current) -> None:
        """Lift deletion protection while the mapping and the alarms that use the table are
        being deleted: UpdateTable leaves the table UPDATING for a while, and DeleteTable
        refuses a table that is not ACTIVE. A destroy stopped after this leaves the table
        unprotected: `status` shows it drifted and `up` protects it again."""
        if current.spec.get("deletion_protection"):
            ddb = ctx.client("dynamodb")
            name = ctx.names.metrics_table
            _wait_active(ctx, ddb, name)
            if tolerate_gone(ddb.update_table, TableName=name, DeletionProtectionEnabled=False):
                current.spec["deletion_protection"] = False

    def delete(self, ctx: StepContext, current: Current) -> None:
        self.prepare_delete(ctx, current)  # nothing left to do when destroy already lifted it
        ddb = ctx.client("dynamodb")
        name = ctx.names.metrics_table
        # ACTIVE again after lifting protection (here or in prepare_delete): DeleteTable
        # refuses a table being updated (ResourceInUseException).
        found = get_or_none(ddb.describe_table, TableName=name)
        status = (found or {}).get("Table", {}).get("TableStatus")
        if status in (None, "DELETING"):
            return
        if status != "ACTIVE":
            _wait_active(ctx, ddb, name, after_update=status == "UPDATING")
        # No wait for the table to be gone: nothing deleted after it (the KMS key, scheduled)
        # needs that, ``read`` takes a DELETING table for absent (a second destroy is quiet),
        # and ``create`` waits for the name to free up (an `up` right after a destroy).
        tolerate_gone(ddb.delete_table, TableName=name)


def _wait_active(ctx: StepContext, ddb: Any, name: str, *, after_update: bool = False) -> None:
    """UpdateTable and UpdateContinuousBackups fail on a table that is not ACTIVE."""
    ctx.aws.wait(ddb, "table_exists", TableName=name,
                 WaiterConfig=TABLE_UPDATE_WAIT if after_update else TABLE_WAIT)


def _set_pitr(ctx: StepContext, ddb: Any, name: str, enabled: bool) -> None:
    """Switch point-in-time recovery, then wait until DynamoDB reports it done.

    A table that just turned ACTIVE still refuses with ContinuousBackupsUnavailableException
    ("Backups are being enabled for the table") for a while, so the call is retried
    (aws.BACKUPS_BEING_ENABLED); PITR then reads ENABLING before ENABLED, and only ENABLED
    means restores are possible, so `up` does not report the table done before that.
    """
    ctx.aws.retrying(lambda: ddb.update_continuous_backups(
        TableName=name, PointInTimeRecoverySpecification={"PointInTimeRecoveryEnabled": enabled}),
        BACKUPS_BEING_ENABLED)
    want = "ENABLED" if enabled else "DISABLED"
    deadline = ctx.aws.clock() + PITR_WAIT_S
    while True:
        status = _pitr_status(ddb.describe_continuous_backups(TableName=name))
        if status == want:
            return
        if ctx.aws.clock() + PITR_POLL_S > deadline:
            raise AwsCallError(f"DynamoDB table {name}: point-in-time recovery is still {status} after "
                               f"{PITR_WAIT_S:.0f}s (wanted {want}); run `iotpipe up` again later")
        ctx.aws.sleep(PITR_POLL_S)


def _pitr_status(answer: dict[str, Any] | None) -> str | None:
    if not answer:
        return None
    described = answer.get("ContinuousBackupsDescription") or {}
    return (described.get("PointInTimeRecoveryDescription") or {}).get(
        "PointInTimeRecoveryStatus")


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


RESOURCES: tuple[Resource, ...] = (AccessLogBucket(), SensorBucket(), MetricsTable())

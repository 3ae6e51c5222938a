"""The processing step: log group, execution role, function, Kinesis mapping.

Order matters and is the tuple's order: the log group exists before the function so that Lambda
never creates an unencrypted one itself (the role is not even allowed to); the role exists
before the function (CreateFunction needs it); the mapping comes after them because Lambda
checks, when it is created, that the function's role can read the stream and write to the
on-failure destination.

The on-failure destination is the sensor bucket (prefix ``aws/lambda/``): for a Kinesis source
an S3 destination receives the whole failed batch, where an SQS queue (iotpipe's earlier
destination, ``lambda.dlq``) receives only shard and sequence numbers that the stream forgets
after its retention. The queue is *retired*: last in the tuple, so `up` deletes it (when it is
iotpipe's and empty) only after the mapping stopped naming it.

Other steps' resources (table, bucket, stream) are referenced by their deterministic names and
ARNs (``ctx.names`` + ``ctx.aws.arn``), so this step does not need their state to plan.
"""

from __future__ import annotations

from typing import Any

from iotpipe.aws import (
    MAPPING_IN_USE,
    ROLE_NOT_ASSUMABLE_YET,
    is_not_found,
)
from iotpipe.errors import AwsCallError, IotpipeError
from iotpipe.package import build_handler_zip, code_sha256
from iotpipe.steps.base import (
    Change,
    Current,
    Resource,
    Spec,
    StepContext,
    UnknownYet,
    changed_fields,
    diff_specs,
    filter_tags,
    get_or_none,
    paginate,
    tag_changes,
    tolerate_gone,
)
from iotpipe.steps.common import LogGroup, Role, service_trust
from iotpipe.steps.storage import FAILURE_RECORDS_PREFIX
from iotpipe.timing import FUNCTION_ACTIVE, MAPPING_SETTLED

HANDLER = "index.lambda_handler"
# arm64 (Graviton2): Lambda bills arm64 about 20% less per GB-second than x86_64, and the
# handler is pure Python (stdlib + the runtime's boto3, no native wheels), so nothing in the
# package depends on the CPU architecture.
ARCHITECTURE = "arm64"
REPORT_BATCH_ITEM_FAILURES = "ReportBatchItemFailures"


# --------------------------------------------------------------------------------------------
# ARNs of this and other steps' resources, derived from the deterministic names
# --------------------------------------------------------------------------------------------
def stream_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}")


def table_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("dynamodb", f"table/{ctx.names.metrics_table}")


def bucket_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("s3", ctx.names.sensor_bucket, region=False, account=False)


def log_group_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("logs", f"log-group:{ctx.names.lambda_log_group}")


def dlq_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("sqs", ctx.names.dlq)


def function_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("lambda", f"function:{ctx.names.function}")


# --------------------------------------------------------------------------------------------
# lambda.log_group and lambda.role
# --------------------------------------------------------------------------------------------
def lambda_policy(ctx: StepContext) -> dict[str, Any]:
    """Exactly what the handler and its event source mapping use, each on one resource.

    Narrower than the seed's: no ``s3:PutObjectAcl`` (the bucket enforces owner ACLs; a
    function that can set ACLs can make objects public), S3 writes only under the two
    prefixes the handler writes to (``raw/``, ``rejected/``), no ``dynamodb:UpdateItem`` and no
    ``logs:CreateLogGroup`` (iotpipe creates the log group, encrypted). Kinesis: the actions
    Lambda's docs list for a standard-iterator mapping, on the stream only. ``ListStreams`` is
    left out (it takes no resource, so it would need ``"*"``, and the poller does not call it
    for a known stream ARN), and so is ``SubscribeToShard`` (only enhanced fan-out consumers
    use it; its resource is a consumer ARN, and this pipeline registers none).
    The mapping's S3 on-failure destination needs, with the function's role, exactly what
    Lambda documents: ``s3:PutObject`` and ``s3:ListBucket``, and ``kms:GenerateDataKey`` for a
    bucket encrypted with a customer key
    (https://docs.aws.amazon.com/lambda/latest/dg/kinesis-on-failure-destination.html); the put
    only under ``aws/lambda/``, where Lambda writes, and both only while the bucket is in this
    account (``s3:ResourceAccount``, as that page advises: a bucket deleted and re-created by
    someone else under the same name must not receive failed batches). KMS because the stream,
    table and bucket are encrypted with the pipeline key.
    """
    bucket = bucket_arn(ctx)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadSensorStream",
                "Effect": "Allow",
                "Action": ["kinesis:DescribeStream", "kinesis:DescribeStreamSummary",
                           "kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:ListShards"],
                "Resource": stream_arn(ctx),
            },
            {
                "Sid": "WriteMetrics",
                "Effect": "Allow",
                "Action": ["dynamodb:BatchWriteItem", "dynamodb:PutItem"],
                "Resource": table_arn(ctx),
            },
            {
                "Sid": "ArchiveReadings",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": [f"{bucket}/raw/*", f"{bucket}/rejected/*"],
            },
            {
                "Sid": "WriteOwnLogs",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
                "Resource": f"{log_group_arn(ctx)}:*",
            },
            {
                "Sid": "UsePipelineKey",
                "Effect": "Allow",
                "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
                "Resource": ctx.ref("kms.key", "arn"),
            },
            {
                "Sid": "WriteFailureRecords",
                "Effect": "Allow",
                "Action": "s3:PutObject",
                "Resource": f"{bucket}/{FAILURE_RECORDS_PREFIX}*",
                "Condition": {"StringEquals": {"s3:ResourceAccount": ctx.account}},
            },
            {
                "Sid": "FindFailureRecordsBucket",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": bucket,
                "Condition": {"StringEquals": {"s3:ResourceAccount": ctx.account}},
            },
        ],
    }


LAMBDA_LOG_GROUP = LogGroup("lambda.log_group", lambda n: n.lambda_log_group)
LAMBDA_ROLE = Role(
    "lambda.role",
    lambda n: n.lambda_role,
    # aws:SourceAccount only: Lambda documents it for execution-role trust policies
    # (https://docs.aws.amazon.com/lambda/latest/dg/permissions-managed-policies.html, "When a
    # service assumes a role in your account, you can include the aws:SourceAccount and
    # aws:SourceArn global condition context keys in your role trust policy"). No aws:SourceArn:
    # the role is assumed both to run the function and by the event source mapping to read the
    # stream, and AWS does not document which ARN each of those sends; pinning the function's
    # ARN could lock the mapping out.
    trust=service_trust("lambda.amazonaws.com"),
    policies={"lambda-permissions": lambda_policy},
    description="iotpipe: execution role of the sensor processor function",
    depends_on=("kms.key",),  # its policy grants the key (its ARN is read)
)


# --------------------------------------------------------------------------------------------
# lambda.dlq (retired)
# --------------------------------------------------------------------------------------------
class DeadLetterQueue(Resource):
    """The SQS queue earlier versions made as the mapping's on-failure destination: retired.

    For a Kinesis source an SQS destination receives only a batch's shard and sequence range,
    which point at nothing once the stream's retention has passed; the S3 destination receives
    the records themselves. A queue of ours is deleted by `up` once the mapping no longer names
    it (it comes after the mapping) and once it is empty: messages still in it are failure
    records that `iotpipe replay failed` reads back from the stream, so `up` keeps the queue
    and says so until they are replayed. ``destroy`` deletes it like everything else.
    """

    logical_id = "lambda.dlq"
    resource_type = "AWS::SQS::Queue"
    # Retired: deleted once the mapping no longer names it as its destination.
    depends_on = ("lambda.event_source_mapping",)
    name_field = "dlq"
    retired = "failed batches now go to the sensor bucket under aws/lambda/ (S3 on-failure destination)"

    def desired(self, ctx: StepContext) -> Spec:
        return {}

    def read(self, ctx: StepContext) -> Current | None:
        sqs = ctx.client("sqs")
        try:
            url = sqs.get_queue_url(QueueName=self.name(ctx))["QueueUrl"]
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
            tags = sqs.list_queue_tags(QueueUrl=url).get("Tags", {})
        except Exception as err:
            if is_not_found(err):
                return None
            raise
        messages = sum(_int(attrs.get(f"ApproximateNumberOf{kind}")) or 0
                       for kind in ("Messages", "MessagesNotVisible", "MessagesDelayed"))
        ids = {"name": self.name(ctx), "arn": attrs.get("QueueArn", dlq_arn(ctx)), "url": url}
        return Current({"messages": messages}, ids, managed=ctx.owns(tags))

    def retire_blocker(self, ctx: StepContext, current: Current) -> str | None:
        count = current.spec.get("messages") or 0
        if not count:
            return None
        return (f"it holds {count} failure record(s) of batches that failed before the move to S3: "
                f"run `iotpipe replay failed --env {ctx.env}`, then `up` again")

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        raise IotpipeError("lambda.dlq is retired: iotpipe no longer creates it")

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        return None

    def delete(self, ctx: StepContext, current: Current) -> None:
        tolerate_gone(ctx.client("sqs").delete_queue, QueueUrl=current.ids["url"])


# --------------------------------------------------------------------------------------------
# lambda.function
# --------------------------------------------------------------------------------------------
class Unreported(str):
    """A value the service did not report, so it cannot be compared (see Function.read)."""

    __slots__ = ()


# spec field -> UpdateFunctionConfiguration parameter
_CONFIG_PARAMS = {
    "runtime": "Runtime",
    "handler": "Handler",
    "role": "Role",
    "memory_mb": "MemorySize",
    "timeout_s": "Timeout",
    "description": "Description",
    "kms_key_arn": "KMSKeyArn",
}


class Function(Resource):
    """The sensor processor, shipped from ``iotpipe/handler`` by ``iotpipe.package``.

    Code is uploaded only when base64(sha256(zip)) differs from the function's ``CodeSha256``
    (the zip is built repeatably, so an unchanged handler never re-uploads). Every change to a
    function is followed by the ``function_updated_v2`` waiter before the next one: Lambda
    refuses a second update while one is in progress (ResourceConflictException).

    ``Architectures`` is ``arm64`` (see ARCHITECTURE): cheaper per GB-second, and the handler is
    pure Python. Changing it back requires new code, so it travels with UpdateFunctionCode.
    """

    logical_id = "lambda.function"
    resource_type = "AWS::Lambda::Function"
    # Runs as the role and encrypts its environment with the key (both ARNs are read); its
    # log group first, so Lambda does not make an unencrypted one without retention.
    depends_on = ("lambda.role", "kms.key", "lambda.log_group")
    read_needs = ("lambda.role",)  # without a recorded RoleId, the role's is the baseline
    name_field = "function"
    expected_s = FUNCTION_ACTIVE.seconds  # Pending, then Active

    def environment(self, ctx: StepContext) -> dict[str, str]:
        """The seed's three variables plus the anomaly thresholds from the config."""
        return {
            "DYNAMODB_TABLE": ctx.names.metrics_table,
            "S3_BUCKET": ctx.names.sensor_bucket,
            "ENVIRONMENT_SUFFIX": ctx.env,
            "ANOMALY_THRESHOLDS": ctx.config.thresholds_json(),
        }

    def desired(self, ctx: StepContext) -> Spec:
        cfg = ctx.config.lambda_
        return {
            "runtime": cfg.runtime,
            "handler": HANDLER,
            "role": ctx.ref("lambda.role", "arn"),
            "memory_mb": cfg.memory_mb,
            "timeout_s": cfg.timeout_s,
            "description": f"iotpipe: Kinesis sensor readings to DynamoDB and S3 ({ctx.env})",
            "architectures": [ARCHITECTURE],
            "environment": self.environment(ctx),
            # Environment variables at rest under the pipeline key, not Lambda's AWS-managed key.
            "kms_key_arn": ctx.ref("kms.key", "arn"),
            "code_sha256": code_sha256(build_handler_zip()),
            "tags": ctx.tags(self.logical_id),
            # The principal the function's KMS grant was made for (see read()).
            "role_id": ctx.ref("lambda.role", "id"),
        }

    def read(self, ctx: StepContext) -> Current | None:
        found = get_or_none(ctx.client("lambda").get_function, FunctionName=self.name(ctx))
        if found is None:
            return None
        cfg = found["Configuration"]
        tags = found.get("Tags", {})
        if "KMSKeyArn" in cfg or "RevisionId" in cfg:
            # Lambda omits KMSKeyArn when no customer key is set, and always sends RevisionId.
            kms_key_arn: Any = cfg.get("KMSKeyArn")
        else:
            # An emulator that models neither (moto): the key cannot be read back, so it is
            # not compared rather than reported as drift on every run.
            kms_key_arn = Unreported("(not reported by this endpoint)")
        spec = {
            "runtime": cfg.get("Runtime"),
            "handler": cfg.get("Handler"),
            "role": cfg.get("Role"),
            "memory_mb": cfg.get("MemorySize"),
            "timeout_s": cfg.get("Timeout"),
            "description": cfg.get("Description", ""),
            "architectures": cfg.get("Architectures") or ["x86_64"],
            "environment": (cfg.get("Environment") or {}).get("Variables", {}),
            "kms_key_arn": kms_key_arn,
            "code_sha256": cfg.get("CodeSha256"),
            "tags": filter_tags(ctx, self.logical_id, tags),
            # Not compared (not in desired): lets update wait for an unfinished previous change.
            "state": cfg.get("State"),
            "last_update_status": cfg.get("LastUpdateStatus"),
        }
        ids = {"name": cfg["FunctionName"], "arn": cfg["FunctionArn"]}
        # Lambda reads the environment variables through a KMS grant it made for the role's
        # principal (RoleId) when the role was set. A role deleted and re-created under the same
        # name keeps its ARN but not its RoleId, and every invoke then fails to decrypt: so the
        # RoleId the function was configured with is recorded, and a different one is drift.
        # Lambda does not report it, so without a record (a lost state file) it cannot be
        # compared and the current role's id is recorded as the baseline.
        recorded = ctx.recorded(self.logical_id).get("role_id")
        spec["role_id"] = recorded or Unreported("(not recorded)")
        baseline = recorded or ctx.refs.get("lambda.role", {}).get("id")
        if baseline:
            ids["role_id"] = baseline
        return Current(spec, ids, managed=ctx.owns(tags))

    def diff(self, current: Spec, desired: Spec) -> list[Change]:
        return [c for c in diff_specs(current, desired) if not isinstance(c.current, Unreported)]

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        lam = ctx.client("lambda")
        name = self.name(ctx)
        params = {
            "FunctionName": name,
            "Runtime": desired["runtime"],
            "Role": desired["role"],
            "Handler": desired["handler"],
            "Code": {"ZipFile": build_handler_zip()},
            "Description": desired["description"],
            "Timeout": desired["timeout_s"],
            "MemorySize": desired["memory_mb"],
            "Environment": {"Variables": desired["environment"]},
            "KMSKeyArn": desired["kms_key_arn"],
            "Architectures": desired["architectures"],
            "PackageType": "Zip",
            "Publish": False,
            "Tags": desired["tags"],  # in the create call: a function is never untagged
        }
        # A role made seconds ago is not assumable by Lambda yet (IAM is eventually consistent).
        created = ctx.aws.retrying(lambda: lam.create_function(**params), ROLE_NOT_ASSUMABLE_YET)
        ctx.aws.wait(lam, "function_active_v2", FunctionName=name)
        ids = {"name": name, "arn": created["FunctionArn"]}
        if not isinstance(desired["role_id"], UnknownYet):
            ids["role_id"] = desired["role_id"]
        return ids

    def update(self, ctx: StepContext, current: Current, desired: Spec,
               changes: list[Change]) -> dict[str, str] | None:
        lam = ctx.client("lambda")
        name = self.name(ctx)
        fields = changed_fields(changes)
        self._wait_until_idle(ctx, current)
        config = {param: desired[key] for key, param in _CONFIG_PARAMS.items() if key in fields}
        if "role_id" in fields:
            # Same ARN, new principal: setting the role again makes Lambda grant the new one.
            config["Role"] = desired["role"]
        if "environment" in fields:
            config["Environment"] = {"Variables": desired["environment"]}
        if config:
            # A new role ARN meets the same IAM propagation delay as at creation.
            ctx.aws.retrying(lambda: lam.update_function_configuration(FunctionName=name, **config),
                             ROLE_NOT_ASSUMABLE_YET)
            ctx.aws.wait(lam, "function_updated_v2", FunctionName=name)
        if fields & {"code_sha256", "architectures"}:
            code: dict[str, Any] = {"ZipFile": build_handler_zip()}
            if "architectures" in fields:
                code["Architectures"] = desired["architectures"]
            lam.update_function_code(FunctionName=name, **code)
            ctx.aws.wait(lam, "function_updated_v2", FunctionName=name)
        if "tags" in fields:  # tags are not a function update: no waiting needed
            to_set, to_remove = tag_changes(current.spec["tags"], desired["tags"])
            if to_set:
                lam.tag_resource(Resource=current.ids["arn"], Tags=to_set)
            if to_remove:
                lam.untag_resource(Resource=current.ids["arn"], TagKeys=to_remove)
        if "Role" in config and not isinstance(desired["role_id"], UnknownYet):
            return {"role_id": desired["role_id"]}
        return None

    @staticmethod
    def _wait_until_idle(ctx: StepContext, current: Current) -> None:
        """A function still being created or updated (a crashed run) refuses changes: wait."""
        lam = ctx.client("lambda")
        if current.spec.get("state") == "Pending":
            ctx.aws.wait(lam, "function_active_v2", FunctionName=current.ids["name"])
        elif current.spec.get("last_update_status") == "InProgress":
            ctx.aws.wait(lam, "function_updated_v2", FunctionName=current.ids["name"])

    def delete(self, ctx: StepContext, current: Current) -> None:
        tolerate_gone(ctx.client("lambda").delete_function,
                      FunctionName=current.ids.get("name") or self.name(ctx))


# --------------------------------------------------------------------------------------------
# lambda.event_source_mapping
# --------------------------------------------------------------------------------------------
# States in which Lambda refuses UpdateEventSourceMapping/DeleteEventSourceMapping.
ESM_TRANSITIONAL = frozenset({"Creating", "Enabling", "Disabling", "Updating"})
ESM_ENABLED = frozenset({"Creating", "Enabling", "Enabled", "Updating"})
ESM_SETTLE_TIMEOUT_S = 300.0
ESM_POLL_S = MAPPING_SETTLED.poll_s

# spec field -> UpdateEventSourceMapping parameter (StartingPosition is create-only)
_ESM_PARAMS = {
    "batch_size": "BatchSize",
    "batch_window_s": "MaximumBatchingWindowInSeconds",
    "function_response_types": "FunctionResponseTypes",
    "bisect_on_error": "BisectBatchOnFunctionError",
    "max_retry_attempts": "MaximumRetryAttempts",
    "max_record_age_s": "MaximumRecordAgeInSeconds",
    "parallelization_factor": "ParallelizationFactor",
    "enabled": "Enabled",
}
# Only read at creation: once the mapping has checkpoints the starting position means nothing,
# and UpdateEventSourceMapping cannot change it. Shown by plan, never reported as drift.
ESM_CREATE_ONLY = frozenset({"starting_position"})
# The metrics group with OnFailureDestinationDeliveredEventCount, see
# https://docs.aws.amazon.com/lambda/latest/dg/monitoring-metrics-types.html#event-source-mapping-metrics
ESM_EVENT_COUNT = "EventCount"


class EventSourceMapping(Resource):
    """Kinesis stream → function, with partial-batch failure reporting and an S3 on-failure destination.

    ``FunctionResponseTypes=["ReportBatchItemFailures"]`` is what makes Lambda honour the
    handler's ``batchItemFailures`` answer; without it a partial failure is either a silent
    loss or a whole-batch retry, so a mapping missing it is drift that ``status`` reports.
    Retries and record age are bounded and the batch is bisected on error, so one poison record
    cannot block a shard for the stream's whole retention; what still fails is written by Lambda,
    whole, to the sensor bucket under ``aws/lambda/`` (see `iotpipe replay failed`).

    A mapping has no name: it is found by its natural key, the stream ARN, filtered by our
    function ARN (moto's FunctionName filter matches only the exact string used at creation).
    A retried or crashed CreateEventSourceMapping can leave two mappings on the same pair,
    which would process every record twice: ``read`` keeps one (the recorded one, else one of
    ours by tags, else the oldest) and reports the others in the ``duplicates`` field, so
    ``status`` shows them and ``up`` deletes them.

    There is no boto3 waiter for mappings: before changing one, a bounded poll of its State
    (``ctx.aws.sleep``, so tests do not wait) lets a Creating/Updating mapping settle, as
    Lambda rejects changes meanwhile. A mapping in state Deleting counts as absent.
    """

    logical_id = "lambda.event_source_mapping"
    resource_type = "AWS::Lambda::EventSourceMapping"
    # What must exist before the mapping is (and stay until it is gone): the function it
    # invokes and the stream it reads (both named in CreateEventSourceMapping), the sensor
    # bucket its on-failure destination writes to, and the metrics table the function writes
    # every reading to as soon as the mapping delivers one.
    depends_on = ("lambda.function", "stream.sensor_stream", "storage.sensor_bucket", "storage.metrics_table")
    expected_s = MAPPING_SETTLED.seconds  # Creating, then Enabled

    def name(self, ctx: StepContext) -> str:
        return f"{ctx.names.function}<-{ctx.names.stream}"

    def desired(self, ctx: StepContext) -> Spec:
        cfg = ctx.config.lambda_
        return {
            "starting_position": cfg.starting_position,
            "batch_size": cfg.batch_size,
            "batch_window_s": cfg.batch_window_s,
            "function_response_types": [REPORT_BATCH_ITEM_FAILURES],
            "bisect_on_error": cfg.bisect_on_error,
            "max_retry_attempts": cfg.max_retry_attempts,
            "max_record_age_s": cfg.max_record_age_s,
            "parallelization_factor": cfg.parallelization_factor,
            "on_failure_destination": bucket_arn(ctx),
            # AWS publishes the mapping's own metrics (OnFailureDestinationDeliveredEventCount,
            # which the monitor step's failure_records alarm watches) only when asked to.
            "metrics": [ESM_EVENT_COUNT],
            "enabled": True,
            "tags": ctx.tags(self.logical_id),
            "duplicates": [],
        }

    def diff(self, current: Spec, desired: Spec) -> list[Change]:
        return [c for c in diff_specs(current, desired) if c.field not in ESM_CREATE_ONLY]

    def _esm_arn(self, ctx: StepContext, mapping: dict[str, Any]) -> str:
        return mapping.get("EventSourceMappingArn") or ctx.aws.arn(
            "lambda", f"event-source-mapping:{mapping['UUID']}")

    def _tags(self, ctx: StepContext, mapping: dict[str, Any]) -> dict[str, str]:
        found = get_or_none(ctx.client("lambda").list_tags, Resource=self._esm_arn(ctx, mapping))
        return found.get("Tags", {}) if found else {}

    def read(self, ctx: StepContext) -> Current | None:
        ours = [m for m in self._on_pair(ctx) if m.get("State") != "Deleting"]
        if not ours:
            return None
        tags_of = {m["UUID"]: self._tags(ctx, m) for m in ours}
        recorded = ctx.recorded(self.logical_id).get("uuid")
        ours.sort(key=lambda m: (
            m["UUID"] != recorded,
            not (ctx.owns(tags_of[m["UUID"]])),
            str(m.get("LastModified", "")),
            m["UUID"],
        ))
        primary, extra = ours[0], ours[1:]
        tags = tags_of[primary["UUID"]]
        state = primary.get("State", "")
        destination = ((primary.get("DestinationConfig") or {}).get("OnFailure") or {}).get("Destination")
        spec = {
            "starting_position": primary.get("StartingPosition"),
            "batch_size": primary.get("BatchSize"),
            "batch_window_s": primary.get("MaximumBatchingWindowInSeconds", 0),
            "function_response_types": sorted(primary.get("FunctionResponseTypes") or []),
            "bisect_on_error": bool(primary.get("BisectBatchOnFunctionError")),
            "max_retry_attempts": primary.get("MaximumRetryAttempts"),
            "max_record_age_s": primary.get("MaximumRecordAgeInSeconds"),
            "parallelization_factor": primary.get("ParallelizationFactor"),
            "on_failure_destination": destination,
            "metrics": sorted((primary.get("MetricsConfig") or {}).get("Metrics") or []),
            "enabled": state in ESM_ENABLED,
            "tags": filter_tags(ctx, self.logical_id, tags),
            "duplicates": sorted(m["UUID"] for m in extra),
            "state": state,  # not compared: lets update/delete wait for a transition to end
        }
        ids = {"uuid": primary["UUID"], "arn": self._esm_arn(ctx, primary), "name": self.name(ctx)}
        return Current(spec, ids, managed=ctx.owns(tags))

    def _params(self, ctx: StepContext, desired: Spec, fields: set[str] | None = None) -> dict[str, Any]:
        params = {param: desired[key] for key, param in _ESM_PARAMS.items()
                  if fields is None or key in fields}
        if fields is None or "on_failure_destination" in fields:
            params["DestinationConfig"] = {"OnFailure": {"Destination": desired["on_failure_destination"]}}
        if fields is None or "metrics" in fields:
            params["MetricsConfig"] = {"Metrics": desired["metrics"]}
        return params

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        lam = ctx.client("lambda")
        params = {
            "EventSourceArn": stream_arn(ctx),
            "FunctionName": function_arn(ctx),
            "StartingPosition": desired["starting_position"],
            **self._params(ctx, desired),
            "Tags": desired["tags"],
        }
        # A mapping on the same stream and function still Deleting (an `up` right after a
        # `destroy`: the ARNs come from the names) makes Lambda refuse this one with
        # ResourceConflictException "... provided mapping already exists": let it go first.
        for mapping in self._on_pair(ctx):
            if mapping.get("State") == "Deleting":
                self._wait_gone(ctx, mapping["UUID"])
        # Lambda checks at creation that the function's role may read the stream and write to
        # the destination: a policy written seconds ago can still be invisible to it.
        created = ctx.aws.retrying(lambda: lam.create_event_source_mapping(**params), ROLE_NOT_ASSUMABLE_YET)
        # Creating -> Enabled takes a while on AWS, and the iot step (next) makes the topic rule
        # live: a LATEST mapping positions itself only once Enabled, so wait for it here.
        state = self._settle(ctx, created["UUID"], None)
        if desired["enabled"] and state != "Enabled":
            reason = (get_or_none(lam.get_event_source_mapping, UUID=created["UUID"]) or {}).get(
                "StateTransitionReason", "")
            raise AwsCallError(f"event source mapping {created['UUID']} is {state or 'gone'} after "
                               f"creation, not Enabled{': ' + reason if reason else ''}")
        return {"uuid": created["UUID"], "arn": self._esm_arn(ctx, created), "name": self.name(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        lam = ctx.client("lambda")
        fields = changed_fields(changes)
        uuid = current.ids["uuid"]
        if "duplicates" in fields:
            for extra in current.spec["duplicates"]:
                self._delete_one(ctx, extra, None)
        params = self._params(ctx, desired, fields)
        if params:
            if self._settle(ctx, uuid, current.spec.get("state")) is None:
                raise AwsCallError(f"event source mapping {uuid} disappeared while being updated")
            ctx.aws.retrying(lambda: lam.update_event_source_mapping(UUID=uuid, **params),
                             ROLE_NOT_ASSUMABLE_YET, MAPPING_IN_USE)
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec["tags"], desired["tags"])
            if to_set:
                lam.tag_resource(Resource=current.ids["arn"], Tags=to_set)
            if to_remove:
                lam.untag_resource(Resource=current.ids["arn"], TagKeys=to_remove)

    def delete(self, ctx: StepContext, current: Current) -> None:
        for extra in current.spec.get("duplicates", []):
            self._delete_one(ctx, extra, None)
        self._delete_one(ctx, current.ids["uuid"], current.spec.get("state"))

    def _delete_one(self, ctx: StepContext, uuid: str, state: str | None) -> None:
        """Delete one mapping; do not wait for Lambda to finish deleting it.

        Even a mapping that reads Enabled can still be settling after its creation or an
        update: DeleteEventSourceMapping then answers ResourceInUseException, retried within
        aws.MAPPING_IN_USE. The delete itself is asynchronous (the mapping reads Deleting for
        seconds). Nothing deleted after it needs it gone (AWS deletes the function and the
        stream under a Deleting mapping), ``read`` takes a Deleting mapping for absent, and
        ``create`` waits for one on the same stream and function to go (the one case AWS
        refuses: a new mapping on the same pair), so destroy does not wait here.
        """
        if self._settle(ctx, uuid, state) is not None:  # else gone, or already being deleted
            lam = ctx.client("lambda")
            ctx.aws.retrying(lambda: tolerate_gone(lam.delete_event_source_mapping, UUID=uuid),
                             MAPPING_IN_USE)

    @staticmethod
    def _on_pair(ctx: StepContext) -> list[dict[str, Any]]:
        """Every mapping from our stream to our function, whatever its state."""
        mappings = get_or_none(paginate, ctx.client("lambda"), "list_event_source_mappings",
                               "EventSourceMappings", EventSourceArn=stream_arn(ctx)) or []
        return [m for m in mappings if m.get("FunctionArn") == function_arn(ctx)]

    @staticmethod
    def _wait_gone(ctx: StepContext, uuid: str) -> None:
        """A bounded poll (no boto3 waiter exists for mappings) until ``uuid`` reads NotFound."""
        lam = ctx.client("lambda")
        deadline = ctx.aws.clock() + ESM_SETTLE_TIMEOUT_S
        while get_or_none(lam.get_event_source_mapping, UUID=uuid) is not None:
            if ctx.aws.clock() + ESM_POLL_S > deadline:
                raise AwsCallError(
                    f"event source mapping {uuid} is still being deleted after "
                    f"{ESM_SETTLE_TIMEOUT_S:.0f}s; run again later")
            ctx.aws.report("waiter", f"waiting for the previous event source mapping {uuid} to be "
                                     "deleted: AWS reports State = Deleting", state="Deleting")
            ctx.aws.sleep(ESM_POLL_S)

    def _settle(self, ctx: StepContext, uuid: str, state: str | None) -> str | None:
        """Wait until mapping ``uuid`` is in a state that accepts changes; None if it is gone.

        There is no boto3 waiter for event source mappings, so this is a bounded poll of
        GetEventSourceMapping (rule 6 allows our own loop only where no waiter exists). With a
        known stable ``state`` (from ``read``) it costs no call at all.
        """
        if state and state not in ESM_TRANSITIONAL and state != "Deleting":
            return state
        lam = ctx.client("lambda")
        deadline = ctx.aws.clock() + ESM_SETTLE_TIMEOUT_S
        while True:
            found = get_or_none(lam.get_event_source_mapping, UUID=uuid)
            if found is None or found.get("State") == "Deleting":
                return None
            state = found.get("State", "")
            if state not in ESM_TRANSITIONAL:
                return state
            if ctx.aws.clock() + ESM_POLL_S > deadline:
                raise AwsCallError(
                    f"event source mapping {uuid} is still {state} after {ESM_SETTLE_TIMEOUT_S:.0f}s; "
                    "run again later")
            ctx.aws.report("waiter", f"waiting for event source mapping {uuid}: AWS reports State = {state}",
                           state=state)
            ctx.aws.sleep(ESM_POLL_S)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


RESOURCES: tuple[Resource, ...] = (
    LAMBDA_LOG_GROUP,
    LAMBDA_ROLE,
    Function(),
    EventSourceMapping(),
    DeadLetterQueue(),  # retired: after the mapping, which must stop naming it first
)

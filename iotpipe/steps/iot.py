"""IoT Core: the topic rule that routes sensor data to Kinesis, its role and error log group,
the thing type sensors register as, and the least-privilege policy devices connect with.

Ownership of the thing type, the device policy and the topic rule comes from the tags AWS
returns (ListTagsForResource; they are set at creation). The emulator cannot read IoT tags
back (``AwsContext.supports`` finds out once per run): there, and only there, the thing type
and the topic rule are judged by iotpipe's marker in their description, and the device
policy, which has no description, by the thing type (see DevicePolicy).

Fixes over the seed: the rule role may use the stream's KMS key (the stream is encrypted, so
PutRecord needs kms:GenerateDataKey), the rule has an error action writing to the IoT log group
(the seed created that group and never used it), the role's trust is pinned to the account and
the rule, and devices get a policy that only lets a registered thing publish to its own topic.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from iotpipe.aws import (
    POLICY_DETACH_PROPAGATING,
    ROLE_NOT_ASSUMABLE_YET,
    error_code,
    error_message,
    is_not_found,
)
from iotpipe.errors import IotpipeError, OwnershipError
from iotpipe.steps.base import (
    Change,
    Current,
    DeletionPending,
    Resource,
    Spec,
    StepContext,
    changed_fields,
    get_or_none,
    paginate,
    policy_json,
    tag_dict,
    tag_list,
    tolerate_gone,
)
from iotpipe.steps.common import LogGroup, Role, service_trust

SENSOR_TOPIC_FILTER = "manufacturing/sensors/+/data"
RULE_SQL = f"SELECT * FROM '{SENSOR_TOPIC_FILTER}'"
RULE_SQL_VERSION = "2016-03-23"
# ${topic(3)} is the device id segment of manufacturing/sensors/<device>/data: one device's
# readings stay in order on one shard.
PARTITION_KEY = "${topic(3)}"
SEARCHABLE_ATTRIBUTES = ("location", "facility", "equipment_type")
# AWS refuses DeleteThingType until a thing type has been deprecated for this long.
THING_TYPE_DELETE_DELAY = timedelta(minutes=5)
# IoT may see a detached policy as attached for this long (DeletePolicy: DeleteConflictException).
POLICY_DETACH_DELAY = timedelta(minutes=5)
# Most detachments propagate in seconds: worth a short wait before reporting the policy pending.
POLICY_DELETE_AFTER_DETACH = replace(POLICY_DETACH_PROPAGATING, timeout_s=20.0)
# IoT keeps at most five versions of a policy; the sixth needs the oldest non-default one gone.
MAX_POLICY_VERSIONS = 5
ROLE_POLICY_NAME = "iot-kinesis-policy"


class ThingTypeImmutableError(IotpipeError):
    """A thing type's properties cannot be changed in place; only replacing it helps."""


def iot_tags(ctx: StepContext, arn: str) -> dict[str, str] | None:
    """The IoT resource's tags; None where the endpoint cannot read them (the emulator)."""
    if not ctx.aws.supports("iot.list_tags_for_resource"):
        return None
    return tag_dict(paginate(ctx.client("iot"), "list_tags_for_resource", "tags", resourceArn=arn))


def thing_type_is_ours(ctx: StepContext, found: dict[str, Any]) -> bool:
    """A DescribeThingType answer is ours by its tags, or by its marker where tags are unreadable."""
    tags = iot_tags(ctx, found["thingTypeArn"])
    if tags is not None:
        return ctx.owns(tags)
    description = (found.get("thingTypeProperties") or {}).get("thingTypeDescription") or ""
    return ctx.marker(ThingType.logical_id) in description


def rule_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("iot", f"rule/{ctx.names.topic_rule}")


def stream_arn(ctx: StepContext) -> str:
    """Derived from the name, so this module needs nothing of the stream step to exist."""
    return ctx.aws.arn("kinesis", f"stream/{ctx.names.stream}")


def iot_log_group_arn(ctx: StepContext) -> str:
    return ctx.aws.arn("logs", f"log-group:{ctx.names.iot_log_group}")


def rule_role_policy(ctx: StepContext) -> dict[str, Any]:
    """Exactly what the rule's two actions need, on exactly their resources."""
    log_group = iot_log_group_arn(ctx)
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "PutSensorRecords",
                "Effect": "Allow",
                "Action": ["kinesis:PutRecord", "kinesis:PutRecords"],
                "Resource": stream_arn(ctx),
            },
            {
                # The stream is encrypted with the pipeline key: a producer without these
                # cannot write to it (the seed's role lacked them).
                "Sid": "UseStreamKey",
                "Effect": "Allow",
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                "Resource": ctx.ref("kms.key", "arn"),
            },
            {
                "Sid": "WriteRuleErrors",
                "Effect": "Allow",
                "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
                "Resource": [log_group, f"{log_group}:*"],
            },
        ],
    }


def device_policy_document(ctx: StepContext) -> dict[str, Any]:
    """A certificate-authenticated sensor may connect only as the thing its certificate is
    attached to, and publish only to that thing's own data topic.

    No Sids: AWS's IoT policy examples never use them, and the document must be accepted as is.
    """
    thing = "${iot:Connection.Thing.ThingName}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "iot:Connect",
                "Resource": ctx.aws.arn("iot", f"client/{thing}"),
                "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}},
            },
            {
                "Effect": "Allow",
                "Action": "iot:Publish",
                "Resource": ctx.aws.arn("iot", f"topic/manufacturing/sensors/{thing}/data"),
            },
        ],
    }


# --------------------------------------------------------------------------------------------
# Thing type
# --------------------------------------------------------------------------------------------
class ThingType(Resource):
    """The type sensors register as, with the attributes fleet search indexes.

    AWS never changes a thing type's properties in place: a different description or
    attribute list can only be fixed by deprecating, waiting five minutes, deleting and
    recreating it, which would strand the things of that type. So `update` refuses that with
    ThingTypeImmutableError and says how to replace it; the only thing it repairs is a
    deprecation (someone deprecated it: new things could no longer use it), by undoing it.
    """

    logical_id = "iot.thing_type"
    resource_type = "AWS::IoT::ThingType"
    replaced_only = frozenset({"description", "searchable_attributes"})

    name_field = "thing_type"

    def desired(self, ctx: StepContext) -> Spec:
        return {
            "description": f"Manufacturing sensors of the IoT pipeline ({ctx.env}) "
                           f"{ctx.marker(self.logical_id)}",
            "searchable_attributes": list(SEARCHABLE_ATTRIBUTES),
            "deprecated": False,
        }

    def read(self, ctx: StepContext) -> Current | None:
        found = get_or_none(ctx.client("iot").describe_thing_type, thingTypeName=self.name(ctx))
        if found is None:
            return None
        props = found.get("thingTypeProperties", {})
        meta = found.get("thingTypeMetadata", {})
        deprecated_at = meta.get("deprecationDate")
        description = props.get("thingTypeDescription", "")
        spec = {
            "description": description,
            "searchable_attributes": props.get("searchableAttributes", []),
            "deprecated": bool(meta.get("deprecated", False)),
            # Not compared (not in desired): destroy uses it to say when deletion is allowed.
            "deprecation_date": deprecated_at.isoformat() if deprecated_at else None,
        }
        ids = {"name": found["thingTypeName"], "arn": found["thingTypeArn"],
               "id": found.get("thingTypeId", "")}
        return Current(spec, ids, managed=thing_type_is_ours(ctx, found))

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        made = ctx.client("iot").create_thing_type(
            thingTypeName=self.name(ctx),
            thingTypeProperties={
                "thingTypeDescription": desired["description"],
                "searchableAttributes": desired["searchable_attributes"],
            },
            tags=tag_list(ctx.tags(self.logical_id)),  # stored by AWS; ownership is the marker
        )
        return {"name": made["thingTypeName"], "arn": made["thingTypeArn"],
                "id": made.get("thingTypeId", "")}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        fields = changed_fields(changes)
        immutable = sorted(fields & self.replaced_only)
        if immutable:
            name = self.name(ctx)
            raise ThingTypeImmutableError(
                f"thing type {name!r}: {', '.join(immutable)} differ(s) from the configuration, and "
                "AWS cannot change a thing type in place. To replace it: `aws iot "
                f"deprecate-thing-type --thing-type-name {name}`, wait 5 minutes, `aws iot "
                f"delete-thing-type --thing-type-name {name}`, then run `iotpipe up` again "
                "(things of this type must be moved to another type first)")
        if "deprecated" in fields and not desired["deprecated"]:
            ctx.client("iot").deprecate_thing_type(thingTypeName=self.name(ctx), undoDeprecate=True)

    def delete(self, ctx: StepContext, current: Current) -> None:
        """Deprecate, then delete; AWS refuses the delete for 5 minutes after deprecation.

        That refusal is reported as DeletionPending (the engine shows "pending") with the time
        from which a re-run of destroy succeeds; the re-run reads the type as deprecated and
        goes straight to the delete.
        """
        iot = ctx.client("iot")
        name = self.name(ctx)
        if current.spec.get("deprecated"):
            stamp = current.spec.get("deprecation_date")
            deprecated_at = datetime.fromisoformat(stamp).astimezone(UTC) if stamp else None
        else:
            tolerate_gone(iot.deprecate_thing_type, thingTypeName=name, undoDeprecate=False)
            deprecated_at = datetime.now(UTC)
        try:
            iot.delete_thing_type(thingTypeName=name)
        except Exception as err:
            if is_not_found(err):
                return
            if error_code(err) != "InvalidRequestException":
                raise
            if deprecated_at is None:
                when = "AWS deletes it 5 minutes after its deprecation"
                since = "deprecated"
            else:
                since = f"deprecated at {deprecated_at:%Y-%m-%d %H:%M:%S} UTC"
                when = f"AWS deletes it from {deprecated_at + THING_TYPE_DELETE_DELAY:%Y-%m-%d %H:%M:%S} UTC"
            raise DeletionPending(
                f"thing type {name} {since}; {when} — run `iotpipe destroy` again then "
                f"(AWS said: {error_message(err)})") from err


# --------------------------------------------------------------------------------------------
# Device policy
# --------------------------------------------------------------------------------------------
class DevicePolicy(Resource):
    """The IoT policy attached to sensor certificates.

    Ownership: the policy's tags (set in CreatePolicy). A policy with our name that someone
    else made carries no iotpipe tags for this env and is foreign: `up` refuses it and
    `destroy` never detaches its targets. An IoT policy has no description for a marker, so
    where tags cannot be read (the emulator) it is judged by this env's thing type, which `up`
    makes just before it. Changing the document keeps the name (a new default version), so
    attachments to certificates survive an update.
    """

    logical_id = "iot.device_policy"
    resource_type = "AWS::IoT::Policy"

    name_field = "device_policy"

    def desired(self, ctx: StepContext) -> Spec:
        return {"document": device_policy_document(ctx)}

    def read(self, ctx: StepContext) -> Current | None:
        found = get_or_none(ctx.client("iot").get_policy, policyName=self.name(ctx))
        if found is None:
            return None
        ids = {"name": found["policyName"], "arn": found["policyArn"],
               "version": str(found.get("defaultVersionId", ""))}
        tags = iot_tags(ctx, found["policyArn"])
        if tags is None:  # the emulator: see the class docstring
            thing_type = get_or_none(ctx.client("iot").describe_thing_type, thingTypeName=ctx.names.thing_type)
            if thing_type is not None:
                managed = thing_type_is_ours(ctx, thing_type)
            else:
                # The type went first while IoT still refused this policy (DeleteConflict after
                # a detach): our state record of it is then the only mark left; without it a
                # later destroy would leave the policy behind as "not ours".
                managed = ctx.recorded(self.logical_id).get("arn") == found["policyArn"]
        else:
            managed = ctx.owns(tags)
        return Current({"document": found.get("policyDocument")}, ids, managed=managed)

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        made = ctx.client("iot").create_policy(
            policyName=self.name(ctx),
            policyDocument=policy_json(desired["document"]),
            tags=tag_list(ctx.tags(self.logical_id)),
        )
        return {"name": made["policyName"], "arn": made["policyArn"],
                "version": str(made.get("policyVersionId", ""))}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        iot = ctx.client("iot")
        name = self.name(ctx)
        versions = iot.list_policy_versions(policyName=name)["policyVersions"]
        if len(versions) >= MAX_POLICY_VERSIONS:
            oldest = min((v for v in versions if not v["isDefaultVersion"]),
                         key=lambda v: (v.get("createDate") or datetime.min.replace(tzinfo=UTC),
                                        int(v["versionId"])))
            iot.delete_policy_version(policyName=name, policyVersionId=oldest["versionId"])
        iot.create_policy_version(policyName=name, policyDocument=policy_json(desired["document"]),
                                  setAsDefault=True)

    def delete(self, ctx: StepContext, current: Current) -> None:
        """IoT refuses to delete a policy that is attached or has old versions: clear both first.

        A detachment (here, or by the devices' removal just before) propagates slowly: IoT can
        answer DeleteConflictException "... is attached to one or more principals" for up to
        5 minutes. After a short retry that is reported as DeletionPending, like the thing
        type's 5 minutes: destroy deletes everything else, exits 3, and a re-run (or --wait)
        finishes it.
        """
        iot = ctx.client("iot")
        name = self.name(ctx)
        for target in get_or_none(paginate, iot, "list_targets_for_policy", "targets", policyName=name) or []:
            tolerate_gone(iot.detach_policy, policyName=name, target=target)
        versions = get_or_none(iot.list_policy_versions, policyName=name) or {}
        for version in versions.get("policyVersions", []):
            if not version["isDefaultVersion"]:
                tolerate_gone(iot.delete_policy_version, policyName=name, policyVersionId=version["versionId"])
        try:
            ctx.aws.retrying(lambda: tolerate_gone(iot.delete_policy, policyName=name),
                             POLICY_DELETE_AFTER_DETACH)
        except Exception as err:
            if not POLICY_DELETE_AFTER_DETACH.matches(err):
                raise
            raise DeletionPending(
                f"IoT policy {name} was detached from its certificates, but IoT still sees it "
                f"attached (it can take up to {POLICY_DETACH_DELAY.seconds // 60} minutes) — run "
                f"`iotpipe destroy` again then, or use --wait (AWS said: {error_message(err)})") from err


# --------------------------------------------------------------------------------------------
# Topic rule
# --------------------------------------------------------------------------------------------
class TopicRule(Resource):
    """Routes every sensor's data topic to the Kinesis stream; failures go to the IoT log group."""

    logical_id = "iot.topic_rule"
    resource_type = "AWS::IoT::TopicRule"
    # The role it acts as (its ARN is read) and its error log group; the stream its Kinesis
    # action puts into; and the event source mapping, so that there is a reader (Enabled, at
    # the stream's tip) before there is a writer, and destroy stops the writer first.
    depends_on = ("iot.rule_role", "iot.log_group", "stream.sensor_stream", "lambda.event_source_mapping")
    name_field = "topic_rule"

    def desired(self, ctx: StepContext) -> Spec:
        role = ctx.ref("iot.rule_role", "arn")
        return {
            "sql": RULE_SQL,
            "sql_version": RULE_SQL_VERSION,
            "description": f"Route sensor data to Kinesis stream {ctx.marker(self.logical_id)}",
            "disabled": False,
            "actions": [{"kinesis": {"streamName": ctx.names.stream, "roleArn": role,
                                     "partitionKey": PARTITION_KEY}}],
            "error_action": {"cloudwatchLogs": {"logGroupName": ctx.names.iot_log_group,
                                                "roleArn": role}},
        }

    def read(self, ctx: StepContext) -> Current | None:
        """Existence through ListTopicRules: AWS answers GetTopicRule on a missing rule with
        UnauthorizedException (not a not-found code), so that call alone cannot tell."""
        iot = ctx.client("iot")
        name = self.name(ctx)
        listed = next((r for r in paginate(iot, "list_topic_rules", "rules")
                       if r.get("ruleName") == name), None)
        if listed is None:
            return None
        found = get_or_none(iot.get_topic_rule, ruleName=name)
        if found is None:  # deleted between the two calls
            return None
        rule = found.get("rule", {})
        description = rule.get("description", "")
        spec = {
            "sql": rule.get("sql"),
            "sql_version": rule.get("awsIotSqlVersion"),
            "description": description,
            "disabled": bool(rule.get("ruleDisabled", False)),
            "actions": [_without_defaults(a) for a in rule.get("actions", [])],
            "error_action": _without_defaults(rule["errorAction"]) if rule.get("errorAction") else None,
        }
        ids = {"name": name, "arn": found.get("ruleArn") or listed.get("ruleArn", rule_arn(ctx))}
        tags = iot_tags(ctx, ids["arn"])
        managed = ctx.owns(tags) if tags is not None else ctx.marker(self.logical_id) in description
        return Current(spec, ids, managed=managed)

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        iot = ctx.client("iot")
        payload = _payload(desired)
        tags = urlencode(sorted(ctx.tags(self.logical_id).items()))  # "k=v&k2=v2", as IoT wants
        # The rule role was usually created a moment ago; IoT rejects it until IAM propagated.
        ctx.aws.retrying(
            lambda: iot.create_topic_rule(ruleName=self.name(ctx), topicRulePayload=payload, tags=tags),
            ROLE_NOT_ASSUMABLE_YET)
        return {"name": self.name(ctx), "arn": rule_arn(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        iot = ctx.client("iot")
        name = self.name(ctx)
        if changed_fields(changes) == {"disabled"}:
            if desired["disabled"]:
                iot.disable_topic_rule(ruleName=name)
            else:
                iot.enable_topic_rule(ruleName=name)
            return
        payload = _payload(desired)
        # A replaced role may be as new as a created one.
        ctx.aws.retrying(lambda: iot.replace_topic_rule(ruleName=name, topicRulePayload=payload),
                         ROLE_NOT_ASSUMABLE_YET)

    def delete(self, ctx: StepContext, current: Current) -> None:
        tolerate_gone(ctx.client("iot").delete_topic_rule, ruleName=self.name(ctx))


def _payload(desired: Spec) -> dict[str, Any]:
    return {
        "sql": desired["sql"],
        "awsIotSqlVersion": desired["sql_version"],
        "description": desired["description"],
        "ruleDisabled": desired["disabled"],
        "actions": desired["actions"],
        "errorAction": desired["error_action"],
    }


def _without_defaults(action: dict[str, Any]) -> dict[str, Any]:
    """Drop what AWS reports but we never set at its default (cloudwatchLogs' batchMode=false),
    so a rule in sync does not read as drifted."""
    return {kind: {k: v for k, v in (body or {}).items() if not (k == "batchMode" and v is False)}
            for kind, body in action.items()}


# --------------------------------------------------------------------------------------------
# Devices (things registered with `iotpipe device add`)
# --------------------------------------------------------------------------------------------
# Things take no readable tags and no description, so a device carries iotpipe's marker as an
# attribute: "iotpipe:env" = <env>. A thing without it, or with another env's, is not ours.
DEVICE_MARKER_ATTRIBUTE = "iotpipe:env"
# AWS: "DetachThingPrincipal is asynchronous. It might take several seconds for the detachment
# to propagate." Until it has, DeleteCertificate and DeleteThing refuse with a conflict
# (aws.POLICY_DETACH_PROPAGATING).


def is_cert(principal: str) -> bool:
    return ":cert/" in principal


def cert_id(cert_arn: str) -> str:
    return cert_arn.rsplit("/", 1)[-1]


def device_marker_ok(ctx: StepContext, thing: dict[str, Any]) -> bool:
    return (thing.get("attributes") or {}).get(DEVICE_MARKER_ATTRIBUTE) == ctx.env


def thing_certificates(ctx: StepContext, thing_name: str) -> list[str]:
    """The certificate ARNs attached to a thing (other principal kinds are not iotpipe's)."""
    iot = ctx.client("iot")
    return [p for p in paginate(iot, "list_thing_principals", "principals", thingName=thing_name)
            if is_cert(p)]


def retry_while_detaching(ctx: StepContext, call: Any) -> Any:
    """Run ``call`` (a delete), retrying only while AWS still sees a detached principal as
    attached; bounded, so a real conflict (attached elsewhere) is reported, not waited on."""
    return ctx.aws.retrying(call, POLICY_DETACH_PROPAGATING)


def retire_certificate(ctx: StepContext, cert_arn: str, thing_name: str) -> bool:
    """Detach a device certificate from ``thing_name`` and delete it: policies detached, set
    INACTIVE (AWS refuses to delete an active one), deleted. Absent at any point is fine.

    A certificate also attached to another thing is someone else's to keep: it is only
    detached from this one. Returns whether the certificate was deleted.
    """
    iot = ctx.client("iot")
    found = get_or_none(iot.describe_certificate, certificateId=cert_id(cert_arn))
    if found is None:
        return False
    things = paginate(iot, "list_principal_things", "things", principal=cert_arn)
    if thing_name in things:
        tolerate_gone(iot.detach_thing_principal, thingName=thing_name, principal=cert_arn)
    if any(t != thing_name for t in things):
        return False
    try:
        for policy in paginate(iot, "list_attached_policies", "policies", target=cert_arn):
            tolerate_gone(iot.detach_policy, policyName=policy["policyName"], target=cert_arn)
        if found["certificateDescription"].get("status") == "ACTIVE":
            iot.update_certificate(certificateId=cert_id(cert_arn), newStatus="INACTIVE")
        retry_while_detaching(ctx, lambda: iot.delete_certificate(certificateId=cert_id(cert_arn)))
    except Exception as err:
        if is_not_found(err):
            return False
        raise
    return True


def delete_device(ctx: StepContext, thing_name: str, extra_certificates: tuple[str, ...] = ()) -> list[str]:
    """Every certificate of the device (attached, plus ``extra_certificates`` a crashed
    `device add` made but never attached), then the thing. Returns the deleted certificate ids."""
    iot = ctx.client("iot")
    attached = get_or_none(thing_certificates, ctx, thing_name) or []
    deleted = []
    for arn in dict.fromkeys([*attached, *extra_certificates]):
        if retire_certificate(ctx, arn, thing_name):
            deleted.append(cert_id(arn))
    tolerate_gone(retry_while_detaching, ctx, lambda: iot.delete_thing(thingName=thing_name))
    return deleted


class Devices(Resource):
    """The env's registered devices, as one resource, so `destroy` is never blocked by them.

    AWS refuses to delete a thing type that still has things, and IoT policies attached to
    certificates; devices are made by `iotpipe device add`, not by `up`, so this resource
    wants nothing (``desired`` is empty, ``create`` makes no call) and only reads and deletes.
    It exists (reads as a Current, even with zero devices) whenever the thing type does, so a
    healthy env without devices is "ok", not "missing". ``delete`` removes the env's devices
    (certificates and things) before the device policy and thing type go; things of our type
    without our marker are left alone and stop destroy with an OwnershipError, because the
    thing type could not be deleted with them anyway. Local key files live in the state
    directory, which resources do not see: destroy leaves them (`device remove` cleans them).
    """

    logical_id = "iot.devices"
    resource_type = "AWS::IoT::Thing (devices)"
    depends_on = ("iot.thing_type", "iot.device_policy")  # things of that type, certificates with that policy
    makes_nothing = True

    def name(self, ctx: StepContext) -> str:
        return f"things of {ctx.names.thing_type}"

    def desired(self, ctx: StepContext) -> Spec:
        return {}

    def things(self, ctx: StepContext) -> list[dict[str, Any]]:
        return paginate(ctx.client("iot"), "list_things", "things", thingTypeName=ctx.names.thing_type)

    def read(self, ctx: StepContext) -> Current | None:
        found = get_or_none(ctx.client("iot").describe_thing_type, thingTypeName=ctx.names.thing_type)
        if found is None:
            return None
        things = self.things(ctx)
        ours = sum(device_marker_ok(ctx, t) for t in things)
        foreign = sorted(t["thingName"] for t in things if not device_marker_ok(ctx, t))
        # A same-name thing type that is not ours makes its things not ours either. Someone
        # else's things of our type are blockers: AWS keeps the type while they use it.
        return Current({"foreign_things": foreign}, {"count": str(ours)},
                       managed=thing_type_is_ours(ctx, found), blockers=tuple(foreign))

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        return {"count": "0"}  # devices are registered with `iotpipe device add`

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        """Nothing to converge: ``desired`` is empty."""

    def delete(self, ctx: StepContext, current: Current) -> None:
        """Refuses before deleting any device when a thing of the type is not ours: a destroy
        that cannot finish must not stop halfway through the fleet."""
        things = self.things(ctx)
        foreign = [t["thingName"] for t in things if not device_marker_ok(ctx, t)]
        if foreign:
            raise OwnershipError(
                f"thing type {ctx.names.thing_type} has things iotpipe does not own for env "
                f"{ctx.env!r} ({', '.join(sorted(foreign)[:5])}{', ...' if len(foreign) > 5 else ''}): "
                "AWS cannot delete the type while they use it; delete them or move them to "
                "another type (`aws iot update-thing --thing-name NAME --remove-thing-type`), "
                "then run destroy again")
        for thing in things:
            delete_device(ctx, thing["thingName"])


RESOURCES: tuple[Resource, ...] = (
    LogGroup("iot.log_group", lambda n: n.iot_log_group),
    Role(
        "iot.rule_role",
        lambda n: n.iot_rule_role,
        trust=service_trust("iot.amazonaws.com", source_arn=rule_arn),
        policies={ROLE_POLICY_NAME: rule_role_policy},
        description="Lets the sensor topic rule write to the Kinesis stream and its error log group",
        depends_on=("kms.key",),  # its policy grants the key (its ARN is read)
    ),
    ThingType(),
    DevicePolicy(),
    Devices(),  # after the policy and type: destroy (in reverse) removes devices before them
    TopicRule(),
)

"""Day two: an SNS alert topic, CloudWatch alarms on every way the pipeline fails, a dashboard.

What each alarm watches (and what an operator does about it) is in
docs/runbooks/alarm-fired.md; the thresholds come from the config's ``[alerts]`` section.

- The topic ``iot-alerts-<env>`` is encrypted with the env's key (whose policy lets CloudWatch
  alarms of this env use it, see steps/kms.py) and carries the ``alerts.emails``
  subscriptions. With ``alerts.topic_arn`` the alarms publish to that topic instead, and
  iotpipe never creates, changes, subscribes to or deletes it.
- One resource per alarm (``monitor.<name>``, alarm ``iot-<env>-<name>``), so plan, status
  and drift name the alarm, and an interrupted `up` finishes exactly the missing ones. Each
  alarm is created with its tags in one PutMetricAlarm; AWS ignores the Tags of a
  PutMetricAlarm that updates an existing alarm, so tag drift is closed with TagResource /
  UntagResource.
- The dashboard cannot carry tags (CloudWatch tags alarms and Contributor Insights rules
  only): its ownership marker sits in its first text widget, as the IoT resources keep theirs
  in a description.

The handler's own metrics (namespace ``iotpipe``, dimension ``Environment``) arrive as
CloudWatch Embedded Metric Format in its log lines (handler/index.py), so they cost no API
call; the rejected and anomaly alarms are metric-math rates over them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotpipe.aws import error_code, is_not_found
from iotpipe.errors import IotpipeError
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
    tag_list,
    tolerate_gone,
)

NAMESPACE = "iotpipe"  # the handler's EMF namespace
ENV_DIMENSION = "Environment"
TOPIC_ID = "monitor.topic"
DASHBOARD_ID = "monitor.dashboard"
EMAIL_PROTOCOLS = ("email", "email-json")


# CloudWatch's own "not found" codes: GetDashboard answers ResourceNotFound, DeleteDashboards
# DashboardNotFoundError (CloudWatch API reference, GetDashboard and DeleteDashboards Errors).
DASHBOARD_GONE = frozenset({"ResourceNotFound", "DashboardNotFoundError"})


def _dashboard_call(call: Any, **kwargs: Any) -> Any:
    """``call(**kwargs)``, or None when CloudWatch says the dashboard does not exist."""
    try:
        return call(**kwargs)
    except Exception as err:
        if error_code(err) in DASHBOARD_GONE or is_not_found(err):
            return None
        raise


def topic_name(env: str) -> str:
    return f"iot-alerts-{env}"


def dashboard_name(env: str) -> str:
    return f"iot-pipeline-{env}"


def alarm_name(env: str, name: str) -> str:
    """``iot-<env>-<name>``: the key policy grants CloudWatch the key for ``iot-<env>-*`` only."""
    return f"iot-{env}-{name.replace('_', '-')}"


def alerts_off(ctx: StepContext) -> str | None:
    return None if ctx.config.alerts.enabled else "alerts.enabled = false"


def alert_topic_arn(ctx: StepContext) -> str:
    """Where the alarms publish: the config's topic, else the env's own."""
    return ctx.config.alerts.topic_arn or ctx.aws.arn("sns", topic_name(ctx.env))


def handler_metric(ctx: StepContext, name: str) -> dict[str, Any]:
    return {"Namespace": NAMESPACE, "MetricName": name,
            "Dimensions": [{"Name": ENV_DIMENSION, "Value": ctx.env}]}


# --------------------------------------------------------------------------------------------
# monitor.topic
# --------------------------------------------------------------------------------------------
def _held(read: Callable[[], Any]) -> Callable[[], Any]:
    """A read whose failure is kept as its answer, to be raised only if it matters."""
    def held() -> Any:
        try:
            return read()
        except Exception as err:  # noqa: BLE001 - re-raised by _answer when it matters
            return err
    return held


def _answer(answer: Any) -> Any:
    if isinstance(answer, Exception):
        raise answer
    return answer


class AlertTopic(Resource):
    logical_id = TOPIC_ID
    resource_type = "AWS::SNS::Topic"
    depends_on = ("kms.key",)  # encrypted with it (its ARN is read)
    read_needs = ("kms.key",)  # the key its encryption names is told by the key's ARN

    def name(self, ctx: StepContext) -> str:
        return topic_name(ctx.env)

    def disabled_by(self, ctx: StepContext) -> str | None:
        if ctx.config.alerts.topic_arn:
            return "alerts.topic_arn is set (the alarms publish there)"
        return alerts_off(ctx)

    def desired(self, ctx: StepContext) -> Spec:
        return {
            "kms_key": ctx.ref("kms.key", "arn"),
            "emails": sorted(ctx.config.alerts.emails),
            "tags": ctx.tags(self.logical_id),
        }

    def read(self, ctx: StepContext) -> Current | None:
        sns = ctx.client("sns")
        arn = ctx.aws.arn("sns", self.name(ctx))
        # The ARN is the name's: the topic, its tags and its subscriptions at once. Without a
        # topic the other two fail (SNS says ResourceNotFound/NotFound): only the topic decides.
        answers = read_together({
            "topic": lambda: get_or_none(sns.get_topic_attributes, TopicArn=arn),
            "tags": _held(lambda: sns.list_tags_for_resource(ResourceArn=arn)),
            "subscriptions": _held(lambda: _email_subscriptions(sns, arn)),
        })
        found = answers["topic"]
        if found is None:
            return None
        attrs = found.get("Attributes", {})
        tags = {t["Key"]: t["Value"] for t in _answer(answers["tags"]).get("Tags", [])}
        subscriptions = _answer(answers["subscriptions"])
        wanted = set(ctx.config.alerts.emails)
        spec = {
            "kms_key": our_key_arn(ctx, attrs.get("KmsMasterKeyId")),
            # An unconfirmed subscription cannot be removed (SNS drops it itself): one no longer
            # wanted is not drift that `up` could close, only named in the condition.
            "emails": sorted(e for e, sub in subscriptions.items() if e in wanted or sub.startswith("arn:")),
            "tags": filter_tags(ctx, self.logical_id, tags),
        }
        current = Current.judged(ctx, spec, {"arn": arn, "name": self.name(ctx)}, tags)
        current.condition = _pending_note(subscriptions)
        return current

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        sns = ctx.client("sns")
        arn = sns.create_topic(Name=self.name(ctx), Attributes={"KmsMasterKeyId": known_key(desired["kms_key"])},
                               Tags=tag_list(desired["tags"]))["TopicArn"]
        for email in desired["emails"]:
            sns.subscribe(TopicArn=arn, Protocol="email", Endpoint=email)
        return {"arn": arn, "name": self.name(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        sns = ctx.client("sns")
        arn = current.ids["arn"]
        fields = changed_fields(changes)
        if "kms_key" in fields:
            sns.set_topic_attributes(TopicArn=arn, AttributeName="KmsMasterKeyId",
                                     AttributeValue=known_key(desired["kms_key"]))
        if "emails" in fields:
            subscriptions = _email_subscriptions(sns, arn)
            for email in sorted(set(desired["emails"]) - set(subscriptions)):
                sns.subscribe(TopicArn=arn, Protocol="email", Endpoint=email)
            for email in sorted(set(subscriptions) - set(desired["emails"])):
                sub = subscriptions[email]
                # A subscription still waiting for its confirmation has no ARN and cannot be
                # removed; SNS drops it once it stays unconfirmed (`status` names it meanwhile).
                if sub.startswith("arn:"):
                    tolerate_gone(sns.unsubscribe, SubscriptionArn=sub)
        if "tags" in fields:
            to_set, to_remove = tag_changes(current.spec.get("tags") or {}, desired["tags"])
            if to_set:
                sns.tag_resource(ResourceArn=arn, Tags=tag_list(to_set))
            if to_remove:
                sns.untag_resource(ResourceArn=arn, TagKeys=to_remove)

    def delete(self, ctx: StepContext, current: Current) -> None:
        """DeleteTopic removes its subscriptions too."""
        tolerate_gone(ctx.client("sns").delete_topic, TopicArn=current.ids["arn"])


def _email_subscriptions(sns: Any, arn: str) -> dict[str, str]:
    """Email address -> subscription ARN (``PendingConfirmation`` until the address confirms)."""
    out: dict[str, str] = {}
    for page in sns.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=arn):
        for sub in page.get("Subscriptions", []):
            if sub.get("Protocol") in EMAIL_PROTOCOLS:
                out[sub["Endpoint"]] = sub.get("SubscriptionArn", "")
    return out


def _pending_note(subscriptions: dict[str, str]) -> str:
    """Email subscriptions deliver nothing until their address confirms (SNS mails the link)."""
    pending = sorted(e for e, arn in subscriptions.items() if not arn.startswith("arn:"))
    return f"waiting for confirmation: {', '.join(pending)}" if pending else ""


# --------------------------------------------------------------------------------------------
# monitor.<alarm>
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlarmSpec:
    """One alarm: what it watches, how it compares, and the config key of its threshold."""

    name: str
    description: str
    threshold_key: str
    comparison: str = "GreaterThanOrEqualToThreshold"
    missing: str = "notBreaching"


ALARMS: tuple[AlarmSpec, ...] = (
    AlarmSpec("iterator_age", "The stream is falling behind: the oldest record the function has "
              "not yet processed is older than alerts.iterator_age_s.", "iterator_age_s",
              comparison="GreaterThanThreshold"),
    AlarmSpec("function_errors", "The processor function failed invocations (its batches are "
              "retried, then written to the failure destination).", "function_errors"),
    AlarmSpec("function_throttles", "Lambda throttled the processor function (concurrency).",
              "function_throttles"),
    AlarmSpec("failure_records", "The event source mapping gave up on batches and wrote failure "
              "records: replay them (iotpipe replay failed).", "failure_records"),
    AlarmSpec("rule_failures", "The IoT topic rule failed to put readings into the stream "
              "(AWS/IoT Failure); its errors are in the IoT rule log group.", "rule_failures"),
    AlarmSpec("no_readings", "No reading reached the stream for alerts.silence_minutes: a "
              "plant, its network or the topic rule went silent.", "silence_minutes",
              comparison="LessThanThreshold", missing="breaching"),
    AlarmSpec("dynamodb_throttles", "DynamoDB throttled the handler's writes to the metrics "
              "table.", "dynamodb_throttles"),
    AlarmSpec("rejected_rate", "More than alerts.rejected_percent of the readings were rejected "
              "(quarantined under rejected/).", "rejected_percent", comparison="GreaterThanThreshold"),
    AlarmSpec("anomaly_rate", "More than alerts.anomaly_percent of the stored readings were "
              "anomalous.", "anomaly_percent", comparison="GreaterThanThreshold"),
)


def _stat(metric: dict[str, Any], period: int, stat: str) -> dict[str, Any]:
    return {"Metric": metric, "Period": period, "Stat": stat}


def _dims(**dims: Any) -> list[dict[str, Any]]:
    return [{"Name": k, "Value": v} for k, v in dims.items()]


def alarm_definition(ctx: StepContext, spec: AlarmSpec) -> dict[str, Any] | UnknownYet:
    """The alarm's PutMetricAlarm fields (besides name and tags), as DescribeAlarms returns them;
    a placeholder while what it watches has no id yet."""
    cfg = ctx.config.alerts
    names = ctx.names
    period = cfg.period_s
    threshold = float(getattr(cfg, spec.threshold_key))
    definition: dict[str, Any] = {
        "AlarmDescription": spec.description,
        "ActionsEnabled": True,
        "AlarmActions": [alert_topic_arn(ctx)],
        "OKActions": [alert_topic_arn(ctx)],
        "InsufficientDataActions": [],
        "EvaluationPeriods": 1,
        "DatapointsToAlarm": 1,
        "ComparisonOperator": spec.comparison,
        "TreatMissingData": spec.missing,
    }
    metric: dict[str, Any] | None = None
    stat = "Sum"
    if spec.name == "iterator_age":
        metric = {"Namespace": "AWS/Lambda", "MetricName": "IteratorAge",
                  "Dimensions": _dims(FunctionName=names.function)}
        stat, threshold = "Maximum", threshold * 1000  # IteratorAge is in milliseconds
    elif spec.name == "function_errors":
        metric = {"Namespace": "AWS/Lambda", "MetricName": "Errors", "Dimensions": _dims(FunctionName=names.function)}
    elif spec.name == "function_throttles":
        metric = {"Namespace": "AWS/Lambda", "MetricName": "Throttles",
                  "Dimensions": _dims(FunctionName=names.function)}
    elif spec.name == "failure_records":
        # Event source mapping metrics (MetricsConfig EventCount on the mapping), per mapping.
        uuid = ctx.ref("lambda.event_source_mapping", "uuid")
        if isinstance(uuid, UnknownYet):
            return uuid  # the mapping does not exist yet (plan on a new env)
        metric = {"Namespace": "AWS/Lambda", "MetricName": "OnFailureDestinationDeliveredEventCount",
                  "Dimensions": _dims(EventSourceMappingUUID=uuid)}
    elif spec.name == "rule_failures":
        metric = {"Namespace": "AWS/IoT", "MetricName": "Failure",
                  "Dimensions": _dims(ActionType="Kinesis", RuleName=names.topic_rule)}
    elif spec.name == "no_readings":
        metric = {"Namespace": "AWS/Kinesis", "MetricName": "IncomingRecords",
                  "Dimensions": _dims(StreamName=names.stream)}
        period, threshold = cfg.silence_minutes * 60, 1.0
    elif spec.name == "dynamodb_throttles":
        metric = {"Namespace": "AWS/DynamoDB", "MetricName": "ThrottledRequests",
                  "Dimensions": _dims(Operation="BatchWriteItem", TableName=names.metrics_table)}
    if metric is not None:
        definition.update({"Namespace": metric["Namespace"], "MetricName": metric["MetricName"],
                           "Dimensions": metric["Dimensions"], "Period": period, "Statistic": stat,
                           "Threshold": threshold})
        return definition
    # Rates over the handler's EMF metrics: a percentage of what it persisted in the period.
    part, whole = (("rejected", "100 * rejected / (stored + rejected)") if spec.name == "rejected_rate"
                   else ("anomalies", "100 * anomalies / stored"))
    definition.update({
        "Threshold": threshold,
        "Metrics": [
            {"Id": "rate", "Expression": whole, "Label": f"{part} %", "ReturnData": True},
            {"Id": part, "MetricStat": _stat(handler_metric(ctx, part), period, "Sum"), "ReturnData": False},
            {"Id": "stored", "MetricStat": _stat(handler_metric(ctx, "stored"), period, "Sum"),
             "ReturnData": False},
        ],
    })
    return definition


ALARM_FIELDS = ("AlarmDescription", "ActionsEnabled", "AlarmActions", "OKActions", "InsufficientDataActions",
                "EvaluationPeriods", "DatapointsToAlarm", "ComparisonOperator", "TreatMissingData",
                "Namespace", "MetricName", "Dimensions", "Period", "Statistic", "Threshold", "Metrics")


# What each alarm watches: made after it on `up`, and deleted after the alarm on `destroy`,
# so that no alarm fires about a pipeline being taken down on purpose. failure_records also
# reads the mapping's UUID (its metric's dimension).
WATCHES: dict[str, tuple[str, ...]] = {
    "iterator_age": ("lambda.function",),
    "function_errors": ("lambda.function",),
    "function_throttles": ("lambda.function",),
    "failure_records": ("lambda.event_source_mapping",),
    "rule_failures": ("iot.topic_rule",),
    "no_readings": ("stream.sensor_stream",),
    "dynamodb_throttles": ("storage.metrics_table",),
    "rejected_rate": ("lambda.function",),  # the handler's own metrics
    "anomaly_rate": ("lambda.function",),
}


ALARMS_READ = "monitor.alarms-read"  # StepContext.memo: alarm name -> DescribeAlarms answer


def described_alarm(ctx: StepContext, name: str) -> dict[str, Any] | None:
    """The alarm as DescribeAlarms answers, one request for all of the env's alarms.

    Nine alarms read one by one were nine requests of a converged run. Each answer is handed
    out once: a second read of the same alarm (after a write, or `up` after its own plan) asks
    again, so nothing read is older than the last read of that alarm.
    """
    with ctx.memo_lock:  # alarms read at once (the engine's threads) share one request
        answers = ctx.memo.get(ALARMS_READ)
        if answers is None or name not in answers:
            names = [alarm_name(ctx.env, spec.name) for spec in ALARMS]
            names = names if name in names else [name]
            found = paginate(ctx.client("cloudwatch"), "describe_alarms", "MetricAlarms",
                             AlarmNames=names, AlarmTypes=["MetricAlarm"])
            answers = {alarm["AlarmName"]: alarm for alarm in found}
            answers.update({n: None for n in names if n not in answers})
            ctx.memo[ALARMS_READ] = answers
        return answers.pop(name)


class Alarm(Resource):
    resource_type = "AWS::CloudWatch::Alarm"

    def __init__(self, spec: AlarmSpec) -> None:
        self.spec = spec
        self.logical_id = f"monitor.{spec.name}"
        self.depends_on = (TOPIC_ID, *WATCHES[spec.name])

    def name(self, ctx: StepContext) -> str:
        return alarm_name(ctx.env, self.spec.name)

    def disabled_by(self, ctx: StepContext) -> str | None:
        return alerts_off(ctx)

    def desired(self, ctx: StepContext) -> Spec:
        return {"definition": alarm_definition(ctx, self.spec), "tags": ctx.tags(self.logical_id)}

    def read(self, ctx: StepContext) -> Current | None:
        cw = ctx.client("cloudwatch")
        alarm = described_alarm(ctx, self.name(ctx))
        if alarm is None:
            return None
        tags = {t["Key"]: t["Value"] for t in
                (get_or_none(cw.list_tags_for_resource, ResourceARN=alarm["AlarmArn"]) or {}).get("Tags", [])}
        definition = {k: alarm[k] for k in ALARM_FIELDS if k in alarm and alarm[k] not in (None, "")}
        if definition.get("Metrics"):
            for key in ("Namespace", "MetricName", "Dimensions", "Period", "Statistic"):
                definition.pop(key, None)  # a metric-math alarm has none of these
        else:
            definition.pop("Metrics", None)  # DescribeAlarms may list an empty one
        spec = {"definition": definition, "tags": filter_tags(ctx, self.logical_id, tags)}
        current = Current.judged(ctx, spec, {"arn": alarm["AlarmArn"], "name": alarm["AlarmName"]}, tags)
        current.condition = f"state {alarm.get('StateValue', '?')}" if alarm.get("StateValue") == "ALARM" else ""
        return current

    def _put(self, ctx: StepContext, desired: Spec, **extra: Any) -> None:
        definition = desired["definition"]
        if isinstance(definition, UnknownYet):
            raise IotpipeError(f"alarm {self.name(ctx)}: {definition}: run `up` with the lambda step first")
        ctx.client("cloudwatch").put_metric_alarm(AlarmName=self.name(ctx), **definition, **extra)

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        self._put(ctx, desired, Tags=tag_list(desired["tags"]))
        return {"arn": ctx.aws.arn("cloudwatch", f"alarm:{self.name(ctx)}"), "name": self.name(ctx)}

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        fields = changed_fields(changes)
        if "definition" in fields:
            self._put(ctx, desired)
        if "tags" in fields:
            cw = ctx.client("cloudwatch")
            to_set, to_remove = tag_changes(current.spec.get("tags") or {}, desired["tags"])
            if to_set:
                cw.tag_resource(ResourceARN=current.ids["arn"], Tags=tag_list(to_set))
            if to_remove:
                cw.untag_resource(ResourceARN=current.ids["arn"], TagKeys=to_remove)

    def delete(self, ctx: StepContext, current: Current) -> None:
        """DeleteAlarms answers success for a name that does not exist."""
        ctx.client("cloudwatch").delete_alarms(AlarmNames=[self.name(ctx)])


# --------------------------------------------------------------------------------------------
# monitor.dashboard
# --------------------------------------------------------------------------------------------
def dashboard_body(ctx: StepContext, marker: str) -> dict[str, Any]:
    """The flow left to right: published, processed (stored / rejected / failed), lag, errors."""
    names, region, env = ctx.names, ctx.region, ctx.env

    def graph(title: str, metrics: list[list[Any]], x: int, y: int, stat: str = "Sum") -> dict[str, Any]:
        return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6,
                "properties": {"title": title, "region": region, "stat": stat, "period": 300,
                               "view": "timeSeries", "metrics": metrics}}

    return {"widgets": [
        {"type": "text", "x": 0, "y": 0, "width": 24, "height": 2,
         "properties": {"markdown": f"## IoT pipeline {env}\n`iotpipe health --env {env}` · "
                                    f"runbook: docs/runbooks/alarm-fired.md\n\n{marker}"}},
        graph("Readings: published, stored, rejected, failed", [
            ["AWS/Kinesis", "IncomingRecords", "StreamName", names.stream, {"label": "published"}],
            [NAMESPACE, "stored", ENV_DIMENSION, env, {"label": "stored"}],
            [NAMESPACE, "rejected", ENV_DIMENSION, env, {"label": "rejected"}],
            [NAMESPACE, "failed", ENV_DIMENSION, env, {"label": "failed"}],
            [NAMESPACE, "anomalies", ENV_DIMENSION, env, {"label": "anomalies"}],
        ], 0, 2),
        graph("Stream lag (IteratorAge, ms)", [
            ["AWS/Lambda", "IteratorAge", "FunctionName", names.function],
        ], 12, 2, stat="Maximum"),
        graph("Function: invocations, errors, throttles", [
            ["AWS/Lambda", "Invocations", "FunctionName", names.function],
            ["AWS/Lambda", "Errors", "FunctionName", names.function],
            ["AWS/Lambda", "Throttles", "FunctionName", names.function],
        ], 0, 8),
        graph("IoT rule failures, DynamoDB throttles", [
            ["AWS/IoT", "Failure", "ActionType", "Kinesis", "RuleName", names.topic_rule],
            ["AWS/DynamoDB", "ThrottledRequests", "Operation", "BatchWriteItem", "TableName", names.metrics_table],
        ], 12, 8),
        {"type": "alarm", "x": 0, "y": 14, "width": 24, "height": 4,
         "properties": {"title": "Alarms", "alarms": [
             ctx.aws.arn("cloudwatch", f"alarm:{alarm_name(env, a.name)}") for a in ALARMS]}},
    ]}


class Dashboard(Resource):
    logical_id = DASHBOARD_ID
    resource_type = "AWS::CloudWatch::Dashboard"
    # Its alarm widget lists the env's alarms by ARN.
    depends_on = tuple(f"monitor.{a.name}" for a in ALARMS)

    def name(self, ctx: StepContext) -> str:
        return dashboard_name(ctx.env)

    def disabled_by(self, ctx: StepContext) -> str | None:
        return alerts_off(ctx)

    def desired(self, ctx: StepContext) -> Spec:
        return {"body": dashboard_body(ctx, ctx.marker(self.logical_id))}

    def read(self, ctx: StepContext) -> Current | None:
        found = _dashboard_call(ctx.client("cloudwatch").get_dashboard, DashboardName=self.name(ctx))
        if found is None:
            return None
        try:
            body = json.loads(found.get("DashboardBody") or "{}")
        except ValueError:
            body = {}
        text = json.dumps(body)
        ids = {"arn": found.get("DashboardArn", ""), "name": self.name(ctx)}
        return Current({"body": body}, ids, managed=ctx.marker(self.logical_id) in text)

    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        self._put(ctx, desired)
        return {"arn": ctx.aws.arn("cloudwatch", f"dashboard/{self.name(ctx)}", region=False),
                "name": self.name(ctx)}

    def _put(self, ctx: StepContext, desired: Spec) -> None:
        ctx.client("cloudwatch").put_dashboard(DashboardName=self.name(ctx),
                                               DashboardBody=json.dumps(desired["body"], sort_keys=True))

    def update(self, ctx: StepContext, current: Current, desired: Spec, changes: list[Change]) -> None:
        self._put(ctx, desired)

    def delete(self, ctx: StepContext, current: Current) -> None:
        _dashboard_call(ctx.client("cloudwatch").delete_dashboards, DashboardNames=[self.name(ctx)])


RESOURCES: tuple[Resource, ...] = (AlertTopic(), *(Alarm(a) for a in ALARMS), Dashboard())

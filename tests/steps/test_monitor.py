"""The monitor step: topic, alarms and dashboard read back field by field from AWS."""

from __future__ import annotations

import json

import boto3
import pytest

from iotpipe.steps import all_resources, monitor
from iotpipe.steps.base import TAG_ENV, TAG_MANAGED_BY, TAG_RESOURCE

REGION = "us-east-1"
ACCOUNT = "123456789012"
TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:iot-alerts-dev"
EMAILS = ("alerts.emails=['ops@example.com', 'plant@example.com']",)
BASE = ("storage.enforce_tls=false", "trail.enabled=false")
# What the alarms watch by name or id: the key (the topic's), the function and its mapping.
# Buckets, table, rule and trail would only cost time here.
STEPS = ("kms", "stream", "lambda_", "monitor")


@pytest.fixture
def make(make):
    def build(**kwargs):
        return make(resources=all_resources(STEPS), **kwargs)

    return build


def _monitor_ids(result):
    return {r.logical_id: r for r in result.resources if r.logical_id.startswith("monitor.")}


def test_everything_reads_back_field_by_field(make):
    """One env (an `up` costs seconds), every check on it."""
    engine = make(sets=(*BASE, *EMAILS))
    engine.up()
    check_topic_is_encrypted_tagged_and_subscribed(engine)
    check_key_policy_lets_only_this_envs_alarms_use_the_key(engine)
    for name in sorted(EXPECTED):
        check_metric_alarm(name)
    check_failure_records_alarm_watches_the_mapping(engine)
    for args in RATES:
        check_rate_alarm(*args)
    check_dashboard_carries_the_flow_and_its_marker()


def _alarm(name):
    cw = boto3.client("cloudwatch", region_name=REGION)
    (alarm,) = cw.describe_alarms(AlarmNames=[f"iot-dev-{name}"])["MetricAlarms"]
    tags = {t["Key"]: t["Value"] for t in cw.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]}
    return alarm, tags


def check_topic_is_encrypted_tagged_and_subscribed(env):
    sns = boto3.client("sns", region_name=REGION)
    key_arn = env.ctx.refs["kms.key"]["arn"]
    attrs = sns.get_topic_attributes(TopicArn=TOPIC)["Attributes"]
    assert attrs["KmsMasterKeyId"] == key_arn
    tags = {t["Key"]: t["Value"] for t in sns.list_tags_for_resource(ResourceArn=TOPIC)["Tags"]}
    assert tags[TAG_ENV] == "dev" and tags[TAG_RESOURCE] == "monitor.topic" and tags[TAG_MANAGED_BY] == "iotpipe"
    subs = sns.list_subscriptions_by_topic(TopicArn=TOPIC)["Subscriptions"]
    assert sorted((s["Protocol"], s["Endpoint"]) for s in subs) == [
        ("email", "ops@example.com"), ("email", "plant@example.com")]


def check_key_policy_lets_only_this_envs_alarms_use_the_key(env):
    kms = boto3.client("kms", region_name=REGION)
    policy = json.loads(kms.get_key_policy(KeyId=env.ctx.refs["kms.key"]["arn"], PolicyName="default")["Policy"])
    (statement,) = [s for s in policy["Statement"] if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert sorted(statement["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert statement["Condition"]["ArnLike"] == {"aws:SourceArn": f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:iot-dev-*"}
    assert statement["Condition"]["StringEquals"] == {"aws:SourceAccount": ACCOUNT}


EXPECTED = {  # name: (namespace, metric, dimensions, statistic, comparison, threshold, period, missing)
    "iterator-age": ("AWS/Lambda", "IteratorAge", {"FunctionName": "iot-processor-dev"}, "Maximum",
                     "GreaterThanThreshold", 300_000.0, 300, "notBreaching"),
    "function-errors": ("AWS/Lambda", "Errors", {"FunctionName": "iot-processor-dev"}, "Sum",
                        "GreaterThanOrEqualToThreshold", 1.0, 300, "notBreaching"),
    "function-throttles": ("AWS/Lambda", "Throttles", {"FunctionName": "iot-processor-dev"}, "Sum",
                           "GreaterThanOrEqualToThreshold", 1.0, 300, "notBreaching"),
    "rule-failures": ("AWS/IoT", "Failure", {"RuleName": "sensor_data_rule_dev", "ActionType": "Kinesis"}, "Sum",
                      "GreaterThanOrEqualToThreshold", 1.0, 300, "notBreaching"),
    "no-readings": ("AWS/Kinesis", "IncomingRecords", {"StreamName": "iot-sensor-stream-dev"}, "Sum",
                    "LessThanThreshold", 1.0, 900, "breaching"),
    "dynamodb-throttles": ("AWS/DynamoDB", "ThrottledRequests",
                           {"TableName": "sensor-metrics-dev", "Operation": "BatchWriteItem"}, "Sum",
                           "GreaterThanOrEqualToThreshold", 1.0, 300, "notBreaching"),
}


def check_metric_alarm(name):
    namespace, metric, dims, stat, comparison, threshold, period, missing = EXPECTED[name]
    alarm, tags = _alarm(name)
    assert alarm["Namespace"] == namespace and alarm["MetricName"] == metric
    assert {d["Name"]: d["Value"] for d in alarm["Dimensions"]} == dims
    assert alarm["Statistic"] == stat and alarm["ComparisonOperator"] == comparison
    assert alarm["Threshold"] == threshold and alarm["Period"] == period
    assert alarm["EvaluationPeriods"] == 1 and alarm["DatapointsToAlarm"] == 1
    assert alarm["TreatMissingData"] == missing
    assert alarm["AlarmActions"] == [TOPIC] and alarm["OKActions"] == [TOPIC] and alarm["ActionsEnabled"]
    assert alarm["AlarmDescription"]
    assert tags[TAG_RESOURCE] == f"monitor.{name.replace('-', '_')}" and tags[TAG_ENV] == "dev"


def check_failure_records_alarm_watches_the_mapping(env):
    alarm, _ = _alarm("failure-records")
    uuid = env.ctx.refs["lambda.event_source_mapping"]["uuid"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/Lambda", "OnFailureDestinationDeliveredEventCount")
    assert alarm["Dimensions"] == [{"Name": "EventSourceMappingUUID", "Value": uuid}]


RATES = [
    ("rejected-rate", "rejected", "100 * rejected / (stored + rejected)", 5.0),
    ("anomaly-rate", "anomalies", "100 * anomalies / stored", 10.0),
]


def check_rate_alarm(name, part, expression, threshold):
    """Metric math over the handler's EMF metrics."""
    alarm, _ = _alarm(name)
    assert alarm["Threshold"] == threshold and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    queries = {q["Id"]: q for q in alarm["Metrics"]}
    assert queries["rate"]["Expression"] == expression and queries["rate"]["ReturnData"] is True
    for metric_id in (part, "stored"):
        stat = queries[metric_id]["MetricStat"]
        assert stat["Metric"] == {"Namespace": "iotpipe", "MetricName": metric_id,
                                  "Dimensions": [{"Name": "Environment", "Value": "dev"}]}
        assert stat["Stat"] == "Sum" and stat["Period"] == 300 and queries[metric_id]["ReturnData"] is False


def check_dashboard_carries_the_flow_and_its_marker():
    cw = boto3.client("cloudwatch", region_name=REGION)
    body = json.loads(cw.get_dashboard(DashboardName="iot-pipeline-dev")["DashboardBody"])
    text = json.dumps(body)
    assert "[managed-by=iotpipe env=dev resource=monitor.dashboard]" in text
    assert "IncomingRecords" in text and "IteratorAge" in text and '"iotpipe", "stored"' in text
    (alarms,) = [w for w in body["widgets"] if w["type"] == "alarm"]
    assert len(alarms["properties"]["alarms"]) == len(monitor.ALARMS)


def test_converged_drift_repaired_and_thresholds_from_config(make, log):
    engine = make(sets=(*BASE, *EMAILS))
    engine.up()
    again = make(sets=(*BASE, *EMAILS), log=log)
    again.up()
    assert log.mutating == []
    assert log.counts()["cloudwatch.DescribeAlarms"] == 1  # all nine alarms in one request
    cw = boto3.client("cloudwatch", region_name=REGION)
    cw.put_metric_alarm(AlarmName="iot-dev-iterator-age", Namespace="AWS/Lambda", MetricName="IteratorAge",
                        Statistic="Maximum", Period=60, EvaluationPeriods=3, Threshold=1.0,
                        ComparisonOperator="GreaterThanThreshold")
    cw.untag_resource(ResourceARN=f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:iot-dev-function-errors",
                      TagKeys=[TAG_RESOURCE])
    boto3.client("sns", region_name=REGION).unsubscribe(SubscriptionArn=next(
        s["SubscriptionArn"] for s in boto3.client("sns", region_name=REGION).list_subscriptions_by_topic(
            TopicArn=TOPIC)["Subscriptions"] if s["Endpoint"] == "plant@example.com"))
    status = _monitor_ids(make(sets=(*BASE, *EMAILS)).status())
    assert status["monitor.iterator_age"].health == "drifted"
    assert status["monitor.topic"].health == "drifted"
    # the function-errors alarm lost its resource tag: still ours (env + managed-by), drifted
    assert status["monitor.function_errors"].health == "drifted"
    tuned = (*BASE, *EMAILS, "alerts.iterator_age_s=60", "alerts.silence_minutes=30")
    make(sets=tuned).up()
    assert all(r.health == "ok" for r in _monitor_ids(make(sets=tuned).status()).values())
    alarm, tags = _alarm("iterator-age")
    assert alarm["Threshold"] == 60_000.0 and alarm["Period"] == 300 and alarm["EvaluationPeriods"] == 1
    assert _alarm("no-readings")[0]["Period"] == 1800
    assert _alarm("function-errors")[1][TAG_RESOURCE] == "monitor.function_errors"


def test_someone_elses_alarm_with_our_name_is_left_alone(make):
    cw = boto3.client("cloudwatch", region_name=REGION)
    engine = make(sets=BASE)
    engine.up()
    arn = f"arn:aws:cloudwatch:{REGION}:{ACCOUNT}:alarm:iot-dev-function-throttles"
    ours = [t["Key"] for t in cw.list_tags_for_resource(ResourceARN=arn)["Tags"]]
    cw.delete_alarms(AlarmNames=["iot-dev-function-throttles"])
    cw.untag_resource(ResourceARN=arn, TagKeys=ours)  # moto keeps a deleted alarm's tags; AWS does not
    cw.put_metric_alarm(AlarmName="iot-dev-function-throttles", Namespace="X", MetricName="Y", Statistic="Sum",
                        Period=60, EvaluationPeriods=1, Threshold=1.0, ComparisonOperator="GreaterThanThreshold",
                        Tags=[{"Key": "team", "Value": "other"}])
    status = _monitor_ids(make(sets=BASE).status())
    assert status["monitor.function_throttles"].health == "foreign"
    make(sets=BASE).destroy()
    (left,) = cw.describe_alarms(AlarmNamePrefix="iot-dev-")["MetricAlarms"]
    assert left["AlarmName"] == "iot-dev-function-throttles" and left["Namespace"] == "X"


def test_an_existing_topic_is_used_and_never_touched(make):
    sns = boto3.client("sns", region_name=REGION)
    theirs = sns.create_topic(Name="paging")["TopicArn"]
    sets = (*BASE, f"alerts.topic_arn='{theirs}'")
    engine = make(sets=sets)
    engine.up()
    assert _alarm("iterator-age")[0]["AlarmActions"] == [theirs]
    assert [t["TopicArn"] for t in sns.list_topics()["Topics"]] == [theirs]
    make(sets=sets).destroy()
    assert [t["TopicArn"] for t in sns.list_topics()["Topics"]] == [theirs]
    assert sns.list_tags_for_resource(ResourceArn=theirs)["Tags"] == []


def test_alerts_disabled_makes_nothing_and_destroy_removes_everything(make):
    make(sets=(*BASE, "alerts.enabled=false")).up()
    cw = boto3.client("cloudwatch", region_name=REGION)
    assert cw.describe_alarms(AlarmNamePrefix="iot-dev-")["MetricAlarms"] == []
    make(sets=BASE).up()
    assert len(cw.describe_alarms(AlarmNamePrefix="iot-dev-")["MetricAlarms"]) == len(monitor.ALARMS)
    status = _monitor_ids(make(sets=(*BASE, "alerts.enabled=false")).status())
    assert {r.health for r in status.values()} == {"unwanted"}
    make(sets=BASE).destroy()
    assert cw.describe_alarms(AlarmNamePrefix="iot-dev-")["MetricAlarms"] == []
    assert cw.list_dashboards()["DashboardEntries"] == []
    assert boto3.client("sns", region_name=REGION).list_topics()["Topics"] == []


def test_an_unconfirmed_email_is_named_and_never_drift_up_cannot_close(make, tmp_path, monkeypatch):
    """On AWS an email subscription stays PendingConfirmation until its address confirms, and
    a pending subscription cannot be unsubscribed (moto confirms at once: the behaviour layer
    puts AWS's answer back)."""
    from tests.awsbehaviour import FakeClock, install, rules_named
    from tests.awsbehaviour.fixture import behaviour_for
    from tests.support import CallLog

    clock = FakeClock()
    behaviour = behaviour_for(rules_named("sns.email-subscription-pending"), clock, REGION)

    def engine(sets, log=None):
        built = make(sets=sets, log=log)
        install(built.ctx.aws.events, behaviour)
        return built

    one = (*BASE, "alerts.emails=['ops@example.com']")
    engine(one).up()
    topic = _monitor_ids(engine(one).status())["monitor.topic"]
    assert topic.health == "ok" and "waiting for confirmation: ops@example.com" in json.dumps(topic.as_dict())
    # the address leaves the config before confirming: nothing to unsubscribe, no endless drift
    log = CallLog()
    engine(BASE, log=log).up()
    assert not [op for op in log.mutating if op[1] == "Unsubscribe"]
    assert _monitor_ids(engine(BASE).status())["monitor.topic"].health == "ok"

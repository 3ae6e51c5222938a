"""An independent look at a deployed env: every seed attribute and every fix, read with boto3.

Used by the end-to-end and the interruption tests to say "this env is exactly the clean
reference" and "nothing of this env is left", without going through iotpipe's own readers.
"""

from __future__ import annotations

import json
from typing import Any

import boto3

ACCOUNT = "123456789012"


class Clients:
    def __init__(self, region: str, endpoint_url: str | None = None) -> None:
        self.region = region
        kwargs = {"region_name": region}
        if endpoint_url:
            kwargs["endpoint_url"] = endpoint_url
        self._kwargs = kwargs
        self._cache: dict[str, Any] = {}

    def client(self, service: str) -> Any:
        if service not in self._cache:
            self._cache[service] = boto3.client(service, **self._kwargs)
        return self._cache[service]

    def __getattr__(self, service: str) -> Any:
        if service.startswith("_"):
            raise AttributeError(service)
        return self.client(service)


def _policy(doc: Any) -> dict:
    return json.loads(doc) if isinstance(doc, str) else doc


def _statements(doc: Any) -> list[dict]:
    return _policy(doc)["Statement"]


def _actions(statement: dict) -> set[str]:
    action = statement["Action"]
    return {action} if isinstance(action, str) else set(action)


def live_keys(c: Clients, env: str) -> list[str]:
    """Customer keys tagged for ``env`` that are not pending deletion."""
    found = []
    for key in c.kms.list_keys()["Keys"]:
        meta = c.kms.describe_key(KeyId=key["KeyId"])["KeyMetadata"]
        if meta["KeyState"] == "PendingDeletion":
            continue
        tags = {t["TagKey"]: t["TagValue"] for t in c.kms.list_resource_tags(KeyId=key["KeyId"])["Tags"]}
        if tags.get("iotpipe:env") == env:
            found.append(key["KeyId"])
    return found


def verify_pipeline(c: Clients, env: str, *, enforce_tls: bool = False) -> dict[str, Any]:
    """Assert the whole pipeline of ``env`` is there as specified; return a snapshot of it."""
    keys = live_keys(c, env)
    assert len(keys) == 1, f"expected exactly one live KMS key for {env}, found {keys}"
    key_id = keys[0]
    key = c.kms.describe_key(KeyId=key_id)["KeyMetadata"]
    key_arn = key["Arn"]
    alias = f"alias/iot-manufacturing-{env}"
    assert c.kms.describe_key(KeyId=alias)["KeyMetadata"]["KeyId"] == key_id
    assert c.kms.get_key_rotation_status(KeyId=key_id)["KeyRotationEnabled"] is True
    key_policy = _statements(c.kms.get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    principals = [json.dumps(s["Principal"], sort_keys=True) for s in key_policy]
    assert any("logs." in p for p in principals) and not any("kinesis.amazonaws.com" in p for p in principals)
    assert any("cloudtrail.amazonaws.com" in p for p in principals)

    # --- S3 sensor bucket
    bucket = f"iot-sensor-data-{env}-{ACCOUNT}"
    s3 = c.s3
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    rule = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    assert rule["ApplyServerSideEncryptionByDefault"]["KMSMasterKeyID"] in (key_arn, key_id)
    assert rule["BucketKeyEnabled"] is True
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert any(r["Status"] == "Enabled" and any(t["Days"] == 90 and t["StorageClass"] == "GLACIER"
                                                 for t in r.get("Transitions", [])) for r in lifecycle)
    access_logs = f"iot-access-logs-{env}-{ACCOUNT}"
    trail_bucket = f"iot-cloudtrail-logs-{env}-{ACCOUNT}"
    for name in (bucket, trail_bucket):  # both log their access into the access-log bucket
        enabled = s3.get_bucket_logging(Bucket=name)["LoggingEnabled"]
        assert enabled == {"TargetBucket": access_logs, "TargetPrefix": f"s3/{name}/"}, (name, enabled)
    trail_rule = s3.get_bucket_encryption(Bucket=trail_bucket)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert trail_rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_arn}
    assert trail_rule["BucketKeyEnabled"] is True
    # SSE-S3 by AWS's rule for server access log targets (SSE-KMS targets get no logs)
    log_rule = s3.get_bucket_encryption(Bucket=access_logs)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert log_rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    delivery = [st for st in _statements(s3.get_bucket_policy(Bucket=access_logs)["Policy"])
                if st.get("Principal") == {"Service": "logging.s3.amazonaws.com"}]
    assert len(delivery) == 2 and all(st["Condition"]["StringEquals"]["aws:SourceAccount"] == ACCOUNT
                                      for st in delivery)
    for name in (bucket, trail_bucket, access_logs):
        assert s3.get_bucket_versioning(Bucket=name)["Status"] == "Enabled", name
        assert s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"], name
        pab = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
        assert all(pab.values()) and len(pab) == 4, (name, pab)
        ownership = s3.get_bucket_ownership_controls(Bucket=name)["OwnershipControls"]["Rules"]
        assert ownership[0]["ObjectOwnership"] == "BucketOwnerEnforced"
        tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=name)["TagSet"]}
        assert tags["iotpipe:env"] == env and tags["managed-by"] == "iotpipe"
    if enforce_tls:
        sids = [s.get("Sid") for s in _statements(s3.get_bucket_policy(Bucket=bucket)["Policy"])]
        assert "DenyInsecureTransport" in sids

    # --- DynamoDB
    table = c.dynamodb.describe_table(TableName=f"sensor-metrics-{env}")["Table"]
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {("device_id", "HASH"), ("timestamp", "RANGE")}
    assert {(a["AttributeName"], a["AttributeType"]) for a in table["AttributeDefinitions"]} == {("device_id", "S"), ("timestamp", "N")}
    assert table["SSEDescription"]["Status"] == "ENABLED" and table["SSEDescription"]["SSEType"] == "KMS"
    assert table["SSEDescription"]["KMSMasterKeyArn"] == key_arn
    pitr = c.dynamodb.describe_continuous_backups(TableName=f"sensor-metrics-{env}")
    assert pitr["ContinuousBackupsDescription"]["PointInTimeRecoveryDescription"]["PointInTimeRecoveryStatus"] == "ENABLED"

    # --- Kinesis
    stream = c.kinesis.describe_stream_summary(StreamName=f"iot-sensor-stream-{env}")["StreamDescriptionSummary"]
    assert stream["StreamModeDetails"]["StreamMode"] == "ON_DEMAND"
    assert stream["EncryptionType"] == "KMS" and stream["KeyId"] in (key_arn, key_id)
    assert stream["RetentionPeriodHours"] == 24
    stream_arn = stream["StreamARN"]

    # --- Logs
    for group in (f"/aws/lambda/iot-processor-{env}", f"/aws/iot/iot-rules-{env}"):
        found = [g for g in c.logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"] if g["logGroupName"] == group]
        assert found and found[0]["retentionInDays"] == 30 and found[0]["kmsKeyId"] == key_arn, group

    # --- IAM
    rule_role = c.iam.get_role(RoleName=f"iot-rule-role-{env}")["Role"]
    rule_policies = [c.iam.get_role_policy(RoleName=f"iot-rule-role-{env}", PolicyName=p)["PolicyDocument"]
                     for p in c.iam.list_role_policies(RoleName=f"iot-rule-role-{env}")["PolicyNames"]]
    rule_actions = set().union(*(_actions(s) for doc in rule_policies for s in _statements(doc)))
    assert {"kinesis:PutRecord", "kinesis:PutRecords"} <= rule_actions
    assert "kms:GenerateDataKey" in rule_actions  # the seed's missing KMS permission
    lambda_policies = [c.iam.get_role_policy(RoleName=f"iot-lambda-role-{env}", PolicyName=p)["PolicyDocument"]
                       for p in c.iam.list_role_policies(RoleName=f"iot-lambda-role-{env}")["PolicyNames"]]
    lambda_actions = set().union(*(_actions(s) for doc in lambda_policies for s in _statements(doc)))
    assert "s3:PutObjectAcl" not in lambda_actions and "s3:PutObject" in lambda_actions
    assert not any(a == "*" for a in lambda_actions | rule_actions)
    assert not c.iam.list_attached_role_policies(RoleName=f"iot-lambda-role-{env}")["AttachedPolicies"]

    # --- Lambda
    fn = c.client("lambda").get_function(FunctionName=f"iot-processor-{env}")["Configuration"]
    assert fn["Runtime"] == "python3.11" and fn["Handler"] == "index.lambda_handler"
    assert fn["Timeout"] == 60 and fn["MemorySize"] == 256
    variables = fn["Environment"]["Variables"]
    assert variables["DYNAMODB_TABLE"] == f"sensor-metrics-{env}"
    assert variables["S3_BUCKET"] == bucket and variables["ENVIRONMENT_SUFFIX"] == env
    mappings = [m for m in c.client("lambda").list_event_source_mappings(EventSourceArn=stream_arn)["EventSourceMappings"]]
    assert len(mappings) == 1, mappings
    esm = mappings[0]
    assert esm["FunctionArn"] == fn["FunctionArn"]
    assert esm["StartingPosition"] == "LATEST" and esm["BatchSize"] == 100
    assert esm["MaximumBatchingWindowInSeconds"] == 10
    assert esm["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert esm["BisectBatchOnFunctionError"] is True
    assert 0 <= esm["MaximumRetryAttempts"] <= 10000 and esm["MaximumRecordAgeInSeconds"] > 0
    # failed batches, whole, to the sensor bucket (aws/lambda/), which the role may write
    assert esm["DestinationConfig"]["OnFailure"]["Destination"] == f"arn:aws:s3:::{bucket}"
    assert "s3:ListBucket" in lambda_actions
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]}
    assert rules["expire-failure-records"]["Filter"]["Prefix"] == "aws/lambda/"
    assert rules["expire-failure-records"]["Expiration"]["Days"] == 30

    # --- IoT
    thing_type = c.iot.describe_thing_type(thingTypeName=f"manufacturing-sensor-{env}")
    assert set(thing_type["thingTypeProperties"]["searchableAttributes"]) == {"location", "facility", "equipment_type"}
    rule_name = f"sensor_data_rule_{env.replace('-', '_')}"
    rule = c.iot.get_topic_rule(ruleName=rule_name)["rule"]
    assert rule["sql"] == "SELECT * FROM 'manufacturing/sensors/+/data'"
    assert rule["awsIotSqlVersion"] == "2016-03-23" and rule["ruleDisabled"] is False
    kinesis_action = rule["actions"][0]["kinesis"]
    assert kinesis_action["streamName"] == f"iot-sensor-stream-{env}"
    assert kinesis_action["partitionKey"] == "${topic(3)}"
    assert kinesis_action["roleArn"] == rule_role["Arn"]
    assert rule["errorAction"]["cloudwatchLogs"]["logGroupName"] == f"/aws/iot/iot-rules-{env}"

    # --- CloudTrail
    trail_name = f"iot-audit-trail-{env}"
    trail = c.cloudtrail.get_trail(Name=trail_name)["Trail"]
    assert trail["S3BucketName"] == f"iot-cloudtrail-logs-{env}-{ACCOUNT}"
    assert trail["KmsKeyId"] == key_arn
    assert trail["IncludeGlobalServiceEvents"] is True and trail["IsMultiRegionTrail"] is True
    assert trail["LogFileValidationEnabled"] is True
    assert c.cloudtrail.get_trail_status(Name=trail_name)["IsLogging"] is True
    selectors = c.cloudtrail.get_event_selectors(TrailName=trail_name)["EventSelectors"]
    assert selectors[0]["ReadWriteType"] == "All" and selectors[0]["IncludeManagementEvents"] is True
    insights = c.cloudtrail.get_insight_selectors(TrailName=trail_name)["InsightSelectors"]
    assert {"InsightType": "ApiCallRateInsight"} in insights
    trail_policy = _statements(s3.get_bucket_policy(Bucket=f"iot-cloudtrail-logs-{env}-{ACCOUNT}")["Policy"])
    write = next(s for s in trail_policy if "s3:PutObject" in _actions(s) and s["Effect"] == "Allow")
    assert f"/AWSLogs/{ACCOUNT}/" in json.dumps(write["Resource"])
    assert "aws:SourceArn" in json.dumps(write["Condition"])
    assert trail_name in json.dumps(write["Condition"])
    return snapshot(c, env)


def snapshot(c: Clients, env: str) -> dict[str, Any]:
    """Names and counts of everything the env has: equal snapshots mean equal envs."""
    lam = c.client("lambda")
    stream_name = f"iot-sensor-stream-{env}"
    streams = [s for s in c.kinesis.list_streams()["StreamNames"] if s == stream_name]
    mappings = []
    if streams:
        arn = c.kinesis.describe_stream_summary(StreamName=stream_name)["StreamDescriptionSummary"]["StreamARN"]
        mappings = lam.list_event_source_mappings(EventSourceArn=arn)["EventSourceMappings"]
    fn = f"iot-processor-{env}"
    return {
        "keys": len(live_keys(c, env)),
        "aliases": sorted(a["AliasName"] for a in c.kms.list_aliases()["Aliases"] if a["AliasName"].endswith(f"-{env}")),
        "buckets": sorted(b["Name"] for b in c.s3.list_buckets().get("Buckets", []) if f"-{env}-" in b["Name"]),
        "tables": sorted(t for t in c.dynamodb.list_tables()["TableNames"] if t.endswith(f"-{env}")),
        "streams": streams,
        "log_groups": sorted(g["logGroupName"] for g in c.logs.describe_log_groups()["logGroups"] if g["logGroupName"].endswith(f"-{env}")),
        "roles": sorted(r["RoleName"] for r in c.iam.list_roles()["Roles"] if r["RoleName"].endswith(f"-{env}")),
        "functions": sorted(f["FunctionName"] for f in lam.list_functions()["Functions"] if f["FunctionName"] == fn),
        "mappings": len(mappings),
        "queues": sorted(u.rsplit("/", 1)[-1] for u in c.sqs.list_queues().get("QueueUrls", []) if u.endswith(f"-{env}")),
        "thing_types": sorted(t["thingTypeName"] for t in c.iot.list_thing_types()["thingTypes"] if t["thingTypeName"].endswith(f"-{env}")),
        "rules": sorted(r["ruleName"] for r in c.iot.list_topic_rules()["rules"] if r["ruleName"].endswith(f"_{env.replace('-', '_')}")),
        "policies": sorted(p["policyName"] for p in c.iot.list_policies()["policies"] if p["policyName"].endswith(f"-{env}")),
        # devices: things of the env's type, or carrying its marker (iotpipe:env attribute)
        "things": sorted(t["thingName"] for t in c.iot.list_things()["things"]
                         if t.get("thingTypeName") == f"manufacturing-sensor-{env}"
                         or t.get("attributes", {}).get("iotpipe:env") == env),
        "trails": sorted(t["Name"] for t in c.cloudtrail.describe_trails()["trailList"] if t["Name"].endswith(f"-{env}")),
        # the monitor step
        "topics": sorted(t["TopicArn"].rsplit(":", 1)[-1] for t in c.client("sns").list_topics()["Topics"]
                         if t["TopicArn"].endswith(f":iot-alerts-{env}")),
        "alarms": sorted(a["AlarmName"] for a in c.client("cloudwatch").describe_alarms(
            AlarmNamePrefix=f"iot-{env}-")["MetricAlarms"]),
        "dashboards": sorted(d["DashboardName"] for d in c.client("cloudwatch").list_dashboards(
            DashboardNamePrefix=f"iot-pipeline-{env}")["DashboardEntries"] if d["DashboardName"] == f"iot-pipeline-{env}"),
    }


def assert_nothing_left(c: Clients, env: str) -> None:
    leftovers = {k: v for k, v in snapshot(c, env).items() if v}
    assert not leftovers, f"left behind for env {env}: {leftovers}"

"""The trail step against in-process moto: the bucket (policy, public access block, ownership,
encryption, tags), the trail (validation, selectors, logging), drift, ownership, destroy of
a bucket full of versions, and crash safety at every mutating call."""

from __future__ import annotations

import json

import boto3
import pytest

from iotpipe.errors import AwsCallError, IotpipeError, OwnershipError
from iotpipe.steps import kms, s3util, storage, trail
from tests.support import CallLog, FaultAt, assert_repaired, by_id, fail_with

REGION = "us-east-1"
ACCOUNT = "123456789012"
BUCKET = f"iot-cloudtrail-logs-dev-{ACCOUNT}"
BUCKET_ARN = f"arn:aws:s3:::{BUCKET}"
TRAIL = "iot-audit-trail-dev"
TRAIL_ARN = f"arn:aws:cloudtrail:{REGION}:{ACCOUNT}:trail/{TRAIL}"
# the trail encrypts with the env's key and logs its bucket's access into the access-log bucket
PREREQS = kms.RESOURCES + (storage.AccessLogBucket(),)
RESOURCES = PREREQS + trail.RESOURCES


def client(service: str):
    """An independent client: what a human with the AWS CLI would see."""
    return boto3.client(service, region_name=REGION)




@pytest.fixture
def engine(make, log):
    e = make(resources=RESOURCES, log=log)
    e.up()
    return e



def bucket_statements() -> dict:
    policy = json.loads(client("s3").get_bucket_policy(Bucket=BUCKET)["Policy"])
    return {s["Sid"]: s for s in policy["Statement"]}


# --- create ------------------------------------------------------------------------------------
def test_bucket_policy_lets_only_our_trail_write_under_awslogs(engine):
    stmts = bucket_statements()
    assert set(stmts) == {"AWSCloudTrailAclCheck", "AWSCloudTrailWrite"}  # enforce_tls=false here
    acl, write = stmts["AWSCloudTrailAclCheck"], stmts["AWSCloudTrailWrite"]
    for stmt in (acl, write):
        assert stmt["Effect"] == "Allow"
        assert stmt["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
        assert stmt["Condition"]["StringEquals"]["aws:SourceArn"] == TRAIL_ARN
    assert acl["Action"] == "s3:GetBucketAcl" and acl["Resource"] == BUCKET_ARN
    assert write["Action"] == "s3:PutObject"
    assert write["Resource"] == f"{BUCKET_ARN}/AWSLogs/{ACCOUNT}/*"
    assert write["Condition"]["StringEquals"]["s3:x-amz-acl"] == "bucket-owner-full-control"


def test_bucket_blocks_public_access_enforces_ownership_and_encrypts(engine):
    s3 = client("s3")
    assert s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True}
    assert s3.get_bucket_ownership_controls(Bucket=BUCKET)["OwnershipControls"]["Rules"] == [
        {"ObjectOwnership": "BucketOwnerEnforced"}]
    rule = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": "aws:kms", "KMSMasterKeyID": engine.ctx.refs["kms.key"]["arn"]}
    assert rule["BucketKeyEnabled"] is True
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=BUCKET)["TagSet"]}
    assert tags == engine.ctx.tags("trail.bucket")  # the config's tags plus iotpipe's own
    assert tags["iotpipe:env"] == "dev" and tags["iotpipe:resource"] == "trail.bucket"


def test_tls_only_statement_when_enforced(make):
    make(resources=RESOURCES, sets=("storage.enforce_tls=true",)).up()
    deny = bucket_statements()["DenyInsecureTransport"]
    assert deny == s3util.tls_deny_statement(BUCKET_ARN)
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*" and deny["Action"] == "s3:*"
    assert sorted(deny["Resource"]) == [BUCKET_ARN, f"{BUCKET_ARN}/*"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_trail_validates_logs_selects_all_management_events_and_logs(engine):
    ct = client("cloudtrail")
    found = ct.get_trail(Name=TRAIL)["Trail"]
    assert found["TrailARN"] == TRAIL_ARN
    assert found["S3BucketName"] == BUCKET
    assert found["LogFileValidationEnabled"] is True
    assert found["IncludeGlobalServiceEvents"] is True
    assert found["IsMultiRegionTrail"] is True  # global service events from any region
    assert ct.get_trail_status(Name=TRAIL)["IsLogging"] is True
    assert ct.get_event_selectors(TrailName=TRAIL)["EventSelectors"] == [
        {"ReadWriteType": "All", "IncludeManagementEvents": True}]
    assert ct.get_insight_selectors(TrailName=TRAIL)["InsightSelectors"] == [
        {"InsightType": "ApiCallRateInsight"}]
    (listed,) = ct.list_tags(ResourceIdList=[TRAIL_ARN])["ResourceTagList"]
    tags = {t["Key"]: t["Value"] for t in listed["TagsList"]}
    assert tags["iotpipe:env"] == "dev" and tags["iotpipe:resource"] == "trail.trail"


def test_bucket_policy_is_in_place_before_the_trail_is_created(make, log):
    make(resources=RESOURCES, log=log).up()
    order = [f"{s}.{o}" for s, o in log.calls]
    assert order.index("s3.PutBucketPolicy") < order.index("cloudtrail.CreateTrail")
    assert order.index("cloudtrail.StartLogging") > order.index("cloudtrail.PutInsightSelectors")


def test_config_switches_insights_and_validation(make, log):
    make(resources=RESOURCES, log=log,
         sets=("storage.enforce_tls=false", "trail.insights=false", "trail.log_file_validation=false")).up()
    ct = client("cloudtrail")
    assert ct.get_trail(Name=TRAIL)["Trail"]["LogFileValidationEnabled"] is False
    assert "InsightSelectors" not in ct.get_insight_selectors(TrailName=TRAIL)
    assert ("cloudtrail", "PutInsightSelectors") not in log.calls


# --- converged ---------------------------------------------------------------------------------
def test_second_up_makes_no_mutating_calls(engine, log):
    log.clear()
    result = engine.up()
    assert log.mutating == []
    assert all(r.action == "unchanged" for r in result.resources)
    assert engine.status().in_sync


# --- drift ---------------------------------------------------------------------------------------
def test_stopped_logging_is_restarted(engine, log):
    client("cloudtrail").stop_logging(Name=TRAIL)
    assert_repaired(engine, log, "trail.trail", "logging", {"cloudtrail.StartLogging": 1})
    assert client("cloudtrail").get_trail_status(Name=TRAIL)["IsLogging"] is True


def test_removed_insight_selectors_are_put_back(engine, log):
    # moto's PutInsightSelectors appends and cannot clear; AWS's with [] turns Insights off.
    from moto.cloudtrail.models import cloudtrail_backends

    cloudtrail_backends[ACCOUNT][REGION].trails[TRAIL].insight_selectors.clear()
    assert_repaired(engine, log, "trail.trail", "insight_selectors", {"cloudtrail.PutInsightSelectors": 1})
    assert client("cloudtrail").get_insight_selectors(TrailName=TRAIL)["InsightSelectors"] == [
        {"InsightType": "ApiCallRateInsight"}]


def test_disabled_log_file_validation_is_re_enabled(engine, log):
    client("cloudtrail").update_trail(Name=TRAIL, EnableLogFileValidation=False)
    assert_repaired(engine, log, "trail.trail", "log_file_validation", {"cloudtrail.UpdateTrail": 1})
    assert client("cloudtrail").get_trail(Name=TRAIL)["Trail"]["LogFileValidationEnabled"] is True


def test_narrowed_event_selectors_are_restored(engine, log):
    client("cloudtrail").put_event_selectors(TrailName=TRAIL, EventSelectors=[
        {"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}])
    assert_repaired(engine, log, "trail.trail", "event_selectors", {"cloudtrail.PutEventSelectors": 1})


def test_deleted_bucket_policy_is_put_back(engine, log):
    client("s3").delete_bucket_policy(Bucket=BUCKET)
    assert_repaired(engine, log, "trail.bucket", "policy", {"s3.PutBucketPolicy": 1})
    assert bucket_statements()["AWSCloudTrailWrite"]["Condition"]["StringEquals"]["aws:SourceArn"] == TRAIL_ARN


def test_deleted_public_access_block_is_put_back(engine, log):
    client("s3").delete_public_access_block(Bucket=BUCKET)
    assert_repaired(engine, log, "trail.bucket", "public_access_block", {"s3.PutPublicAccessBlock": 1})


def test_missing_tag_is_restored_keeping_others_tags(engine, log):
    client("s3").put_bucket_tagging(Bucket=BUCKET, Tagging={"TagSet": [
        {"Key": "iotpipe:env", "Value": "dev"}, {"Key": "managed-by", "Value": "iotpipe"},
        {"Key": "added-by-someone", "Value": "42"}]})
    assert_repaired(engine, log, "trail.bucket", "tags", {"s3.PutBucketTagging": 1})
    tags = {t["Key"]: t["Value"] for t in client("s3").get_bucket_tagging(Bucket=BUCKET)["TagSet"]}
    assert tags == {**engine.ctx.tags("trail.bucket"), "added-by-someone": "42"}


# --- ownership --------------------------------------------------------------------------------
def test_same_name_bucket_without_tags_is_not_ours(make, log):
    client("s3").create_bucket(Bucket=BUCKET)
    make(resources=PREREQS).up()
    with pytest.raises(OwnershipError, match=BUCKET):
        make(resources=RESOURCES, log=log).up()
    assert log.mutating == []
    result = make(resources=RESOURCES).destroy()
    assert by_id(result, "trail.bucket").action == "skipped"
    client("s3").head_bucket(Bucket=BUCKET)  # still there


def test_bucket_of_another_account_is_foreign(make):
    """head_bucket 403: the global name belongs to someone else."""
    e = make(resources=RESOURCES)
    e.ctx.aws.events.register("before-call.s3.HeadBucket", fail_with("403", "Forbidden"))
    assert by_id(e.status(), "trail.bucket").health == "foreign"
    assert by_id(e.destroy(), "trail.bucket").action == "skipped"
    with pytest.raises(OwnershipError):
        e.up()


def test_same_name_trail_without_tags_is_not_ours(make):
    client("s3").create_bucket(Bucket="someone-elses-bucket")
    client("cloudtrail").create_trail(Name=TRAIL, S3BucketName="someone-elses-bucket")
    with pytest.raises(OwnershipError, match=TRAIL):
        make(resources=RESOURCES).up()
    assert by_id(make(resources=RESOURCES).destroy(), "trail.trail").action == "skipped"
    assert client("cloudtrail").get_trail(Name=TRAIL)["Trail"]["S3BucketName"] == "someone-elses-bucket"


# --- destroy ----------------------------------------------------------------------------------
def test_destroy_empties_a_versioned_bucket_and_leaves_nothing(engine, log):
    s3 = client("s3")
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for n in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"AWSLogs/{ACCOUNT}/log-{n}.json.gz", Body=b"1")
        s3.put_object(Bucket=BUCKET, Key=f"AWSLogs/{ACCOUNT}/log-{n}.json.gz", Body=b"2")
    s3.delete_object(Bucket=BUCKET, Key=f"AWSLogs/{ACCOUNT}/log-0.json.gz")  # a delete marker
    log.clear()
    result = engine.destroy()
    assert [(r.logical_id, r.action) for r in result.resources] == [
        ("trail.trail", "delete"), ("trail.bucket", "delete"), ("storage.access_log_bucket", "delete"),
        ("kms.alias", "delete"), ("kms.key", "scheduled")]
    # one per bucket: the access-log bucket holds the trail bucket's access logs (moto delivers
    # them at once, AWS within hours)
    assert log.counts(mutating_only=True)["s3.DeleteObjects"] == 2
    assert client("cloudtrail").describe_trails()["trailList"] == []
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == []
    assert all(r.action == "absent" for r in engine.destroy().resources)


def test_destroy_with_tls_only_policy_deletes_the_policy_first(make):
    """On moto a TLS-only Deny blocks every object call: teardown must not depend on it."""
    make(resources=RESOURCES).up()
    client("s3").put_object(Bucket=BUCKET, Key="AWSLogs/x", Body=b"x")
    enforcing = make(resources=RESOURCES, sets=("storage.enforce_tls=true",))
    enforcing.up()
    assert "DenyInsecureTransport" in bucket_statements()
    result = enforcing.destroy()
    assert by_id(result, "trail.bucket").action == "delete"
    assert client("s3").list_buckets()["Buckets"] == []


class FakeS3:
    """Just enough of an S3 client to check batching and error handling of empty_bucket:
    a listing of at most 1000 entries, versions before markers, that deletes take out."""

    def __init__(self, versions: int, markers: int, errors=None, deletes_take=True):
        self.versions = [{"Key": f"k{n}", "VersionId": f"v{n}"} for n in range(versions)]
        self.markers = [{"Key": f"m{n}", "VersionId": f"d{n}"} for n in range(markers)]
        self.errors = errors or []
        self.deletes_take = deletes_take
        self.batches: list[int] = []
        self.listings = 0

    def list_object_versions(self, Bucket, MaxKeys):  # noqa: N803 - boto3's parameter names
        self.listings += 1
        versions = self.versions[:MaxKeys]
        return {"Versions": versions, "DeleteMarkers": self.markers[:MaxKeys - len(versions)]}

    def delete_objects(self, Bucket, Delete):  # noqa: N803
        self.batches.append(len(Delete["Objects"]))
        if self.errors:
            return {"Errors": self.errors}
        if self.deletes_take:
            gone = {(o["Key"], o["VersionId"]) for o in Delete["Objects"]}
            self.versions = [v for v in self.versions if (v["Key"], v["VersionId"]) not in gone]
            self.markers = [m for m in self.markers if (m["Key"], m["VersionId"]) not in gone]
        return {"Deleted": Delete["Objects"]}


def test_empty_bucket_deletes_in_batches_of_at_most_1000():
    fake = FakeS3(versions=1800, markers=700)
    assert s3util.empty_bucket(fake, "b") == 2500
    assert fake.batches == [1000, 1000, 500]
    assert fake.listings == 4  # three pages, then the empty listing that proves it is empty


def test_empty_bucket_stops_when_deleted_versions_are_listed_again():
    fake = FakeS3(versions=3, markers=0, deletes_take=False)
    with pytest.raises(AwsCallError, match="still listed after DeleteObjects"):
        s3util.empty_bucket(fake, "b")
    assert fake.batches == [3]


def test_empty_bucket_raises_when_some_deletes_fail():
    fake = FakeS3(versions=2, markers=0, errors=[{"Key": "k0", "Code": "AccessDenied", "Message": "no"}])
    with pytest.raises(AwsCallError, match="k0.*AccessDenied"):
        s3util.empty_bucket(fake, "b")


# --- crash safety -----------------------------------------------------------------------------
def test_a_crash_at_any_mutating_call_is_finished_by_the_next_up(make):
    """Fail the Nth mutating call of a fresh `up` (each N in its own env), then re-run: the
    half-made bucket (no tags/policy yet) or trail (no selectors, not logging) is finished."""
    probe = CallLog()
    make(env="probe", resources=PREREQS).up()
    make(env="probe", resources=RESOURCES, log=probe, parallelism=1).up()  # the Nth call: a fixed one
    total = len(probe.mutating)
    assert total == 12  # bucket: create, 7 aspects; trail: create, selectors, insights, logging
    for n in range(total):
        env = f"crash{n}"
        make(env=env, resources=PREREQS).up()  # converged: the faults land in the trail step
        e = make(env=env, resources=RESOURCES, parallelism=1)
        fault = FaultAt(n + 1, "error")
        fault.attach(e.ctx.aws.events)
        with pytest.raises(IotpipeError):
            e.up()
        assert fault.fired is not None
        log = CallLog()
        e = make(env=env, resources=RESOURCES, log=log)  # the next run: new session, no fault
        e.up()
        assert ("s3", "CreateBucket") not in log.calls or n == 0
        assert ("cloudtrail", "CreateTrail") not in log.calls or n <= 8
        log.clear()
        e.up()
        assert log.mutating == [], (n, log.mutating)
        assert e.status().in_sync, n
        names = [t["Name"] for t in client("cloudtrail").describe_trails()["trailList"]]
        assert names.count(f"iot-audit-trail-{env}") == 1
        e.destroy()  # CloudTrail holds 5 trails per region: the next env needs the place

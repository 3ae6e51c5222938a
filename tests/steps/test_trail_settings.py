"""The trail's settings and CloudTrail's quota: five trails per region (AWS's refusal reproduced
by the behaviour table, moto has no quota), trail.enabled for envs without a trail of their own,
and a multi-region trail by default so that IAM/STS events are recorded wherever the env lives."""

from __future__ import annotations

import boto3
import pytest

from iotpipe.aws import AwsContext
from iotpipe.config import load_config
from iotpipe.engine import make_engine
from iotpipe.errors import ExitCode, QuotaError
from iotpipe.steps import kms, storage, trail
from tests.awsbehaviour import FakeClock, rules_named
from tests.awsbehaviour.fixture import attach
from tests.support import assert_repaired, by_id

# The trail bucket is encrypted with the env's key and logs into the access-log bucket.
RESOURCES = kms.RESOURCES + (storage.AccessLogBucket(),) + trail.RESOURCES

REGION = "us-east-1"
TRAIL = "iot-audit-trail-dev"
QUOTA_RULE = "cloudtrail.trails-per-region-quota"


def client(service: str, region: str = REGION):
    return boto3.client(service, region_name=region)


def other_trails(count: int, region: str = REGION, *, multi_region: bool = False, prefix: str = "other") -> None:
    """Trails somebody else made in the account (another team, another tool)."""
    s3 = client("s3", region)
    bucket = f"{prefix}-trail-logs-{region}"
    kwargs = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **kwargs)
    for n in range(count):
        client("cloudtrail", region).create_trail(Name=f"{prefix}-trail-{n}", S3BucketName=bucket,
                                                  IsMultiRegionTrail=multi_region)


def with_quota(engine) -> None:
    attach(engine.ctx.aws, rules_named(QUOTA_RULE), FakeClock())


# --- the quota as AWS enforces it ----------------------------------------------------------------
def test_the_behaviour_table_refuses_a_sixth_trail_as_aws_does(make):
    engine = make(resources=RESOURCES)
    with_quota(engine)
    other_trails(5)
    ct = engine.ctx.aws.client("cloudtrail")
    with pytest.raises(ct.exceptions.MaximumNumberOfTrailsExceededException) as err:
        ct.create_trail(Name="a-sixth-one", S3BucketName="other-trail-logs-us-east-1")
    assert err.value.response["Error"]["Message"] == "User: 123456789012 already has 5 trails in us-east-1."


def test_a_sixth_trail_stops_up_before_its_first_write(make, log):
    other_trails(5)
    engine = make(log=log)  # the whole pipeline: the trail is its last step
    with_quota(engine)
    with pytest.raises(QuotaError) as err:
        engine.up()
    message = str(err.value)
    assert "5 trails per region" in message and "trail.enabled = false" in message
    assert "\n" not in message and err.value.exit_code == ExitCode.QUOTA == 73
    assert log.mutating == []  # not half an env: nothing at all


def test_other_regions_multi_region_trails_take_a_place_here_too(make, log):
    other_trails(4)
    other_trails(1, "eu-west-1", multi_region=True, prefix="org")
    engine = make(resources=RESOURCES, log=log)
    with_quota(engine)
    with pytest.raises(QuotaError, match="org-trail-0"):
        engine.up()
    assert log.mutating == []


def test_five_trails_including_ours_is_no_obstacle(make, log):
    engine = make(resources=RESOURCES, log=log)
    with_quota(engine)
    engine.up()
    other_trails(4)
    log.clear()
    assert engine.up().in_sync and log.mutating == []


def test_plan_says_so_too(make):
    other_trails(5)
    engine = make(resources=RESOURCES)
    with pytest.raises(QuotaError):
        engine.plan()


# --- trail.enabled = false -----------------------------------------------------------------------
def test_an_env_without_its_own_trail_fits_where_five_trails_exist(make, log):
    other_trails(5)
    engine = make(log=log, sets=("storage.enforce_tls=false", "trail.enabled=false"))
    with_quota(engine)
    result = engine.up()
    for lid in ("trail.bucket", "trail.trail"):
        assert by_id(result, lid).health == "disabled"
        assert "trail.enabled = false" in by_id(result, lid).message
    assert not any(s == "cloudtrail" and o.startswith("Create") for s, o in log.mutating)
    assert f"iot-cloudtrail-logs-dev-{engine.ctx.account}" not in {
        b["Name"] for b in client("s3").list_buckets()["Buckets"]}
    status = engine.status()
    assert status.in_sync and by_id(status, "trail.trail").health == "disabled"
    assert engine.plan().in_sync
    log.clear()
    engine.up()
    assert log.mutating == []


def test_a_trail_made_before_it_was_disabled_is_reported_kept_and_destroyed(make, log):
    make(resources=RESOURCES).up()
    engine = make(resources=RESOURCES, log=log, sets=("storage.enforce_tls=false", "trail.enabled=false"))
    status = engine.status()
    assert by_id(status, "trail.trail").health == "unwanted" and not status.in_sync  # exit 2
    assert "destroy" in by_id(status, "trail.trail").message
    assert engine.plan().in_sync  # nothing `up` would change
    log.clear()
    engine.up()
    assert log.mutating == []  # an audit trail is never deleted by `up`
    assert client("cloudtrail").get_trail(Name=TRAIL)
    engine.destroy()
    assert not client("cloudtrail").describe_trails()["trailList"]


# --- multi-region by default -----------------------------------------------------------------------
def test_multi_region_trail_by_default_and_drift_is_repaired(make, log):
    engine = make(resources=RESOURCES, log=log)
    engine.up()
    found = client("cloudtrail").get_trail(Name=TRAIL)["Trail"]
    assert found["IsMultiRegionTrail"] is True and found["IncludeGlobalServiceEvents"] is True
    assert engine.plan().resources[-1].message == ""
    client("cloudtrail").update_trail(Name=TRAIL, IsMultiRegionTrail=False)
    assert_repaired(engine, log, "trail.trail", "is_multi_region_trail", {"cloudtrail.UpdateTrail": 1})
    assert client("cloudtrail").get_trail(Name=TRAIL)["Trail"]["IsMultiRegionTrail"] is True


def test_opting_out_of_multi_region_says_what_is_lost(make, moto, tmp_path):
    config = load_config("dev", region="eu-west-1",
                         assignments=("storage.enforce_tls=false", "trail.multi_region=false"))
    engine = make_engine(config, AwsContext("eu-west-1"), tmp_path / "state", resources=RESOURCES)
    planned = by_id(engine.plan(), "trail.trail")
    assert "IAM, STS" in planned.message and "eu-west-1" in planned.message
    engine.up()
    assert client("cloudtrail", "eu-west-1").get_trail(Name=TRAIL)["Trail"]["IsMultiRegionTrail"] is False
    assert "IAM, STS" in by_id(engine.plan(), "trail.trail").message


def test_opting_out_in_us_east_1_still_says_other_regions_are_not_recorded(make):
    engine = make(resources=RESOURCES, sets=("storage.enforce_tls=false", "trail.multi_region=false"))
    assert "us-east-1 only" in by_id(engine.plan(), "trail.trail").message

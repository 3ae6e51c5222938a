"""One env name, two regions, two state directories (issue 8, item 2), as an operator meets it:
a second laptop whose region comes from AWS_REGION deploys "dev" again. IAM role and S3 bucket
names are global, so the second region must neither adopt nor destroy the first region's."""

from __future__ import annotations

import json

from iotpipe.errors import ExitCode
from tests.pipeline_checks import Clients

FIRST, SECOND = "us-east-1", "eu-west-1"
ACCOUNT = "123456789012"
SENSOR_BUCKET = f"iot-sensor-data-dev-{ACCOUNT}"
TRAIL_BUCKET = f"iot-cloudtrail-logs-dev-{ACCOUNT}"
ROLES = ("iot-rule-role-dev", "iot-lambda-role-dev")
TLS_OFF = ("--set", "storage.enforce_tls=false")  # moto denies object calls under the TLS policy


def global_resources(c: Clients) -> dict:
    """Everything of the first region's global resources a wrong adoption would rewrite."""
    out: dict = {}
    for role in ROLES:
        got = c.iam.get_role(RoleName=role)["Role"]
        out[role] = {
            "trust": got["AssumeRolePolicyDocument"],
            "inline": {p: c.iam.get_role_policy(RoleName=role, PolicyName=p)["PolicyDocument"]
                       for p in c.iam.list_role_policies(RoleName=role)["PolicyNames"]},
            "tags": c.iam.list_role_tags(RoleName=role)["Tags"],
        }
    for bucket in (SENSOR_BUCKET, TRAIL_BUCKET):
        out[bucket] = {
            "encryption": c.s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"],
            "tags": c.s3.get_bucket_tagging(Bucket=bucket)["TagSet"],
            "policy": c.s3.get_bucket_policy(Bucket=bucket)["Policy"] if bucket == TRAIL_BUCKET else None,
            "objects": sorted(v["VersionId"] for v in
                              c.s3.list_object_versions(Bucket=bucket).get("Versions", [])),
        }
    return out


def test_same_env_in_a_second_region_is_refused_and_leaves_the_first_intact(iotpipe, server, tmp_path):
    first = Clients(FIRST, server)
    a, b = str(tmp_path / "laptop-a"), str(tmp_path / "laptop-b")
    up = iotpipe("up", "--env", "dev", "--region", FIRST, "--state-dir", a, *TLS_OFF)
    assert up.returncode == 0, up.stderr
    added = iotpipe("device", "add", "press-07", "--env", "dev", "--region", FIRST, "--state-dir", a,
                    "--json")
    assert added.returncode == 0, added.stderr
    key = tmp_path / "laptop-a" / "devices" / "dev" / "press-07" / "private.pem.key"
    key_bytes = key.read_bytes()
    first.s3.put_object(Bucket=SENSOR_BUCKET, Key="raw/reading.jsonl.gz", Body=b"precious")
    for role in ROLES:
        tags = {t["Key"]: t["Value"] for t in first.iam.list_role_tags(RoleName=role)["Tags"]}
        assert tags["iotpipe:region"] == FIRST
    before = global_resources(first)

    # The second laptop: same env, region from AWS_REGION, its own state directory.
    second_env = {"AWS_REGION": SECOND, "AWS_DEFAULT_REGION": SECOND}
    up2 = iotpipe("up", "--env", "dev", "--state-dir", b, *TLS_OFF, extra_env=second_env)
    assert up2.returncode == ExitCode.OWNERSHIP, up2.stderr
    assert len(up2.stderr.strip().splitlines()) == 1
    assert ("iot-access-logs-dev-" in up2.stderr or SENSOR_BUCKET in up2.stderr) and FIRST in up2.stderr and "nothing was written" in up2.stderr
    assert global_resources(first) == before

    status2 = iotpipe("status", "--env", "dev", "--state-dir", b, "--json", extra_env=second_env)
    rows = {r["logical_id"]: r for r in json.loads(status2.stdout)["resources"]}
    assert rows["storage.sensor_bucket"]["status"] == "foreign"
    assert rows["lambda.role"]["status"] == "foreign" and rows["iot.rule_role"]["status"] == "foreign"

    destroy2 = iotpipe("destroy", "--env", "dev", "--state-dir", b, "--yes", "--json", extra_env=second_env)
    assert destroy2.returncode == 0, destroy2.stderr
    skipped = {r["name"] for r in json.loads(destroy2.stdout)["resources"] if r["action"] == "skipped"}
    assert {SENSOR_BUCKET, TRAIL_BUCKET, *ROLES} <= skipped
    assert global_resources(first) == before
    body = first.s3.get_object(Bucket=SENSOR_BUCKET, Key="raw/reading.jsonl.gz")["Body"].read()
    assert body == b"precious"

    # The device is live in the first region: nothing in the second touches its key.
    add2 = iotpipe("device", "add", "press-07", "--env", "dev", "--state-dir", b, extra_env=second_env)
    assert add2.returncode == ExitCode.CHANGES_PENDING, add2.stderr  # not deployed there
    assert key.read_bytes() == key_bytes

    # ...and the first region still converges with no write: nothing of it was changed.
    again = iotpipe("plan", "--env", "dev", "--region", FIRST, "--state-dir", a, *TLS_OFF)
    assert again.returncode == 0, again.stdout + again.stderr

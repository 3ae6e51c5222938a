"""The CLI on CloudTrail's quota and the trail settings: exit 73 with one line, an env without a
trail of its own, and plan saying what a single-region trail gives up (in-process moto)."""

from __future__ import annotations

import boto3

from iotpipe.cli import main
from iotpipe.errors import ExitCode

NO_TLS = ("--set", "storage.enforce_tls=false")


def five_trails() -> None:
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="team-trail-logs")
    for n in range(5):
        boto3.client("cloudtrail", region_name="us-east-1").create_trail(
            Name=f"team-trail-{n}", S3BucketName="team-trail-logs")


def test_quota_exit_code_then_an_env_without_its_own_trail(moto, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    five_trails()
    assert main(["up", *NO_TLS]) == ExitCode.QUOTA == 73
    err = capsys.readouterr().err
    assert "5 trails per region" in err and "trail.enabled" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not boto3.client("kms", region_name="us-east-1").list_keys()["Keys"]  # nothing made
    off = (*NO_TLS, "--set", "trail.enabled=false")
    assert main(["up", *off]) == ExitCode.OK
    capsys.readouterr()
    assert main(["status", *off]) == ExitCode.OK
    assert "disabled" in capsys.readouterr().out
    assert main(["plan", *off]) == ExitCode.OK


def test_plan_prints_what_a_single_region_trail_misses(moto, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["plan", *NO_TLS, "--set", "trail.multi_region=false"]) == ExitCode.CHANGES_PENDING
    out = capsys.readouterr().out
    assert "trail.multi_region = false" in out and "us-east-1 only" in out

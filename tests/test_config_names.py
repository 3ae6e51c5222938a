"""Every name iotpipe derives from an env satisfies its service's naming rules, or the config is
refused before any AWS call. The rules here are written down again from the API references,
independently of iotpipe.naming.NAME_RULES, so that a mistake in one is caught by the other."""

from __future__ import annotations

import re
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotpipe.config import Names, load_config
from iotpipe.errors import ConfigError
from iotpipe.naming import NAME_RULES

ACCOUNT = "123456789012"


def _bucket(n: str) -> bool:  # https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html
    return (3 <= len(n) <= 63 and re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", n) is not None
            and ".." not in n and ".-" not in n and "-." not in n
            and not re.fullmatch(r"\d+\.\d+\.\d+\.\d+", n))


def _chars(pattern: str, low: int, high: int):
    return lambda n: low <= len(n) <= high and re.fullmatch(pattern, n) is not None


AWS_RULES = {
    # https://docs.aws.amazon.com/awscloudtrail/latest/APIReference/API_CreateTrail.html: letters,
    # numbers, periods, underscores, dashes; starts and ends with a letter or number; 3-128;
    # "my-_namespace" and "my--namespace" are not valid; not an IP address.
    "trail": lambda n: (_chars(r"[A-Za-z0-9][A-Za-z0-9._-]*[A-Za-z0-9]", 3, 128)(n)
                        and not re.search(r"[._-]{2}", n)),
    "sensor_bucket": _bucket,
    "trail_bucket": _bucket,
    "access_log_bucket": _bucket,
    # https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_CreateTable.html
    "metrics_table": _chars(r"[a-zA-Z0-9_.-]+", 3, 255),
    # https://docs.aws.amazon.com/kinesis/latest/APIReference/API_CreateStream.html
    "stream": _chars(r"[a-zA-Z0-9_.-]+", 1, 128),
    # https://docs.aws.amazon.com/lambda/latest/api/API_CreateFunction.html (name form, 64)
    "function": _chars(r"[a-zA-Z0-9_-]+", 1, 64),
    # https://docs.aws.amazon.com/IAM/latest/APIReference/API_CreateRole.html
    "iot_rule_role": _chars(r"[\w+=,.@-]+", 1, 64),
    "lambda_role": _chars(r"[\w+=,.@-]+", 1, 64),
    # https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_CreateLogGroup.html
    "lambda_log_group": _chars(r"[\.\-_/#A-Za-z0-9]+", 1, 512),
    "iot_log_group": _chars(r"[\.\-_/#A-Za-z0-9]+", 1, 512),
    # https://docs.aws.amazon.com/AWSSimpleQueueService/latest/APIReference/API_CreateQueue.html
    "dlq": _chars(r"[A-Za-z0-9_-]+", 1, 80),
    # https://docs.aws.amazon.com/iot/latest/apireference/API_CreateThingType.html
    "thing_type": _chars(r"[a-zA-Z0-9:_-]+", 1, 128),
    # https://docs.aws.amazon.com/iot/latest/apireference/API_CreateTopicRule.html: ^[a-zA-Z0-9_]+$
    "topic_rule": _chars(r"[a-zA-Z0-9_]+", 1, 128),
    # https://docs.aws.amazon.com/iot/latest/apireference/API_CreatePolicy.html
    "device_policy": _chars(r"[\w+=,.@-]+", 1, 128),
    # https://docs.aws.amazon.com/kms/latest/APIReference/API_CreateAlias.html
    "kms_alias": lambda n: (_chars(r"alias/[a-zA-Z0-9/_-]+", 1, 256)(n) and not n.startswith("alias/aws/")),
}


def test_every_derived_name_has_a_rule_here_and_in_the_config():
    names = {f.name for f in fields(Names)}
    assert names == set(AWS_RULES) == set(NAME_RULES)
    for rule in NAME_RULES.values():
        assert rule.source.startswith("https://docs.aws.amazon.com/"), rule.what


@settings(max_examples=400, deadline=None)
@given(env=st.text(alphabet="abcxyz019-_.A", min_size=0, max_size=30))
def test_a_valid_config_derives_only_valid_names(env):
    try:
        config = load_config(env)
    except ConfigError as err:
        assert "\n" not in str(err)
        return
    names = Names.derive(config, ACCOUNT)
    for field, ok in AWS_RULES.items():
        assert ok(getattr(names, field)), (env, field, getattr(names, field))


@pytest.mark.parametrize("env", ["a--b", "ci--1", "x-y--z"])
def test_adjacent_dashes_would_make_an_invalid_trail_name_and_are_refused(env):
    with pytest.raises(ConfigError) as err:
        load_config(env)
    assert "CloudTrail trail name" in str(err.value) and "adjacent" in str(err.value)


@pytest.mark.parametrize("env", ["dev", "a", "a-b", "ci-1234", "x" * 24, "0-prod-9"])
def test_ordinary_env_names_pass_and_their_names_are_valid(env):
    names = Names.derive(load_config(env), ACCOUNT)
    assert all(ok(getattr(names, field)) for field, ok in AWS_RULES.items())


def test_a_custom_bucket_name_is_checked_too():
    with pytest.raises(ConfigError, match="trail.bucket_name"):
        load_config("dev", assignments=('trail.bucket_name="a..b"',))

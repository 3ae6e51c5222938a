"""Every service's naming rules, for the names iotpipe derives from an env (config.Names).

Checked when the config is validated, so that an env name one service would refuse (CloudTrail:
no two dashes in a row; IoT rules: no dashes at all) fails before the first AWS call instead of
at the last step of `up`. Each rule is written as its API reference states it (``source``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_IP_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


@dataclass(frozen=True)
class NameRule:
    """One service's naming rule, as its API reference states it (``source``)."""

    what: str
    pattern: str  # the characters allowed, as a full-match regex
    allowed: str  # the same, in words, for the error line
    max_len: int
    min_len: int = 1
    source: str = ""

    def problem(self, name: str) -> str | None:
        if not self.min_len <= len(name) <= self.max_len:
            return f"must be {self.min_len}-{self.max_len} characters (is {len(name)})"
        if not re.fullmatch(self.pattern, name):
            return f"may hold only {self.allowed}"
        return None


class _TrailRule(NameRule):
    def problem(self, name: str) -> str | None:
        if found := super().problem(name):
            return found
        if re.search(r"[._-]{2}", name):
            return "must not have adjacent periods, underscores or dashes"
        if _IP_RE.match(name):
            return "must not look like an IP address"
        return None


class _BucketRule(NameRule):
    def problem(self, name: str) -> str | None:
        from iotpipe.config import bucket_name_problem

        return bucket_name_problem(name)


_API = "https://docs.aws.amazon.com"
# Every derived name against its service's rules, checked when the config is validated, so a
# bad env name fails before the first AWS call rather than halfway through `up`.
NAME_RULES: dict[str, NameRule] = {
    "kms_alias": NameRule("KMS alias", r"alias/(?!aws/)[a-zA-Z0-9/_-]+", "letters, digits, '/', '_', '-'", 256,
                          source=f"{_API}/kms/latest/APIReference/API_CreateAlias.html"),
    "sensor_bucket": _BucketRule("sensor bucket name", "", "", 63, 3,
                                 source=f"{_API}/AmazonS3/latest/userguide/bucketnamingrules.html"),
    "trail_bucket": _BucketRule("trail bucket name", "", "", 63, 3,
                                source=f"{_API}/AmazonS3/latest/userguide/bucketnamingrules.html"),
    "access_log_bucket": _BucketRule("access-log bucket name", "", "", 63, 3,
                                     source=f"{_API}/AmazonS3/latest/userguide/bucketnamingrules.html"),
    "metrics_table": NameRule("DynamoDB table name", r"[a-zA-Z0-9_.-]+", "letters, digits, '_', '.', '-'",
                              255, 3, f"{_API}/amazondynamodb/latest/APIReference/API_CreateTable.html"),
    "stream": NameRule("Kinesis stream name", r"[a-zA-Z0-9_.-]+", "letters, digits, '_', '.', '-'", 128,
                       source=f"{_API}/kinesis/latest/APIReference/API_CreateStream.html"),
    "lambda_log_group": NameRule("log group name", r"[a-zA-Z0-9_./#-]+", "letters, digits, '_', '.', '/', '#', '-'",
                                 512, source=f"{_API}/AmazonCloudWatchLogs/latest/APIReference/API_CreateLogGroup.html"),
    "iot_log_group": NameRule("log group name", r"[a-zA-Z0-9_./#-]+", "letters, digits, '_', '.', '/', '#', '-'",
                              512, source=f"{_API}/AmazonCloudWatchLogs/latest/APIReference/API_CreateLogGroup.html"),
    "iot_rule_role": NameRule("IAM role name", r"[\w+=,.@-]+", "letters, digits, '+=,.@_-'", 64,
                              source=f"{_API}/IAM/latest/APIReference/API_CreateRole.html"),
    "lambda_role": NameRule("IAM role name", r"[\w+=,.@-]+", "letters, digits, '+=,.@_-'", 64,
                            source=f"{_API}/IAM/latest/APIReference/API_CreateRole.html"),
    "function": NameRule("Lambda function name", r"[a-zA-Z0-9_-]+", "letters, digits, '_', '-'", 64,
                         source=f"{_API}/lambda/latest/api/API_CreateFunction.html"),
    "dlq": NameRule("SQS queue name", r"[a-zA-Z0-9_-]+", "letters, digits, '_', '-'", 80,
                    source=f"{_API}/AWSSimpleQueueService/latest/APIReference/API_CreateQueue.html"),
    "thing_type": NameRule("IoT thing type name", r"[a-zA-Z0-9:_-]+", "letters, digits, ':', '_', '-'", 128,
                           source=f"{_API}/iot/latest/apireference/API_CreateThingType.html"),
    "topic_rule": NameRule("IoT topic rule name", r"[a-zA-Z0-9_]+", "letters, digits and '_'", 128,
                           source=f"{_API}/iot/latest/apireference/API_CreateTopicRule.html"),
    "device_policy": NameRule("IoT policy name", r"[\w+=,.@-]+", "letters, digits, '+=,.@_-'", 128,
                              source=f"{_API}/iot/latest/apireference/API_CreatePolicy.html"),
    "trail": _TrailRule("CloudTrail trail name", r"[a-zA-Z0-9][a-zA-Z0-9._-]*[a-zA-Z0-9]",
                        "letters, digits, '.', '_', '-', starting and ending with a letter or digit", 128, 3,
                        f"{_API}/awscloudtrail/latest/APIReference/API_CreateTrail.html"),
}

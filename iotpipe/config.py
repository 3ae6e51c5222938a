"""The pipeline's configuration: defaults from the seed stack, validated with AWS's own limits.

Validation happens here, before any AWS call, so a typo in `config/prod.toml` or a bad
`--env` never leaves half an environment behind. Every rule below is a limit AWS enforces
(or a choice iotpipe makes for safety, said so where it applies).
"""

from __future__ import annotations

import difflib
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from iotpipe.errors import ConfigError

DEFAULT_REGION = "ap-southeast-1"  # the seed's region, used when nothing else sets one
PLACEHOLDER_ACCOUNT = "123456789012"  # account ids are always 12 digits: names are checked with one

# CloudWatch Logs accepts only these retention periods (PutRetentionPolicy).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)
# Python runtimes the handler is tested under (tests/handler/test_handler_runtimes.py runs the
# shipped zip with each one's interpreter). The handler needs 3.11 (datetime.UTC, the full ISO
# 8601 parser of datetime.fromisoformat); python3.10 left upstream support in October 2026.
LAMBDA_RUNTIMES = ("python3.11", "python3.12", "python3.13")
METRICS = ("temperature", "vibration", "pressure")
TAG_PREFIX = "iotpipe:"

_ENV_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?$")
_REGION_RE = re.compile(r"^[a-z]{2}(?:-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IP_RE = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")


def bucket_name_problem(name: str) -> str | None:
    """Why S3 would reject ``name`` as a general-purpose bucket name, or None."""
    if not 3 <= len(name) <= 63:
        return "must be 3-63 characters"
    if not _BUCKET_RE.match(name):
        return "may hold only lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit"
    if ".." in name or ".-" in name or "-." in name:
        return "must not contain '..', '.-' or '-.'"
    if _IP_RE.match(name):
        return "must not look like an IP address"
    for prefix in ("xn--", "sthree-", "amzn-s3-demo-"):
        if name.startswith(prefix):
            return f"must not start with {prefix!r}"
    for suffix in ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3"):
        if name.endswith(suffix):
            return f"must not end with {suffix!r}"
    return None


def _check_env(value: str) -> str:
    if not _ENV_RE.match(value):
        raise ValueError(
            f"{value!r} is not a valid env name: use 1-24 lowercase letters, digits and inner "
            "hyphens (it becomes part of S3 bucket and IoT rule names)"
        )
    return value


class _Section(BaseModel):
    # strict: "256" in a TOML file is a mistake to report, not a value to coerce
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, strict=True)


class KmsConfig(_Section):
    deletion_window_days: int = Field(30, ge=7, le=30)
    # A key put into PendingDeletion out of band is the key every bucket, table and stream is
    # encrypted with: `up` cancels the deletion (false: `up` stops and names the date instead).
    recover_pending_deletion: bool = True


class StorageConfig(_Section):
    sensor_bucket_name: str | None = None  # default iot-sensor-data-{env}-{account}
    glacier_transition_days: int = Field(90, ge=1, le=36500)
    # S3's TransitionDefaultMinimumObjectSize, set explicitly (see docs/aws-behaviour.md):
    # objects under 128 KB cost more in Glacier than in Standard, so they stay by default.
    glacier_min_object_size: Literal["all_storage_classes_128K", "varies_by_storage_class"] = \
        "all_storage_classes_128K"
    noncurrent_version_expiration_days: int = Field(30, ge=1, le=36500)
    abort_incomplete_upload_days: int = Field(7, ge=1, le=36500)
    point_in_time_recovery: bool = True
    # AWS honours a TLS-only Deny; moto applies Deny statements but ignores their Condition, so
    # every object call would fail on the emulator. config/local.toml turns it off there only.
    enforce_tls: bool = True
    # Where both buckets' S3 server access logs go: by default a bucket iotpipe makes and owns
    # (iot-access-logs-{env}-{account}); with access_log_bucket_external, an existing bucket of
    # someone else's (a central logging bucket) that iotpipe only points logging at.
    access_log_bucket_name: str | None = None
    access_log_bucket_external: bool = False
    access_log_expiration_days: int = Field(365, ge=1, le=36500)
    # How long the Lambda event source mapping's failure records (aws/lambda/ in the sensor
    # bucket: the whole failed batch) stay after they were written, unless `replay failed`
    # persists and removes them first. At most glacier_transition_days: `replay` cannot read
    # an object that went to Glacier.
    # Unset: 30 days, or glacier_transition_days when that is shorter.
    failure_record_expiration_days: int | None = Field(None, ge=1, le=36500)

    @property
    def failure_records_expire_after_days(self) -> int:
        return self.failure_record_expiration_days or min(30, self.glacier_transition_days)

    @field_validator("sensor_bucket_name", "access_log_bucket_name")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and (problem := bucket_name_problem(value)):
            raise ValueError(f"bucket name {value!r} {problem}")
        return value

    @model_validator(mode="after")
    def _external_is_named(self) -> StorageConfig:
        if self.access_log_bucket_external and not self.access_log_bucket_name:
            raise ValueError("access_log_bucket_external needs access_log_bucket_name (the bucket to log into)")
        return self

    @model_validator(mode="after")
    def _failure_records_stay_readable(self) -> StorageConfig:
        if (self.failure_record_expiration_days or 0) > self.glacier_transition_days:
            raise ValueError(
                f"failure_record_expiration_days ({self.failure_record_expiration_days}) must not exceed "
                f"glacier_transition_days ({self.glacier_transition_days}): a failure record in Glacier "
                "cannot be read by `iotpipe replay failed`")
        return self


class StreamConfig(_Section):
    retention_hours: int = Field(24, ge=24, le=8760)


class LogsConfig(_Section):
    retention_days: int = 30

    @field_validator("retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        if value not in LOG_RETENTION_DAYS:
            raise ValueError(f"must be one of CloudWatch's values {', '.join(map(str, LOG_RETENTION_DAYS))}")
        return value


class LambdaConfig(_Section):
    runtime: Literal["python3.11", "python3.12", "python3.13"] = "python3.11"
    memory_mb: int = Field(256, ge=128, le=10240)
    timeout_s: int = Field(60, ge=1, le=900)
    batch_size: int = Field(100, ge=1, le=10000)
    batch_window_s: int = Field(10, ge=0, le=300)
    starting_position: Literal["LATEST", "TRIM_HORIZON"] = "LATEST"
    # Bounded on purpose: AWS also allows -1 (retry until the record expires), which blocks a
    # shard behind one poison batch for up to the stream's retention.
    max_retry_attempts: int = Field(5, ge=0, le=10000)
    max_record_age_s: int = Field(3600, ge=60, le=604800)
    bisect_on_error: bool = True
    parallelization_factor: int = Field(1, ge=1, le=10)


class Threshold(_Section):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Threshold:
        for bound in (self.min, self.max):
            if bound is not None and not math.isfinite(bound):
                raise ValueError("thresholds must be finite numbers")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


def _default_thresholds() -> dict[str, Threshold]:
    return {"temperature": Threshold(max=100), "vibration": Threshold(max=50), "pressure": Threshold()}


class TrailConfig(_Section):
    # CloudTrail allows 5 trails per region (not adjustable): ephemeral envs run without one.
    enabled: bool = True
    # Outside us-east-1 only a multi-region trail records IAM/STS (global service) events.
    multi_region: bool = True
    bucket_name: str | None = None  # default iot-cloudtrail-logs-{env}-{account}
    insights: bool = True
    log_file_validation: bool = True
    # Old versions of audit log files (overwritten or deleted) are kept this long, then expire.
    noncurrent_version_expiration_days: int = Field(365, ge=1, le=36500)

    @field_validator("bucket_name")
    @classmethod
    def _bucket(cls, value: str | None) -> str | None:
        if value is not None and (problem := bucket_name_problem(value)):
            raise ValueError(f"bucket name {value!r} {problem}")
        return value


_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_TOPIC_ARN_RE = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")


class AlertsConfig(_Section):
    """The monitor step: alarms on the pipeline's health, sent to an SNS topic.

    Thresholds are what an operator tunes; the alarm definitions themselves are iotpipe's
    (steps/monitor.py). Counts are per ``period_s`` window.
    """

    enabled: bool = True
    # Subscribed to the env's own topic (iot-alerts-<env>); each address must confirm once.
    emails: list[str] = Field(default_factory=list)
    # An existing topic (a team's paging topic): alarms publish to it and iotpipe never creates,
    # changes, subscribes to or deletes it. Exclusive with emails.
    topic_arn: str | None = None
    period_s: int = Field(300, ge=60, le=86400)
    iterator_age_s: int = Field(300, ge=1, le=604800)  # the stream falling behind
    function_errors: int = Field(1, ge=1)
    function_throttles: int = Field(1, ge=1)
    failure_records: int = Field(1, ge=1)  # batches given up and written to the failure destination
    rule_failures: int = Field(1, ge=1)  # IoT rule action failures (AWS/IoT Failure)
    silence_minutes: int = Field(15, ge=1, le=1440)  # no readings for this long: a silent plant
    dynamodb_throttles: int = Field(1, ge=1)
    rejected_percent: float = Field(5.0, gt=0, le=100)  # of the readings the handler persisted
    anomaly_percent: float = Field(10.0, gt=0, le=100)  # of the readings stored

    @field_validator("emails")
    @classmethod
    def _emails(cls, emails: list[str]) -> list[str]:
        for email in emails:
            if not _EMAIL_RE.match(email) or len(email) > 254:
                raise ValueError(f"{email!r} is not an email address")
        if len(set(emails)) != len(emails):
            raise ValueError("lists an address twice")
        return emails

    @field_validator("topic_arn")
    @classmethod
    def _topic(cls, value: str | None) -> str | None:
        if value is not None and not _TOPIC_ARN_RE.match(value):
            raise ValueError(f"{value!r} is not an SNS topic ARN (arn:aws:sns:<region>:<account>:<name>)")
        return value

    @field_validator("period_s")
    @classmethod
    def _period(cls, value: int) -> int:
        if value % 60:
            raise ValueError(f"must be a multiple of 60 (CloudWatch alarm periods), not {value}")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> AlertsConfig:
        if self.topic_arn and self.emails:
            raise ValueError("set emails or topic_arn, not both: iotpipe never subscribes "
                             "anyone to a topic it does not own")
        return self


class PipelineConfig(_Section):
    """Everything `up` needs besides the account; the defaults are the seed's values."""

    env: str
    region: str = DEFAULT_REGION
    tags: dict[str, str] = Field(default_factory=dict)
    kms: KmsConfig = KmsConfig()
    storage: StorageConfig = StorageConfig()
    stream: StreamConfig = StreamConfig()
    logs: LogsConfig = LogsConfig()
    lambda_: LambdaConfig = Field(LambdaConfig(), alias="lambda")
    anomaly: dict[str, Threshold] = Field(default_factory=_default_thresholds)
    trail: TrailConfig = TrailConfig()
    # Shared state, s3://BUCKET/PREFIX (see docs/runbooks/shared-state.md); unset: local files.
    # --state and IOTPIPE_STATE override it.
    state: str | None = None

    @field_validator("state")
    @classmethod
    def _state(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from iotpipe.errors import ConfigError
        from iotpipe.s3state import parse_location

        try:
            return str(parse_location(value, origin="state"))
        except ConfigError as err:
            raise ValueError(str(err).removeprefix("state: ")) from None
    alerts: AlertsConfig = AlertsConfig()

    @field_validator("env")
    @classmethod
    def _env(cls, value: str) -> str:
        return _check_env(value)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not _REGION_RE.match(value):
            raise ValueError(f"{value!r} is not an AWS region name (e.g. ap-southeast-1)")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > 40:
            raise ValueError("at most 40 tags (AWS allows 50 and iotpipe adds its own)")
        for key, value in tags.items():
            if not 1 <= len(key) <= 128 or len(value) > 256:
                raise ValueError(f"tag {key!r}: keys are 1-128 characters, values at most 256")
            if key.lower().startswith("aws:") or key.startswith(TAG_PREFIX) or key == "managed-by":
                raise ValueError(f"tag {key!r} is reserved")
            if not re.fullmatch(r"[\w\s.:/=+\-@]*", key + value):
                raise ValueError(f"tag {key!r} holds characters AWS does not accept in tags")
        # iotpipe lists the keys in tag values of 256 characters ("<length>=<key>" each, see
        # steps.base.encode_tag_keys); with its own 4 tags that must fit AWS's 50 per resource.
        listed = sum(len(f"{len(k)}={k}") for k in tags)
        if listed > 256 * (50 - 4 - len(tags)):
            raise ValueError("tag keys too long in total: iotpipe records them on every resource "
                             "(in tags of 256 characters) and AWS allows 50 tags per resource")
        return tags

    @field_validator("anomaly")
    @classmethod
    def _metrics(cls, anomaly: dict[str, Threshold]) -> dict[str, Threshold]:
        unknown = sorted(set(anomaly) - set(METRICS))
        if unknown:
            close = difflib.get_close_matches(unknown[0], METRICS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}{hint}; known: {', '.join(METRICS)}")
        return anomaly

    @model_validator(mode="after")
    def _names_fit(self) -> PipelineConfig:
        Names.derive(self, PLACEHOLDER_ACCOUNT).check()
        return self

    def thresholds_json(self) -> str:
        """The ANOMALY_THRESHOLDS variable the handler reads."""
        import json

        merged = {m: {} for m in METRICS}
        for metric, bound in self.anomaly.items():
            merged[metric] = {k: v for k, v in (("min", bound.min), ("max", bound.max)) if v is not None}
        return json.dumps(merged, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Names:
    """Every physical name, derived from env (and account for global S3 names).

    Deterministic names are how iotpipe finds its resources without a state file.
    """

    kms_alias: str
    sensor_bucket: str
    trail_bucket: str
    access_log_bucket: str
    metrics_table: str
    stream: str
    lambda_log_group: str
    iot_log_group: str
    iot_rule_role: str
    lambda_role: str
    function: str
    dlq: str
    thing_type: str
    topic_rule: str
    device_policy: str
    trail: str

    @classmethod
    def derive(cls, config: PipelineConfig, account: str) -> Names:
        env = config.env
        return cls(
            kms_alias=f"alias/iot-manufacturing-{env}",
            sensor_bucket=config.storage.sensor_bucket_name or f"iot-sensor-data-{env}-{account}",
            trail_bucket=config.trail.bucket_name or f"iot-cloudtrail-logs-{env}-{account}",
            access_log_bucket=config.storage.access_log_bucket_name or f"iot-access-logs-{env}-{account}",
            metrics_table=f"sensor-metrics-{env}",
            stream=f"iot-sensor-stream-{env}",
            lambda_log_group=f"/aws/lambda/iot-processor-{env}",
            iot_log_group=f"/aws/iot/iot-rules-{env}",
            iot_rule_role=f"iot-rule-role-{env}",
            lambda_role=f"iot-lambda-role-{env}",
            function=f"iot-processor-{env}",
            dlq=f"iot-processor-dlq-{env}",
            thing_type=f"manufacturing-sensor-{env}",
            topic_rule=f"sensor_data_rule_{env.replace('-', '_')}",
            device_policy=f"iot-sensor-device-policy-{env}",
            trail=f"iot-audit-trail-{env}",
        )

    def check(self) -> None:
        """Raise ValueError naming the first derived name AWS would reject."""
        from iotpipe.naming import NAME_RULES

        for field, rule in NAME_RULES.items():
            name = getattr(self, field)
            if problem := rule.problem(name):
                raise ValueError(f"env: {rule.what} {name!r} {problem}")


def _toml(value: Any) -> str:
    """A value as the operator wrote it (TOML), not as Python prints it: true, not True."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


def _known_keys(path: tuple[Any, ...]) -> list[str]:
    """The keys allowed in the table at ``path`` (for "did you mean")."""
    model: Any = PipelineConfig
    parts = list(path)
    while parts:
        part = parts.pop(0)
        fields = {f.alias or name: f for name, f in model.model_fields.items()}
        found = fields.get(str(part))
        if found is None:
            return []
        annotation = found.annotation
        if getattr(annotation, "__origin__", None) is dict:
            if not parts:
                return list(METRICS) if part == "anomaly" else []
            parts.pop(0)  # the dict's key (a metric, a tag)
            annotation = annotation.__args__[1]
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return [f.alias or name for name, f in model.model_fields.items() if name != "env" or path]


def _plain(error: dict[str, Any]) -> str:
    """pydantic's wording ("Input should be ...") as a sentence about the operator's value."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    got = _toml(value)
    if kind == "greater_than_equal":
        return f"must be at least {ctx['ge']}, not {got}"
    if kind == "less_than_equal":
        return f"must be at most {ctx['le']}, not {got}"
    if kind == "int_type":
        hint = " (write the number without quotes)" if isinstance(value, str) and value.strip().isdigit() else ""
        return f"must be a whole number, not {got}{hint}"
    if kind == "float_type":
        return f"must be a number, not {got}"
    if kind == "bool_type":
        return f"must be true or false (without quotes), not {got}"
    if kind == "string_type":
        return f"must be a string in quotes, not {got}"
    if kind in ("model_type", "dict_type"):
        return f"must be a table of keys (e.g. [{'.'.join(map(str, error['loc']))}]), not {got}"
    if kind == "literal_error":
        return f"must be one of {ctx['expected'].replace(chr(39), '')}, not {got}"
    if kind == "extra_forbidden":
        loc = error["loc"]
        known = _known_keys(tuple(loc[:-1]))
        close = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        if close:
            return f"unknown key (did you mean {close[0]!r}?)"
        return f"unknown key; known keys here: {', '.join(known)}" if known else "unknown key"
    if kind == "missing":
        return "is required"
    return str(error["msg"]).removeprefix("Value error, ")


def _origin(loc: tuple[Any, ...], origins: dict[tuple[str, ...], str]) -> str:
    """Who set the value at ``loc``: the longest set path above it, else one set below it."""
    key = tuple(str(p) for p in loc)
    for n in range(len(key), 0, -1):
        if key[:n] in origins:
            return origins[key[:n]]
    below = [label for path, label in origins.items() if path[:len(key)] == key and key]
    if below:
        return below[-1]  # the last writer wins, as in the merge
    return "built-in defaults"


def _format_validation_error(err: ValidationError, origins: dict[tuple[str, ...], str]) -> str:
    """One line: the field, the problem in plain words, and where the value came from."""
    errors = err.errors()
    first = errors[0]
    loc = tuple(first["loc"])
    text = _plain(first)
    field = ".".join(str(p) for p in loc)
    if not field and ": " in text:  # a model-level check names its own field ("env: ...")
        field, text = text.split(": ", 1)
        loc = (field,)
    others = [".".join(str(p) for p in e["loc"]) or "config" for e in errors[1:]]
    more = f"; also wrong: {', '.join(others)}" if others else ""
    return f"{field or 'config'}: {text} (from {_origin(loc, origins)}){more}"


def _record_origins(data: Any, label: str, origins: dict[tuple[str, ...], str],
                    prefix: tuple[str, ...] = ()) -> None:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            _record_origins(value, label, origins, (*prefix, str(key)))
    elif prefix:
        origins[prefix] = label


def validate_env(env: str) -> str:
    """The env name as every command accepts it; raise ConfigError otherwise.

    Commands that read no config (`unlock`) still build file paths from the env, so a name
    like ``../x`` must be refused before it reaches the state directory.
    """
    try:
        return _check_env(env)
    except ValueError as err:
        raise ConfigError(f"--env: {err}") from None


def config_file_for(env: str, path: Path | None) -> Path | None:
    """The config file a command uses: ``path``, else ``config/<env>.toml`` when it exists."""
    if path is not None:
        return Path(path)
    candidate = Path("config") / f"{env}.toml"
    return candidate if candidate.is_file() else None


def parse_assignment(text: str) -> tuple[list[str], Any]:
    """Parse a `--set section.key=value` flag; the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    path = [p.strip() for p in key.split(".")]
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. lambda.memory_mb=512")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def load_config(
    env: str,
    path: Path | None = None,
    *,
    region: str | None = None,
    fallback_region: str | None = None,
    fallback_region_source: str = "the AWS environment",
    assignments: tuple[str, ...] = (),
) -> PipelineConfig:
    """Read ``config/<env>.toml`` (or ``path``), apply flags, validate; raise ConfigError.

    Precedence, highest first: ``--region``/``--set`` flags, the file, ``fallback_region``
    (the AWS environment or profile), then the seed's defaults.
    """
    source = "defaults"
    data: dict[str, Any] = {}
    origins: dict[tuple[str, ...], str] = {("env",): "--env"}
    path = config_file_for(env, path)
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{source}: config file not found") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{source}: cannot read config file: {err}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{source}: invalid TOML: {err}") from None
        _record_origins(data, source, origins)
    if "env" in data and data["env"] != env:
        raise ConfigError(f"{source}: env: file is for env {data['env']!r}, not {env!r}")
    data["env"] = env
    for assignment in assignments:
        keys, value = parse_assignment(assignment)
        if keys == ["env"] and value != env:
            # One env per command: the confirmation, the lock and the state file are --env's,
            # so a different env here would make them guard the wrong resources.
            raise ConfigError(f"--set {assignment!r}: env is set by --env ({env!r}); "
                              "run the command with --env instead")
        target = data
        for key in keys[:-1]:
            nxt = target.setdefault(key, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {assignment!r}: {key} is not a section")
            target = nxt
        target[keys[-1]] = value
        for path_set in [p for p in origins if p[:len(keys)] == tuple(keys)]:
            del origins[path_set]  # replaced as a whole
        _record_origins(value, f"--set {assignment}", origins, tuple(keys))
    if region:
        data["region"] = region
        origins[("region",)] = "--region"
    elif "region" not in data and fallback_region:
        data["region"] = fallback_region
        origins[("region",)] = fallback_region_source
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, origins)) from None

from __future__ import annotations

from pathlib import Path

import pytest

from iotpipe.config import DEFAULT_REGION, Names, PipelineConfig, load_config
from iotpipe.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent


def test_defaults_are_the_seed_values(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no config/<env>.toml here
    config = load_config("dev")
    assert config.region == DEFAULT_REGION == "ap-southeast-1"
    assert (config.lambda_.runtime, config.lambda_.memory_mb, config.lambda_.timeout_s) == ("python3.11", 256, 60)
    assert (config.lambda_.batch_size, config.lambda_.batch_window_s, config.lambda_.starting_position) == (100, 10, "LATEST")
    assert config.stream.retention_hours == 24
    assert config.logs.retention_days == 30
    assert config.storage.glacier_transition_days == 90
    assert config.anomaly["temperature"].max == 100 and config.anomaly["vibration"].max == 50


def test_fallback_region_applies_only_when_nothing_else_sets_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("dev", fallback_region="eu-west-1").region == "eu-west-1"
    assert load_config("dev", region="us-west-2", fallback_region="eu-west-1").region == "us-west-2"
    path = tmp_path / "c.toml"
    path.write_text('region = "ca-central-1"\n')
    assert load_config("dev", path, fallback_region="eu-west-1").region == "ca-central-1"
    assert load_config("dev", path, region="us-west-2").region == "us-west-2"


@pytest.mark.parametrize("env", ["dev", "prod", "local"])
def test_example_configs_load(env, monkeypatch):
    monkeypatch.chdir(REPO)
    config = load_config(env)
    assert config.env == env


def test_flags_override_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[lambda]\nmemory_mb = 512\n")
    assert load_config("dev", path).lambda_.memory_mb == 512
    assert load_config("dev", path, assignments=("lambda.memory_mb=1024",)).lambda_.memory_mb == 1024
    assert load_config("dev", path, assignments=("storage.enforce_tls=false",)).storage.enforce_tls is False


@pytest.mark.parametrize(
    ("assignment", "field"),
    [
        ("logs.retention_days=31", "logs.retention_days"),
        ("lambda.memory_mb=64", "lambda.memory_mb"),
        ("lambda.memory_mb=20000", "lambda.memory_mb"),
        ("lambda.timeout_s=901", "lambda.timeout_s"),
        ("stream.retention_hours=23", "stream.retention_hours"),
        ("stream.retention_hours=8761", "stream.retention_hours"),
        ("lambda.batch_size=0", "lambda.batch_size"),
        ("lambda.batch_window_s=301", "lambda.batch_window_s"),
        ("kms.deletion_window_days=6", "kms.deletion_window_days"),
        ('lambda.runtime="python2.7"', "lambda.runtime"),
        ('storage.sensor_bucket_name="Bad_Bucket"', "storage.sensor_bucket_name"),
        ('storage.sensor_bucket_name="192.168.1.1"', "storage.sensor_bucket_name"),
        ('region="mars-1"', "region"),
        ("anomaly.temperature.max=nan", "anomaly.temperature"),
        ("anomaly.humidity.max=3", "anomaly"),
        ('tags.managed-by="me"', "tags"),
        ("lambda.unknown=1", "lambda.unknown"),
    ],
)
def test_invalid_values_name_the_field(assignment, field):
    with pytest.raises(ConfigError) as err:
        load_config("dev", assignments=(assignment,))
    message = str(err.value)
    assert f"{field}:" in message or f"{field}." in message
    assert "\n" not in message


@pytest.mark.parametrize("env", ["Dev", "dev_1", "-dev", "dev-", "a" * 25, "", "dév"])
def test_bad_env_names_are_rejected(env):
    with pytest.raises(ConfigError, match="env"):
        load_config(env)


def test_env_mismatch_in_file(tmp_path):
    path = tmp_path / "prod.toml"
    path.write_text('env = "prod"\n')
    with pytest.raises(ConfigError, match="env"):
        load_config("dev", path)


def test_invalid_toml_and_missing_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[lambda\nmemory_mb = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config("dev", path)
    with pytest.raises(ConfigError, match="not found"):
        load_config("dev", tmp_path / "absent.toml")


def test_derived_names():
    config = PipelineConfig(env="line-7")
    names = Names.derive(config, "123456789012")
    assert names.sensor_bucket == "iot-sensor-data-line-7-123456789012"
    assert names.trail_bucket == "iot-cloudtrail-logs-line-7-123456789012"
    assert names.topic_rule == "sensor_data_rule_line_7"
    assert names.kms_alias == "alias/iot-manufacturing-line-7"
    assert names.function == "iot-processor-line-7"


def test_bucket_override_that_is_too_long_names_the_field():
    with pytest.raises(ConfigError, match="storage.sensor_bucket_name"):
        load_config("dev", assignments=(f'storage.sensor_bucket_name="{"a" * 64}"',))


def test_thresholds_json_is_what_the_handler_reads():
    config = load_config("dev", assignments=("anomaly.pressure.min=0.5",))
    import json

    assert json.loads(config.thresholds_json()) == {
        "temperature": {"max": 100.0}, "vibration": {"max": 50.0}, "pressure": {"min": 0.5}}


# -- where a bad value came from, in plain words ---------------------------------------------------
def _error(*args, **kwargs) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(*args, **kwargs)
    return str(err.value)


def test_a_set_flag_is_blamed_not_the_file(tmp_path, monkeypatch):
    """`--set lambda.memory_mb=5` used to blame config/dev.toml when that file existed."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "dev.toml").write_text("[lambda]\nmemory_mb = 512\n")
    message = _error("dev", assignments=("lambda.memory_mb=5",))
    assert message == "lambda.memory_mb: must be at least 128, not 5 (from --set lambda.memory_mb=5)"


def test_the_file_is_blamed_for_its_own_values(tmp_path):
    path = tmp_path / "prod.toml"
    path.write_text("[lambda]\ntimeout_s = 901\n")
    assert _error("prod", path, assignments=("lambda.memory_mb=512",)) == \
        f"lambda.timeout_s: must be at most 900, not 901 (from {path})"


def test_a_set_flag_replaces_what_the_file_said_below_it(tmp_path):
    path = tmp_path / "dev.toml"
    path.write_text("[anomaly.temperature]\nmax = 90\n")
    assert _error("dev", path, assignments=("anomaly.temperature={ max = 1, min = 5 }",)).endswith(
        "(from --set anomaly.temperature={ max = 1, min = 5 })")


@pytest.mark.parametrize(("kwargs", "origin"), [
    ({"region": "mars-1"}, "--region"),
    ({"fallback_region": "mars-1", "fallback_region_source": "AWS_REGION"}, "AWS_REGION"),
])
def test_region_says_whether_flag_or_environment(kwargs, origin):
    assert _error("dev", **kwargs).endswith(f"(from {origin})")


def test_env_is_blamed_on_the_flag():
    assert _error("Bad_Env").startswith("env: 'Bad_Env' is not a valid env name")
    assert _error("Bad_Env").endswith("(from --env)")


@pytest.mark.parametrize(("assignment", "expected"), [
    ("lambda.memroy_mb=256", "lambda.memroy_mb: unknown key (did you mean 'memory_mb'?)"),
    ("lamda.memory_mb=256", "lamda: unknown key (did you mean 'lambda'?)"),
    ("anomaly.temprature.max=3", "anomaly: unknown metric(s) temprature (did you mean 'temperature'?)"),
    ("kms.zzz=1", "kms.zzz: unknown key; known keys here: deletion_window_days"),
])
def test_unknown_keys_suggest_the_closest(assignment, expected):
    assert _error("dev", assignments=(assignment,)).startswith(expected)


@pytest.mark.parametrize(("assignment", "expected"), [
    ("storage.enforce_tls=yes", 'storage.enforce_tls: must be true or false (without quotes), not "yes"'),
    ('storage.enforce_tls="true"', 'storage.enforce_tls: must be true or false (without quotes), not "true"'),
    ("lambda.runtime=true", "lambda.runtime: must be one of python3.11, python3.12 or python3.13, "
                            "not true"),
    ('lambda.memory_mb="256"', 'lambda.memory_mb: must be a whole number, not "256" (write the number without quotes)'),
    ("lambda.memory_mb=256.5", "lambda.memory_mb: must be a whole number, not 256.5"),
    ("lambda=5", "lambda: must be a table of keys (e.g. [lambda]), not 5"),
])
def test_plain_sentences_and_toml_values(assignment, expected):
    message = _error("dev", assignments=(assignment,))
    assert message.startswith(expected)
    assert "Input should" not in message and "True" not in message


def test_several_bad_values_are_all_named(tmp_path):
    path = tmp_path / "dev.toml"
    path.write_text("[lambda]\nmemory_mb = 1\ntimeout_s = 0\n")
    assert _error("dev", path).endswith(f"(from {path}); also wrong: lambda.timeout_s")

"""Arbitrary config files and flags: valid, or one clear line naming the field. Never a
traceback, never an AWS call."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from iotpipe import aws as aws_module
from iotpipe.cli import main
from iotpipe.config import PipelineConfig, load_config
from iotpipe.errors import ConfigError, ExitCode, IotpipeError

SECTIONS = {
    "kms": ["deletion_window_days"],
    "storage": ["sensor_bucket_name", "glacier_transition_days", "point_in_time_recovery", "enforce_tls"],
    "stream": ["retention_hours"],
    "logs": ["retention_days"],
    "lambda": ["runtime", "memory_mb", "timeout_s", "batch_size", "batch_window_s", "starting_position",
               "max_retry_attempts", "max_record_age_s", "bisect_on_error", "parallelization_factor"],
    "trail": ["bucket_name", "insights", "log_file_validation"],
    "tags": ["team", "aws:x", "managed-by", "k" * 129],
    "anomaly.temperature": ["min", "max"],
    "anomaly.humidity": ["max"],
}

scalars = st.one_of(
    st.integers(min_value=-10**6, max_value=10**6),
    st.sampled_from([0, 1, 7, 24, 30, 31, 90, 128, 256, 300, 900, 8760, 10000, 10240]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.text(max_size=70),
    st.sampled_from(["python3.11", "python2.7", "LATEST", "TRIM_HORIZON", "my-bucket", "Bad..Bucket", ""]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=3))


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    return str(value)


@st.composite
def toml_documents(draw) -> str:
    lines = []
    if draw(st.booleans()):
        lines.append(f"region = {toml_value(draw(st.sampled_from(['us-east-1', 'eu-west-1', 'mars-1', 'US-EAST-1', ''])))}")
    if draw(st.booleans()):
        lines.append(f"{draw(st.sampled_from(['env', 'unknown', 'tags']))} = {toml_value(draw(values))}")
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), unique=True, max_size=4)):
        lines.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(SECTIONS[section] + ["bogus"]), unique=True, max_size=4)):
            lines.append(f"{json.dumps(key)} = {toml_value(draw(values))}")
    if draw(st.integers(0, 9)) == 0:  # now and then, plain garbage
        lines.append(draw(st.text(max_size=30)))
    return "\n".join(lines) + "\n"


def _check_error(message: str) -> None:
    assert "\n" not in message and message
    assert ": " in message  # "<source>: <field>: <problem>"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=toml_documents(), env=st.one_of(st.sampled_from(["dev", "prod", "line-7"]), st.text(max_size=30)))
def test_any_config_file_is_valid_or_one_clear_line(tmp_path, doc, env):
    path = tmp_path / "fuzz.toml"
    path.write_text(doc, encoding="utf-8")
    try:
        config = load_config(env, path)
    except ConfigError as err:
        _check_error(str(err))
        return
    assert isinstance(config, PipelineConfig) and config.env == env


flags = st.lists(st.tuples(st.sampled_from([f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks] + ["region", "nope.x", "", "="]),
                           st.one_of(values.map(toml_value), st.text(max_size=15))), max_size=3)


class ReachedAws(IotpipeError):
    exit_code = 99


class NoAws:
    """Stands where AwsContext would be: reaching it means validation let the input through."""

    def __init__(self, *args, **kwargs):
        raise ReachedAws("validation passed; AWS would be called now")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=flags, env=st.one_of(st.sampled_from(["dev", "qa-2"]), st.text(max_size=12)),
       region=st.one_of(st.none(), st.sampled_from(["us-east-1", "nowhere", "eu-west-1"])))
@example(pairs=[("kms.deletion_window_days", "\x1e")], env="dev", region=None)  # a record separator
@example(pairs=[("lambda.memory_mb", "1\u20282")], env="dev", region=None)  # a line separator
@example(pairs=[], env="a\nb", region=None)
def test_any_flags_are_valid_or_rejected_before_aws(monkeypatch, tmp_path, capsys, pairs, env, region):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(aws_module, "AwsContext", NoAws)
    argv = ["plan", "--env", env] + (["--region", region] if region else [])
    for key, value in pairs:
        argv += ["--set", f"{key}={value}"]
    code = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if code == 99:
        return  # valid: the run got as far as the AWS context
    assert code in (ExitCode.CONFIG, ExitCode.USAGE), (code, err)
    assert len([line for line in err.splitlines() if line.strip()]) == 1, err
    assert not list(Path(tmp_path).rglob("*.json"))  # nothing written


@pytest.mark.parametrize("doc", ["\x00\x01", "[lambda]\nmemory_mb = '256'\n", "[[lambda]]\n", "lambda = 3\n"])
def test_odd_documents(tmp_path, doc):
    path = tmp_path / "odd.toml"
    path.write_text(doc)
    with pytest.raises(ConfigError) as err:
        load_config("dev", path)
    _check_error(str(err.value))

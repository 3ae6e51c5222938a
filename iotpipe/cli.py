"""The `iotpipe` command: thin click adapters over the engine; output through `render`.

Heavy imports (boto3, pydantic, rich) happen inside the commands, so `iotpipe --help`
starts fast and never loads boto3.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from functools import wraps
from pathlib import Path
from typing import Any

import click

from iotpipe import __version__
from iotpipe.errors import AbortedError, ExitCode, IotpipeError, NotDeployedError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
# destroy --wait: IoT's 5-minute windows (deprecated thing type, detached policy) plus a margin.
WAIT_FOR_PENDING_S = 360.0

# What each command can exit with, checked against README's tables by tests/test_docs.py.
# Every command: OK, ERROR (a bug, an unexpected AWS error), USAGE, INTERRUPTED; every command
# that talks to AWS (common_options) also CONFIG, STATE, CREDENTIALS, ENDPOINT, ACCESS_DENIED.
EVERY_COMMAND = (ExitCode.OK, ExitCode.ERROR, ExitCode.USAGE, ExitCode.INTERRUPTED)
AWS_COMMAND = (ExitCode.CONFIG, ExitCode.STATE, ExitCode.CREDENTIALS, ExitCode.ENDPOINT, ExitCode.ACCESS_DENIED)
EXIT_CODES: dict[str, tuple[ExitCode, ...]] = {  # the rest, per command path
    "up": (ExitCode.OWNERSHIP, ExitCode.ABORTED, ExitCode.KEY_PENDING_DELETION, ExitCode.QUOTA,
           ExitCode.LOCKED),
    "plan": (ExitCode.CHANGES_PENDING, ExitCode.OWNERSHIP, ExitCode.QUOTA),
    "status": (ExitCode.CHANGES_PENDING,),
    "outputs": (ExitCode.CHANGES_PENDING,),
    "destroy": (ExitCode.INCOMPLETE, ExitCode.OWNERSHIP, ExitCode.ABORTED, ExitCode.LOCKED),
    "device add": (ExitCode.CHANGES_PENDING, ExitCode.CONFIG, ExitCode.STATE, ExitCode.OWNERSHIP, ExitCode.LOCKED),
    "device list": (ExitCode.CHANGES_PENDING,),
    "device remove": (ExitCode.STATE, ExitCode.OWNERSHIP, ExitCode.ABORTED, ExitCode.LOCKED),
    "device import": (ExitCode.CHANGES_PENDING, ExitCode.INCOMPLETE, ExitCode.CONFIG, ExitCode.OWNERSHIP,
                      ExitCode.LOCKED),
    "device rotate": (ExitCode.CHANGES_PENDING, ExitCode.INCOMPLETE, ExitCode.OWNERSHIP, ExitCode.LOCKED),
    "device export": (ExitCode.CONFIG, ExitCode.STATE),
    "unlock": (ExitCode.CONFIG, ExitCode.ABORTED, ExitCode.LOCKED, ExitCode.STATE, ExitCode.CREDENTIALS,
               ExitCode.ENDPOINT, ExitCode.ACCESS_DENIED),
    "state bootstrap": (ExitCode.CONFIG, ExitCode.CREDENTIALS, ExitCode.ENDPOINT, ExitCode.OWNERSHIP,
                        ExitCode.ACCESS_DENIED),
    "state migrate": (ExitCode.LOCKED,),
    "state show": (),
    "fleet up": (ExitCode.CONFIG,),
    "fleet plan": (ExitCode.CHANGES_PENDING, ExitCode.CONFIG),
    "fleet status": (ExitCode.CHANGES_PENDING, ExitCode.CONFIG),
    "fleet destroy": (ExitCode.CHANGES_PENDING, ExitCode.CONFIG, ExitCode.ABORTED),
    "demo": (ExitCode.CONFIG, ExitCode.ENDPOINT),
    "emulator": (ExitCode.CONFIG, ExitCode.ENDPOINT),
    "replay failed": (ExitCode.CHANGES_PENDING, ExitCode.INCOMPLETE),
    "replay rejected": (ExitCode.CHANGES_PENDING,),
    "health": (ExitCode.CHANGES_PENDING,),
    "logs": (),
    "readings": (ExitCode.CHANGES_PENDING,),
}


@dataclass
class Options:
    env: str
    config: Path | None
    region: str | None
    profile: str | None
    endpoint_url: str | None
    state_dir: Path
    sets: tuple[str, ...]
    state: str | None = None  # s3://BUCKET/PREFIX: the shared backend; None: local files


def common_options(func: Any) -> Any:
    """The options every command takes (see README "Options")."""

    @click.option("--env", "-e", default="dev", show_default=True, help="Environment name (part of every resource name).")
    @click.option("--config", "config_path", type=click.Path(path_type=Path, dir_okay=False),
                  help="Config file [default: config/<env>.toml when it exists, else built-in defaults].")
    @click.option("--region", help="AWS region [default: AWS_REGION, AWS_DEFAULT_REGION, the profile, the config file, ap-southeast-1].")
    @click.option("--profile", envvar="AWS_PROFILE", help="AWS profile name [env: AWS_PROFILE].")
    @click.option("--endpoint-url", callback=_check_endpoint,
                  help="AWS endpoint, e.g. an emulator [env: AWS_ENDPOINT_URL, read by boto3].")
    @click.option("--state-dir", type=click.Path(path_type=Path), envvar="IOTPIPE_STATE_DIR",
                  default=Path(".iotpipe"), show_default=True, help="Where state and lock files live [env: IOTPIPE_STATE_DIR].")
    @click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                  help="Override a config key, e.g. --set lambda.memory_mb=512 (repeatable).")
    @state_option
    @wraps(func)
    def wrapper(env, config_path, region, profile, endpoint_url, state_dir, sets, state, **kwargs):
        opts = Options(env, config_path, region, profile, endpoint_url, state_dir, tuple(sets), state)
        return func(opts, **kwargs)

    return wrapper


def state_option(func: Any) -> Any:
    return click.option(
        "--state", "state", envvar="IOTPIPE_STATE", metavar="s3://BUCKET/PREFIX",
        help="Keep state and lock in S3 (shared by every operator) [env: IOTPIPE_STATE; config key "
             "state; default: local files under --state-dir]. Device keys stay under --state-dir.")(func)


def force_option(func: Any) -> Any:
    return click.option("--force", is_flag=True,
                        help="Take over the env's lock when it is recognised as stale (its process gone, "
                             "or hours old); a live lock is never taken.")(func)


def _state_location(opts: Options) -> Any:
    """--state / IOTPIPE_STATE, checked (exit 65); None leaves it to the config key."""
    if not opts.state:
        return None
    from iotpipe.s3state import parse_location

    return parse_location(opts.state, origin="--state (or IOTPIPE_STATE)")


def _check_endpoint(ctx: click.Context | None, param: Any, value: str | None) -> str | None:
    """botocore only says "Invalid endpoint" (as an internal error) for a URL without a scheme."""
    for origin, url in (("--endpoint-url", value), ("AWS_ENDPOINT_URL", os.environ.get("AWS_ENDPOINT_URL"))):
        if url and not url.lower().startswith(("http://", "https://")):
            raise click.BadParameter(f"{url!r} has no scheme: use http://{url} or https://{url}",
                                     ctx=ctx, param=param if origin == "--endpoint-url" else None,
                                     param_hint=origin)
        if value:
            break
    return value


def json_option(func: Any) -> Any:
    return click.option("--json", "json_mode", is_flag=True, help="Print the result as JSON.")(func)


def wide_option(func: Any) -> Any:
    return click.option("--wide", is_flag=True,
                        help="Every column and whole values (ARNs, policies) even on a narrow terminal.")(func)


def lock_option(func: Any) -> Any:
    return click.option("--lock-timeout", type=click.FloatRange(min=0), default=0, show_default=True,
                        metavar="SECONDS", help="Wait this long for another run's lock instead of failing.")(func)


def parallelism_option(func: Any) -> Any:
    from iotpipe.graph import DEFAULT_PARALLELISM

    return click.option("--parallelism", type=click.IntRange(1, 32), default=DEFAULT_PARALLELISM,
                        show_default=True, metavar="N",
                        help="Resources worked on at the same time, each once what it depends on is done "
                             "(1: one at a time, in the declared order).")(func)


def _config(opts: Options) -> Any:
    """The validated config: every command calls this before it asks, locks or calls AWS."""
    from iotpipe.aws import default_region
    from iotpipe.config import load_config

    fallback = None if opts.region else default_region(opts.profile)
    origin = next((var for var in ("AWS_REGION", "AWS_DEFAULT_REGION") if os.environ.get(var)),
                  f"the region of AWS profile {opts.profile or 'default'!r}")
    return load_config(opts.env, opts.config, region=opts.region, fallback_region=fallback,
                       fallback_region_source=origin, assignments=opts.sets)


def _engine(opts: Options, config: Any, renderer: Any, lock_timeout: float = 0.0, force: bool = False,
            parallelism: int | None = None) -> Any:
    from iotpipe.aws import AwsContext
    from iotpipe.engine import Event, make_engine

    aws = AwsContext(config.region, profile=opts.profile, endpoint_url=opts.endpoint_url)
    # retries of the first call (STS, inside make_engine) are said too; the engine takes over after
    aws.on_progress = lambda progress: renderer.progress(Event("progress", "", progress=progress))
    engine = make_engine(config, aws, opts.state_dir, on_event=renderer.progress, lock_timeout=lock_timeout,
                         state=_state_location(opts), force_lock=force)
    if parallelism is not None:
        engine.parallelism = parallelism
    return engine


def _build(opts: Options, renderer: Any, lock_timeout: float = 0.0, force: bool = False,
           parallelism: int | None = None) -> Any:
    return _engine(opts, _config(opts), renderer, lock_timeout, force, parallelism)


def _target(opts: Options, engine: Any) -> Any:
    """Where this run works, for the header (after the engine exists: it needs the account)."""
    from urllib.parse import urlsplit

    from iotpipe.config import config_file_for
    from iotpipe.render import Target

    path = config_file_for(opts.env, opts.config)
    config = str(path) if path else f"built-in defaults: config/{opts.env}.toml not found"
    if opts.sets:
        config += " + --set " + " ".join(opts.sets)
    aws = engine.ctx.aws
    url = aws.endpoint_url or aws.client("sts").meta.endpoint_url  # honours AWS_ENDPOINT_URL
    host = urlsplit(url).hostname or ""
    endpoint = "AWS (default endpoints)" if host.endswith((".amazonaws.com", ".amazonaws.com.cn")) else url
    return Target(env=opts.env, account=engine.ctx.account, region=engine.ctx.region, endpoint=endpoint,
                  config_file=str(path) if path else None, config=config, state_file=str(engine.store.path))


def _defaults_guard(engine: Any, renderer: Any, target: Any, yes: bool) -> Any:
    """For `up` without the env's config file: a check of the plan (made under the lock) that
    warns what the defaults would change on a live env, and asks (or, without a terminal,
    refuses unless --yes) when that deletes data."""

    def confirm(preview: Any) -> bool:
        changes = [(r, c) for r in preview.resources if r.action == "update" for c in r.changes]
        if not changes:
            return True
        lossy = engine.lossy_changes(preview)
        renderer.defaults_warning(target, changes, bool(lossy))
        if not lossy or yes:
            return True
        if not sys.stdin.isatty():
            raise AbortedError("refusing to shorten a retention with built-in defaults without --yes "
                               "(stdin is not a terminal): pass --config with the env's file, or --yes")
        return click.confirm("Apply the built-in defaults anyway?", default=False, err=True)

    return confirm


def _local_keys(opts: Options) -> list[str]:
    from iotpipe.devices import local_key_files

    return local_key_files(opts.state_dir, opts.env)


def _renderer(json_mode: bool = False, wide: bool = False) -> Any:
    from iotpipe.render import Renderer

    return Renderer(json_mode=json_mode, wide=wide)


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", "-V", prog_name="iotpipe")
def cli() -> None:
    """Provision a manufacturing IoT sensor pipeline on AWS: IoT Core -> Kinesis -> Lambda ->
    DynamoDB + S3, one KMS key, CloudWatch Logs, least-privilege IAM and CloudTrail.

    \b
    Examples:
      iotpipe plan --env dev           what `up` would change (exit 2 when something would)
      iotpipe up --env dev             create or repair the environment
      iotpipe status --env dev         what exists, and what drifted
      iotpipe outputs --env dev --json names and ARNs for scripts
      iotpipe destroy --env dev --yes  remove everything
      iotpipe demo                     all of the above on an embedded AWS emulator
    """


@cli.command(context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
@wide_option
@lock_option
@force_option
@click.option("--yes", "-y", is_flag=True,
              help="Apply built-in defaults that shorten a live retention without asking (only asked "
                   "when no config file is used on an env that exists).")
@parallelism_option
def up(opts: Options, json_mode: bool, wide: bool, lock_timeout: float, force: bool, yes: bool,
       parallelism: int) -> None:
    """Converge the environment: kms, storage, stream, lambda, iot, trail.

    Safe to repeat: an environment already in shape costs read calls only. Without a config
    file, on an env that exists, it warns which live settings the built-in defaults would
    change, and asks first when that deletes data (a shorter stream or log retention).

    \b
    Examples:
      iotpipe up --env dev
      iotpipe up --env prod --config config/prod.toml --lock-timeout 120
      iotpipe up --env dev --set lambda.memory_mb=512 --json
    """
    renderer = _renderer(json_mode, wide)
    engine = _build(opts, renderer, lock_timeout, force, parallelism)
    target = _target(opts, engine)
    renderer.header(target)
    confirm = _defaults_guard(engine, renderer, target, yes) if target.config_file is None else None
    renderer.run_summary(engine.up(confirm))


@cli.command(context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
@click.option("--destroy", "destroy_", is_flag=True,
              help="Show what `destroy` would delete, skip and leave, without changing anything.")
@wide_option
@parallelism_option
def plan(opts: Options, json_mode: bool, wide: bool, destroy_: bool, parallelism: int) -> None:
    """Show what `up` would do, field by field, without changing anything.

    Exit 0 when nothing would change, 2 when changes are pending, another code on error.
    With --destroy: what `destroy` would do; exit 2 when it would delete something, 0 when
    nothing, 68 when a resource iotpipe does not own would stop it.

    \b
    Examples:
      iotpipe plan --env dev
      iotpipe plan --env prod --json | jq '.resources[] | select(.action != "unchanged")'
      iotpipe plan --env ci-1234 --destroy
    """
    renderer = _renderer(json_mode, wide)
    engine = _build(opts, renderer, parallelism=parallelism)
    renderer.header(_target(opts, engine))
    if destroy_:
        from iotpipe.engine import blocked_error

        preview = engine.destroy_plan()
        renderer.destroy_preview(preview, _local_keys(opts))
        if (blocked := blocked_error(preview)) is not None:
            raise blocked
        if any(r.action in ("delete", "scheduled") for r in preview.resources):
            raise SystemExit(ExitCode.CHANGES_PENDING)
        return
    result = engine.plan()
    renderer.plan(result)
    if not result.in_sync:
        raise SystemExit(ExitCode.CHANGES_PENDING)


@cli.command(context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
@wide_option
@parallelism_option
def status(opts: Options, json_mode: bool, wide: bool, parallelism: int) -> None:
    """List every resource of the env as ok, missing, drifted (with the fields) or foreign.

    Exit 0 when everything is ok, 2 when anything is missing, drifted or foreign.

    \b
    Examples:
      iotpipe status --env dev
      iotpipe status --env dev --json
    """
    renderer = _renderer(json_mode, wide)
    engine = _build(opts, renderer, parallelism=parallelism)
    renderer.header(_target(opts, engine))
    result = engine.status()
    from iotpipe.certificates import local_expiring

    renderer.status(result, certificates=local_expiring(opts.state_dir, opts.env))
    if not result.in_sync:
        raise SystemExit(ExitCode.CHANGES_PENDING)


@cli.command(context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
def outputs(opts: Options, json_mode: bool) -> None:
    """Print the pipeline's names and ARNs (the seed's outputs and more), read live from AWS.

    \b
    Examples:
      iotpipe outputs --env dev
      iotpipe outputs --env dev --json | jq -r .kinesis_stream_name
    """
    renderer = _renderer(json_mode)
    result = _build(opts, renderer).outputs()
    missing = [r.logical_id for r in result.resources if r.health == "missing"]
    if not result.outputs:
        raise NotDeployedError(f"env {opts.env!r} is not deployed in {result.region} (account {result.account}): "
                               f"run `iotpipe up --env {opts.env}`")
    renderer.outputs(result.outputs)
    if missing:
        renderer.warning(f"env {opts.env!r} is not fully deployed (missing: {', '.join(missing)}): "
                         f"run `iotpipe up --env {opts.env}`")
        raise SystemExit(ExitCode.CHANGES_PENDING)


@cli.command(context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
@wide_option
@lock_option
@force_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required when stdin is not a terminal).")
@click.option("--wait", is_flag=True, help="Wait (up to 6 minutes) for AWS's 5-minute rules on deprecated IoT thing types and detached IoT policies instead of finishing on the next run.")
@parallelism_option
def destroy(opts: Options, json_mode: bool, wide: bool, lock_timeout: float, force: bool, yes: bool,
            wait: bool, parallelism: int) -> None:
    """Remove every resource of the env, in reverse order; a second run is a quiet success.

    It first reads everything and shows what would go (account, region, endpoint, config,
    every resource), then asks. Buckets are emptied (every version and delete marker), the
    KMS key is scheduled for deletion (kms.deletion_window_days), resources iotpipe does not
    own are left alone, and local device key files are kept. A thing of the env's type that
    is not iotpipe's stops destroy (exit 68) before anything is deleted. AWS deletes an IoT
    thing type only 5 minutes after it was deprecated, and may see the device policy attached
    for up to 5 minutes after it was detached: destroy deletes everything else, reports those
    as pending (exit 3), and the next run finishes them, or use --wait.

    \b
    Examples:
      iotpipe plan --env dev --destroy       what destroy would do, without asking
      iotpipe destroy --env dev
      iotpipe destroy --env ci-1234 --yes --wait
    """
    renderer = _renderer(json_mode, wide)
    engine = _build(opts, renderer, lock_timeout, force, parallelism)  # config and state are checked first
    target = _target(opts, engine)
    renderer.header(target)

    def confirm(preview: Any) -> bool:
        if yes:
            return True
        renderer.destroy_preview(preview, _local_keys(opts), to_stderr=json_mode)
        if not sys.stdin.isatty():  # even with nothing to delete: a script needs --yes every time
            raise AbortedError("refusing to destroy without --yes: stdin is not a terminal "
                               "(what would go is listed above; nothing was deleted)")
        if not any(r.action in ("delete", "scheduled") for r in preview.resources):
            return True  # nothing to ask about
        return click.confirm(f"Delete these resources of env {target.env!r} (account {target.account}, "
                             f"{target.region})?", default=False, err=json_mode)

    result = engine.destroy(confirm)
    aws = engine.ctx.aws
    waited = 0.0  # counted in what was slept, so an injected sleep still ends the wait
    while wait and any(r.action == "pending" for r in result.resources) and waited < WAIT_FOR_PENDING_S:
        renderer.wait_line(f"waiting for AWS to allow deleting what is pending (IoT's 5-minute rules): "
                           f"{waited:.0f} s of {WAIT_FOR_PENDING_S:.0f} s")
        aws.sleep(10)  # no AWS waiter exists for IoT's 5-minute windows (thing type, detached policy)
        waited += 10
        result = engine.destroy()
    renderer.run_summary(result, kept_keys=_local_keys(opts))
    if any(r.action == "pending" for r in result.resources):
        raise SystemExit(ExitCode.INCOMPLETE)


@cli.group(context_settings=CONTEXT_SETTINGS)
def device() -> None:
    """Register, list and remove sensors: IoT things of the env's type, each with its own
    certificate and private key (kept in <state-dir>/devices/<env>/<device>/); import a plant's
    file of them, rotate their certificates, export what an installer flashes.

    \b
    Examples:
      iotpipe device add press-07 --env dev --location hall-2 --facility plant-a
      iotpipe device import plant-a.csv --env dev
      iotpipe device list --env dev --json
      iotpipe device rotate --expiring-within 30d --env dev
      iotpipe device export press-07 --env dev --out press-07.zip
      iotpipe device remove press-07 --env dev --yes
    """


@device.command("add", context_settings=CONTEXT_SETTINGS)
@click.argument("device_id")
@common_options
@json_option
@lock_option
@click.option("--location", help="Thing attribute location (searchable).")
@click.option("--facility", help="Thing attribute facility (searchable).")
@click.option("--equipment-type", help="Thing attribute equipment_type (searchable).")
@click.option("--rotate", is_flag=True, help="Issue a new certificate and key, then retire the old certificate(s).")
def device_add(opts: Options, device_id: str, json_mode: bool, lock_timeout: float, location: str | None,
               facility: str | None, equipment_type: str | None, rotate: bool) -> None:
    """Register DEVICE_ID: a thing of the env's type, an active certificate with the device
    policy, and its private key written once, mode 0600, next to the certificate.

    Safe to repeat: a registered device whose key is here is left unchanged; a run that died
    halfway is finished without a second certificate. AWS hands out a private key only once:
    when it is lost, --rotate issues a new certificate and retires the old one. The key is
    never printed. Devices also need the Amazon root CA:
    https://www.amazontrust.com/repository/AmazonRootCA1.pem

    \b
    Examples:
      iotpipe device add press-07 --env dev --location hall-2 --equipment-type press
      iotpipe device add press-07 --env dev --rotate
    """
    from iotpipe.devices import add_device, validate_attributes, validate_device_id

    attributes = {"location": location, "facility": facility, "equipment_type": equipment_type}
    validate_device_id(device_id)  # before any AWS call (building the engine asks STS)
    validate_attributes(attributes)
    renderer = _renderer(json_mode)
    engine = _build(opts, renderer)
    result = add_device(engine, device_id, attributes=attributes, rotate=rotate, lock_timeout=lock_timeout)
    renderer.device_added(result)


@device.command("list", context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
def device_list(opts: Options, json_mode: bool) -> None:
    """List the env's devices: attributes, certificates and their status, and whether this
    state directory holds a private key for them (never the key itself).

    \b
    Example:
      iotpipe device list --env dev --json | jq -r '.devices[].device_id'
    """
    from iotpipe.devices import list_devices

    renderer = _renderer(json_mode)
    engine = _build(opts, renderer)
    renderer.device_list(opts.env, list_devices(engine))


@device.command("remove", context_settings=CONTEXT_SETTINGS)
@click.argument("device_id")
@common_options
@json_option
@lock_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation (required when stdin is not a terminal).")
def device_remove(opts: Options, device_id: str, json_mode: bool, lock_timeout: float, yes: bool) -> None:
    """Remove DEVICE_ID: its certificates (detached, deactivated, deleted), the thing, and its
    local key directory. An unknown id is a quiet success ("no such device"); a thing that is
    not this env's iotpipe device is left alone (exit 68).

    \b
    Example:
      iotpipe device remove press-07 --env dev --yes
    """
    from iotpipe.devices import remove_device, validate_device_id

    validate_device_id(device_id)
    config = _config(opts)  # a bad --env/--set is refused before the question
    if not yes:
        if not sys.stdin.isatty():
            raise AbortedError("refusing to remove a device without --yes: stdin is not a terminal")
        if not click.confirm(f"Remove device {device_id!r} of env {opts.env!r} and its certificates?",
                             default=False):
            raise AbortedError("device remove cancelled")
    renderer = _renderer(json_mode)
    engine = _engine(opts, config, renderer)
    renderer.device_removed(remove_device(engine, device_id, lock_timeout=lock_timeout))


@device.command("import", context_settings=CONTEXT_SETTINGS)
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@common_options
@json_option
@lock_option
@click.option("--dry-run", is_flag=True, help="Check the file and say what would be added, updated or fail; write nothing.")
@click.option("--skip-invalid", is_flag=True,
              help="Report bad lines (with their numbers) and import the valid rows instead of refusing the file.")
def device_import(opts: Options, file: Path, json_mode: bool, lock_timeout: float, dry_run: bool,
                  skip_invalid: bool) -> None:
    """Register every device of FILE (CSV with a header, or JSON lines) with the guarantees of
    `device add`: columns/keys id, location, facility, equipment_type.

    Every row is checked first: a bad file (bad id or attribute, duplicate id, empty, too
    large) is refused with the line number of every problem and nothing is created
    (--skip-invalid: the bad lines are reported first and the valid rows imported). Devices
    are registered concurrently, each IoT API paced to AWS's documented rate. Safe to repeat:
    a run killed halfway is finished by the next, with one thing and one active certificate
    per device. Exit 3 when some devices failed or lines were skipped (each listed with its
    line and reason).

    \b
    Examples:
      iotpipe device import plant-a.csv --env dev --dry-run
      iotpipe device import plant-a.jsonl --env dev --json
    """
    from iotpipe.device_import import import_devices, read_file

    rows, skipped = read_file(file, skip_invalid=skip_invalid)  # before any AWS call (STS included)
    renderer = _renderer(json_mode)
    renderer.skipped_lines(str(file), skipped)
    engine = _build(opts, renderer)
    verb = "checking" if dry_run else "importing"
    result = import_devices(engine, rows, file=str(file), dry_run=dry_run, lock_timeout=lock_timeout,
                            on_progress=lambda done, total, _o: renderer.bulk_progress(verb, done, total))
    result.skipped_lines = skipped
    renderer.bulk_summary(result, "import")
    if result.failed or skipped:
        raise SystemExit(ExitCode.INCOMPLETE)


@device.command("rotate", context_settings=CONTEXT_SETTINGS)
@click.argument("device_ids", nargs=-1)
@common_options
@json_option
@lock_option
@click.option("--all", "all_devices", is_flag=True, help="Rotate every device of the env.")
@click.option("--expiring-within", metavar="DURATION",
              help="Rotate the devices with a certificate that expires within DURATION (30d, 12h, 2w).")
def device_rotate(opts: Options, device_ids: tuple[str, ...], json_mode: bool, lock_timeout: float,
                  all_devices: bool, expiring_within: str | None) -> None:
    """Issue new certificates for DEVICE_IDS, --all, or --expiring-within DURATION, in the
    order of `device add --rotate`: the new certificate and key made, recorded and attached
    first, the old certificate detached, deactivated and deleted after. Concurrent and paced
    like `device import`; exit 3 when some devices failed.

    \b
    Examples:
      iotpipe device rotate --expiring-within 30d --env prod
      iotpipe device rotate press-07 press-08 --env dev
    """
    from iotpipe.certificates import parse_within, rotate_devices
    from iotpipe.devices import validate_device_id

    within = parse_within(expiring_within) if expiring_within is not None else None
    if sum((bool(device_ids), all_devices, within is not None)) != 1:
        raise click.UsageError("give device ids, --all or --expiring-within (exactly one of them)")
    for device_id in device_ids:
        validate_device_id(device_id)
    renderer = _renderer(json_mode)
    engine = _build(opts, renderer)
    result = rotate_devices(engine, ids=device_ids, all_devices=all_devices, expiring_within=within,
                            lock_timeout=lock_timeout,
                            on_progress=lambda done, total, _o: renderer.bulk_progress("rotating", done, total))
    renderer.bulk_summary(result, "rotate")
    if result.failed:
        raise SystemExit(ExitCode.INCOMPLETE)


@device.command("export", context_settings=CONTEXT_SETTINGS)
@click.argument("device_ids", nargs=-1, required=True)
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="A directory (one folder per device) or a FILE.zip; never overwritten.")
@common_options
@json_option
def device_export(opts: Options, device_ids: tuple[str, ...], out: Path, json_mode: bool) -> None:
    """Bundle what an installer flashes onto each sensor: certificate, private key (mode 0600
    kept, also inside a zip), and device.json with endpoint, client id, topic, port and where
    to get the Amazon root CA. Only devices whose key is here and whose certificate is active.

    \b
    Examples:
      iotpipe device export press-07 press-08 --env dev --out flash/
      iotpipe device export press-07 --env dev --out press-07.zip
    """
    from iotpipe.device_export import export_devices
    from iotpipe.devices import validate_device_id

    for device_id in device_ids:
        validate_device_id(device_id)
    renderer = _renderer(json_mode)
    engine = _build(opts, renderer)
    renderer.device_exported(export_devices(engine, device_ids, out))


def _instant(ctx: click.Context | None, param: Any, value: str | None) -> Any:
    """--since/--until: an age or an ISO-8601 time, refused in one line (exit 64) otherwise."""
    if value is None:
        return None
    from datetime import UTC, datetime

    from iotpipe.ops.timespec import UsageError, parse_time

    try:
        return parse_time(value, datetime.now(UTC))
    except UsageError as err:  # click names the option itself
        raise click.BadParameter(f"{value!r}: {str(err).split(': ', 1)[1]}", ctx=ctx, param=param) from None


@cli.group(context_settings=CONTEXT_SETTINGS)
def replay() -> None:
    """Get readings the pipeline could not store into it after all: batches Lambda gave up on
    (`failed`), records the handler quarantined as invalid (`rejected`).

    \b
    Examples:
      iotpipe replay failed --env dev --dry-run
      iotpipe replay failed --env dev --since 6h --json
      iotpipe replay rejected --env dev --reason invalid_temperature
    """


@replay.command("failed", context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
@click.option("--since", callback=_instant, metavar="TIME",
              help="Only batches that failed at or after TIME: an age (90m, 6h, 2d) or ISO-8601.")
@click.option("--until", callback=_instant, metavar="TIME", help="Only batches that failed before TIME.")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; write nothing.")
def replay_failed(opts: Options, json_mode: bool, since: Any, until: Any, dry_run: bool) -> None:
    """Re-process the batches the event source mapping gave up on, in this process, with the
    handler's own code configured as the env's function; each failure record is removed only
    once every reading in it is stored. Safe to interrupt and run again: no reading is stored
    twice, none is lost. Batches recorded as metadata only (the retired SQS queue) are read
    back from the stream; ranges past its retention are named.

    Exit 0 when everything is stored, 3 when some batch still fails or expired (kept for the
    next run), 2 when the env is not deployed.

    \b
    Examples:
      iotpipe replay failed --env dev --dry-run
      iotpipe replay failed --env dev --since 2026-12-01T00:00Z --until 6h --json
    """
    from iotpipe.ops.replay import replay_failed as run

    renderer = _renderer(json_mode)
    engine = _build(opts, renderer)
    renderer.header(_target(opts, engine))
    report = run(engine.ctx, since=since, until=until, dry_run=dry_run)
    renderer.replay_report(report)
    if not report.complete:
        raise SystemExit(ExitCode.INCOMPLETE)


@replay.command("rejected", context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
@click.option("--reason", metavar="CODE", help="Only records quarantined for this reason code, e.g. invalid_temperature.")
@click.option("--since", callback=_instant, metavar="TIME",
              help="Only quarantine objects written at or after TIME: an age (90m, 6h, 2d) or ISO-8601.")
@click.option("--dry-run", is_flag=True, help="Say what would be replayed; write nothing.")
def replay_rejected(opts: Options, json_mode: bool, reason: str | None, since: Any, dry_run: bool) -> None:
    """Re-validate quarantined records (rejected/) with the handler's current rules and put the
    valid ones back into the stream; the quarantine objects are kept and tagged with what was
    replayed, so a second run skips it. What is still invalid is listed with its reason.

    \b
    Examples:
      iotpipe replay rejected --env dev --dry-run
      iotpipe replay rejected --env dev --reason invalid_temperature --since 2d
    """
    from iotpipe.ops.replay import replay_rejected as run

    renderer = _renderer(json_mode)
    engine = _build(opts, renderer)
    renderer.header(_target(opts, engine))
    renderer.replay_report(run(engine.ctx, reason=reason, since=since, dry_run=dry_run))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--env", "-e", default="dev", show_default=True, help="Environment name.")
@click.option("--state-dir", type=click.Path(path_type=Path, file_okay=False), envvar="IOTPIPE_STATE_DIR",
              default=Path(".iotpipe"), show_default=True, help="Where state and lock files live.")
@state_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Remove the lock even though its holder still runs on this host.")
def unlock(env: str, state_dir: Path, state: str | None, yes: bool, force: bool) -> None:
    """Remove an env's lock left behind by a run that is gone (on another host, say).

    A lock left by a dead process on this host is taken over automatically (local state); use
    this for the rest, after making sure the holder is not running. A lock whose process still
    runs on this host is kept unless --force. It shows the holder and removes exactly that lock:
    if it changed hands meanwhile, nothing is removed. With --state s3://... the AWS settings
    come from the environment (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL).

    \b
    Examples:
      iotpipe unlock --env dev
      iotpipe unlock --env plant-a --state s3://acme-iotpipe-state/plants
    """
    from iotpipe.config import validate_env
    from iotpipe.errors import LockHeldError
    from iotpipe.state import StateStore, describe_lock, holder_is_alive

    validate_env(env)  # the env names a file under the state directory
    renderer = _renderer()
    location = _state_location(Options(env, None, None, None, None, state_dir, (), state))
    if location is not None:
        from iotpipe.aws import AwsContext, default_region
        from iotpipe.s3state import open_backend

        aws = AwsContext(default_region(None) or "us-east-1")
        store = StateStore(state_dir, env, region="", backend=open_backend(location, env, aws))
    else:
        store = StateStore(state_dir, env, region="")
    holder = store.read_lock()
    if holder is None:
        renderer.message(f"env {env!r} is not locked")
        return
    if holder_is_alive(holder) and not force:
        raise LockHeldError(f"env {env!r} is locked by {describe_lock(holder)}, which is still running "
                            "on this host: wait for it to finish, or pass --force if that process is "
                            "not an iotpipe run")
    renderer.lock_holder(f"env {env!r} is locked by {describe_lock(holder)} ({store.lock_path})")
    if not yes:
        if not sys.stdin.isatty():
            raise AbortedError("refusing to unlock without --yes: stdin is not a terminal")
        if not click.confirm(f"Remove the lock of {holder.get('Who')} (pid {holder.get('Pid')} on "
                             f"{holder.get('Host')})? Only do this if that run is no longer running",
                             default=False):
            raise AbortedError("unlock cancelled")
    store.force_unlock(holder)
    renderer.message(f"lock of env {env!r} removed (it was held by {describe_lock(holder)})")


@cli.group(context_settings=CONTEXT_SETTINGS)
def state() -> None:
    """Shared state in S3: create the bucket, move an env's local state there, show what it holds.

    \b
    Examples:
      iotpipe state bootstrap s3://acme-iotpipe-state/plants --region eu-west-1
      iotpipe state migrate --env plant-a --to s3://acme-iotpipe-state/plants
      iotpipe state show --env plant-a --state s3://acme-iotpipe-state/plants
    """


@state.command("bootstrap", context_settings=CONTEXT_SETTINGS)
@click.argument("location", metavar="s3://BUCKET/PREFIX")
@click.option("--region", help="AWS region [default: AWS_REGION, AWS_DEFAULT_REGION, the profile, the config file, ap-southeast-1].")
@click.option("--profile", envvar="AWS_PROFILE", help="AWS profile name [env: AWS_PROFILE].")
@click.option("--enforce-tls/--no-enforce-tls", default=True, show_default=True,
              help="The TLS-only bucket policy (--no-enforce-tls only on the emulator, which denies "
                   "every object call with it).")
@json_option
def state_bootstrap(location: str, region: str | None, profile: str | None, enforce_tls: bool,
                    json_mode: bool) -> None:
    """Create the state bucket, or bring it in line: versioning, default encryption, public
    access block, ACLs off (BucketOwnerEnforced), TLS-only policy, iotpipe's tags. Safe to
    repeat; a bucket iotpipe did not create is left alone (exit 68). The endpoint comes from
    AWS_ENDPOINT_URL, as for boto3 and the AWS CLI.

    \b
    Example:
      iotpipe state bootstrap s3://acme-iotpipe-state/plants --region eu-west-1
    """
    from iotpipe.aws import AwsContext, default_region
    from iotpipe.config import DEFAULT_REGION
    from iotpipe.s3state import parse_location
    from iotpipe.statecmd import bootstrap

    where = parse_location(location, origin="LOCATION")
    aws = AwsContext(region or default_region(profile) or DEFAULT_REGION, profile=profile)
    _renderer(json_mode).state_bootstrap(bootstrap(aws, where, enforce_tls=enforce_tls))


@state.command("migrate", context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
@lock_option
@click.option("--to", "to", required=True, metavar="s3://BUCKET/PREFIX", help="The S3 state to move the env's local state to.")
def state_migrate(opts: Options, json_mode: bool, lock_timeout: float, to: str) -> None:
    """Move the env's local state file (under --state-dir) to S3, under both locks; the local
    file is kept as <env>.json.migrated. An env that already has state there is never
    overwritten. Device private keys never go to S3: they stay under --state-dir.

    \b
    Example:
      iotpipe state migrate --env plant-a --to s3://acme-iotpipe-state/plants
    """
    from iotpipe.aws import AwsContext
    from iotpipe.state import StateStore
    from iotpipe.statecmd import migrate, s3_store

    config = _config(opts)
    aws = AwsContext(config.region, profile=opts.profile, endpoint_url=opts.endpoint_url)
    local = StateStore(opts.state_dir, opts.env, config.region)
    target = s3_store(opts.state_dir, opts.env, config.region, aws, to)
    _renderer(json_mode).state_migrated(migrate(local, target, timeout=lock_timeout))


@state.command("show", context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
def state_show(opts: Options, json_mode: bool) -> None:
    """Print what the state backend holds for the env: its records, its lock (and, in S3, the
    other envs under the prefix). Reads only.

    \b
    Example:
      iotpipe state show --env plant-a --state s3://acme-iotpipe-state/plants --json
    """
    from iotpipe.aws import AwsContext
    from iotpipe.engine import open_store
    from iotpipe.statecmd import show

    config = _config(opts)
    aws = AwsContext(config.region, profile=opts.profile, endpoint_url=opts.endpoint_url)
    store = open_store(opts.state_dir, opts.env, config.region, aws, _state_location(opts) or config.state)
    _renderer(json_mode).state_show(show(store))


@cli.group(context_settings=CONTEXT_SETTINGS)
def fleet() -> None:
    """Run up, plan, status or destroy over every env of a fleet file (one per plant, say),
    side by side, with one summary table and one exit code: 0 all in sync, 2 changes or drift
    somewhere, 1 a failure somewhere. A failing env does not stop the others.

    \b
    Examples:
      iotpipe fleet plan plants.toml
      iotpipe fleet up plants.toml --json
      iotpipe fleet destroy plants.toml
    """


def _fleet_command(command: str, doc: str) -> Any:
    @fleet.command(command, context_settings=CONTEXT_SETTINGS, help=doc)
    @click.argument("fleet_file", metavar="FLEET.toml", type=click.Path(path_type=Path, dir_okay=False))
    @click.option("--state-dir", type=click.Path(path_type=Path), envvar="IOTPIPE_STATE_DIR",
                  default=Path(".iotpipe"), show_default=True,
                  help="Local state (envs without a state key) and device keys [env: IOTPIPE_STATE_DIR].")
    @click.option("--concurrency", type=click.IntRange(1, 32), default=None,
                  help="Envs run at the same time [default: the fleet file's concurrency, else 4].")
    @json_option
    @parallelism_option
    def run(fleet_file: Path, state_dir: Path, concurrency: int | None, json_mode: bool, parallelism: int,
            **extra: Any) -> None:
        from iotpipe.fleet import load_fleet, run_fleet

        plan = load_fleet(fleet_file)
        if concurrency:
            plan.concurrency = concurrency
        renderer = _renderer(json_mode)
        if command == "destroy":
            renderer.fleet_preview(plan.envs)
            if not extra.get("yes"):
                if not sys.stdin.isatty():
                    raise AbortedError("refusing to destroy a fleet without --yes: stdin is not a terminal "
                                       "(the envs are listed above; nothing was deleted)")
                names = ", ".join(e.name for e in plan.envs)
                if not click.confirm(f"Destroy every resource of these {len(plan.envs)} envs ({names})?",
                                     default=False, err=True):
                    raise AbortedError("fleet destroy cancelled")
        result = run_fleet(plan, command, state_dir=state_dir, lock_timeout=extra.get("lock_timeout", 0.0),
                           parallelism=parallelism, on_done=None if json_mode else renderer.fleet_env_done,
                           on_activity=renderer.fleet_activity if renderer.live else None, processes=True)
        renderer.fleet_summary(result)
        if result.exit_code:
            raise SystemExit(result.exit_code)

    if command in ("up", "destroy"):
        run = lock_option(run)
    if command == "destroy":
        run = click.option("--yes", "-y", is_flag=True,
                           help="Do not ask for confirmation (required when stdin is not a terminal).")(run)
    return run


_fleet_command("up", "Converge every env of FLEET.toml (exit 0 when all converged, 1 when one failed).")
_fleet_command("plan", "What `up` would change in every env of FLEET.toml (exit 2 when anything would).")
_fleet_command("status", "Every env's resources ok or not, one row per env (exit 2 on drift anywhere).")
_fleet_command("destroy", "Remove every env of FLEET.toml, after one question that names each env.")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--readings", type=click.IntRange(1, 100000), default=1000, show_default=True,
              help="How many sensor readings to push through the pipeline.")
@click.option("--keep", is_flag=True,
              help="Leave the emulator running with the env up (prints its endpoint and how to stop it).")
@json_option
def demo(readings: int, keep: bool, json_mode: bool) -> None:
    """Run the whole job on an embedded AWS emulator: no account needed.

    Starts moto on 127.0.0.1, runs `up` for env "local", shows `status`, pushes sensor
    readings (and a few invalid ones) through Kinesis and the real handler, counts what
    landed in DynamoDB and S3, shows `health`, then `destroy`s and stops the emulator. One
    batch meets a simulated DynamoDB outage and goes to the failure destination, as on AWS;
    `replay failed` then stores it, so that every reading sent ends up in DynamoDB. AWS
    credentials, AWS_PROFILE and endpoints from your environment are ignored: nothing leaves
    this machine.
    Needs `pip install 'iotpipe[local]'`.

    \b
    Examples:
      iotpipe demo --readings 5000
      iotpipe demo --keep              then explore env "local" with the commands it prints
    """
    import shutil
    import tempfile

    from iotpipe.local.demo import (
        DEMO_ENV,
        DEMO_REGION,
        DEMO_SETS,
        DynamoDBOutage,
        demo_health,
        demo_replay,
        emulator_environment,
        exercise,
    )
    from iotpipe.local.emulator import emulator_process

    for var in [v for v in os.environ if v.startswith("AWS_")]:
        del os.environ[var]  # a profile, a session token or an endpoint must not reach the demo
    os.environ.update(emulator_environment())
    renderer = _renderer(json_mode)
    results: dict[str, Any] = {}
    state_dir = Path(tempfile.mkdtemp(prefix="iotpipe-demo-"))
    try:
        renderer.demo_phase("emulator", "starting the embedded AWS emulator (moto) on 127.0.0.1")
        with emulator_process(keep=keep) as emu:
            renderer.message(f"  listening at {emu.url} (pid {emu.pid}); AWS credentials and "
                             "profiles from your environment are ignored")
            opts = Options(DEMO_ENV, None, DEMO_REGION, None, emu.url, state_dir, DEMO_SETS)
            engine = _build(opts, renderer)

            def phase(name: str, run: Any, show: Any) -> Any:
                results[name] = run()
                if not json_mode:  # in JSON mode everything is printed once, at the end
                    show(results[name])
                return results[name]

            renderer.demo_phase("provisioning", f"`iotpipe up --env {DEMO_ENV}` on the emulator, then `status`")
            phase("up", engine.up, renderer.run_summary)
            phase("status", engine.status, renderer.status)
            renderer.demo_phase("publishing", f"{readings:,} readings (+ a few invalid ones) to Kinesis, "
                                "then through the real Lambda handler, in this process; one batch meets a "
                                "simulated DynamoDB outage")
            pipeline = phase("pipeline", lambda: exercise(engine.ctx, readings, progress=renderer.demo_progress,
                                                          outage=DynamoDBOutage()), lambda _r: None)
            renderer.demo_phase("results", "what landed in DynamoDB and S3, and "
                                f"`iotpipe health --env {DEMO_ENV}` (the metrics Lambda and Kinesis would publish)")
            if not json_mode:
                renderer.demo_report(pipeline)
            health = phase("health", lambda: demo_health(engine.ctx), renderer.health)
            if not json_mode:
                renderer.demo_health_note(health, pipeline)
            renderer.demo_phase("replay", f"`iotpipe replay failed --env {DEMO_ENV}`: the given-up batch, "
                                "re-processed in this process with the handler's own code")
            phase("replay", lambda: demo_replay(engine.ctx, pipeline), renderer.demo_replay)
            if keep:
                renderer.demo_phase("teardown", "skipped (--keep)")
            else:
                renderer.demo_phase("teardown", f"`iotpipe destroy --env {DEMO_ENV}`, then the emulator stops")
                phase("destroy", engine.destroy, renderer.run_summary)
            if keep:
                results["emulator"] = {"url": emu.url, "pid": emu.pid, "state_dir": str(state_dir)}
    finally:
        if not keep:
            shutil.rmtree(state_dir, ignore_errors=True)
    if json_mode:
        renderer.json({k: v.as_dict() if hasattr(v, "as_dict") else getattr(v, "__dict__", v)
                       for k, v in results.items()})
    else:
        renderer.demo_next(results.get("emulator"))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--port", type=click.IntRange(0, 65535), default=5000, show_default=True,
              help="TCP port on 127.0.0.1 to listen on (0: any free port, printed at start).")
def emulator(port: int) -> None:
    """Run the embedded AWS emulator (moto) on 127.0.0.1 in the foreground until Ctrl-C.

    Its state lives in memory and is gone when it stops. Any access key works; boto3 and the
    AWS CLI still need one, and a region.

    \b
    Example (two terminals):
      iotpipe emulator --port 5000
      export AWS_ENDPOINT_URL=http://127.0.0.1:5000 AWS_DEFAULT_REGION=us-east-1 \\
             AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test
      iotpipe up --env local --config config/local.toml
      aws dynamodb list-tables
    """
    import threading

    from iotpipe.local.emulator import embedded_emulator

    renderer = _renderer()
    try:
        with embedded_emulator(port) as url:
            renderer.message(f"AWS emulator listening at {url} (Ctrl-C to stop; state is in memory)")
            threading.Event().wait()
    except KeyboardInterrupt:  # the way to stop it: a clean exit, not "interrupted"
        renderer.message("emulator stopped")


@cli.command(context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
@click.option("--since", default="1h", show_default=True, metavar="T",
              help="Start of the window: a duration back from now (10m, 1h, 2d) or an ISO 8601 time.")
def health(opts: Options, json_mode: bool, since: str) -> None:
    """How the pipeline is doing: readings per stage (published, in the stream, processed,
    stored, rejected, failed), iterator age, errors, failure records waiting, alarms in ALARM,
    the last reading stored; then a verdict.

    Exit 0 when healthy, 2 when degraded (the problems are listed). Reads only.

    \b
    Examples:
      iotpipe health --env prod
      iotpipe health --env prod --since 24h --json | jq '{stored, rejected, failed}'
    """
    from datetime import UTC, datetime

    from iotpipe.ops.health import check_health
    from iotpipe.ops.timespec import parse_window

    now = datetime.now(UTC)
    start, end = parse_window(since, None, now, default_since="1h")  # before any AWS call
    renderer = _renderer(json_mode)
    engine = _build(opts, renderer)
    if not json_mode:
        renderer.header(_target(opts, engine))
    report = check_health(engine.ctx, start=start, end=end)
    renderer.health(report)
    if not report.healthy:
        raise SystemExit(ExitCode.CHANGES_PENDING)


@cli.command(context_settings=CONTEXT_SETTINGS)
@common_options
@json_option
@click.option("--since", default="10m", show_default=True, metavar="T",
              help="Start: a duration back from now (10m, 1h, 2d) or an ISO 8601 time.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events until Ctrl-C.")
@click.option("--filter", "kind", type=click.Choice(["anomaly", "error", "summary"]),
              help="Only anomalies, errors, or batch summaries.")
def logs(opts: Options, json_mode: bool, since: str, follow: bool, kind: str | None) -> None:
    """The processor's log events (its JSON lines), oldest first; with --json one JSON object
    per line.

    \b
    Examples:
      iotpipe logs --env prod --filter anomaly --since 1h
      iotpipe logs --env prod --follow --filter error
    """
    from datetime import UTC, datetime

    from iotpipe.ops.logs import read_logs
    from iotpipe.ops.timespec import parse_window

    now = datetime.now(UTC)
    start, end = parse_window(since, None, now, default_since="10m")
    renderer = _renderer(json_mode)
    engine = _build(opts, renderer)
    try:
        for event in read_logs(engine.ctx, start=start, end=end, kind=kind, follow=follow):
            renderer.log_event(event)
    except KeyboardInterrupt:
        if not follow:
            raise
        # Ctrl-C is how --follow ends: a clean exit, not "interrupted"


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("device_id")
@common_options
@click.option("--since", metavar="T", help="Only readings at or after T (10m, 1h, 2d, or an ISO 8601 time).")
@click.option("--until", metavar="T", help="Only readings at or before T (same forms).")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True,
              help="At most this many readings: the newest in the window.")
@json_option
@click.option("--csv", "csv_mode", is_flag=True, help="Print the readings as CSV.")
def readings(opts: Options, device_id: str, since: str | None, until: str | None, limit: int,
             json_mode: bool, csv_mode: bool) -> None:
    """DEVICE_ID's stored readings (the newest --limit in the window, oldest first),
    anomalies marked.

    \b
    Examples:
      iotpipe readings press-07 --env prod --since 1h
      iotpipe readings press-07 --env prod --since 2026-12-01T00:00:00Z --until 2026-12-02T00:00:00Z --csv
    """
    from datetime import UTC, datetime

    from iotpipe.ops.readings import device_readings
    from iotpipe.ops.timespec import UsageError, parse_time

    if json_mode and csv_mode:
        raise UsageError("--json and --csv: choose one")
    now = datetime.now(UTC)
    start = parse_time(since, now) if since else None
    end = parse_time(until, now, option="--until") if until else None
    if start is not None and end is not None and end <= start:
        raise UsageError("--until is not after --since")
    renderer = _renderer(json_mode)
    engine = _build(opts, renderer)
    found = device_readings(engine.ctx, device_id, start=start, end=end, limit=limit)
    renderer.readings(device_id, found, "json" if json_mode else "csv" if csv_mode else "text")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line and a documented exit code for every expected failure."""
    args = list(sys.argv[1:] if argv is None else argv)
    json_mode = "--json" in (args[:args.index("--")] if "--" in args else args)
    try:
        cli.main(args=args, prog_name="iotpipe", standalone_mode=False)
        return ExitCode.OK
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else ExitCode.ERROR
    except (click.exceptions.Abort, KeyboardInterrupt):  # click turns Ctrl-C into Abort
        return _fail(json_mode, ExitCode.INTERRUPTED,
                     "interrupted: re-run the same command to continue where it stopped")
    except click.exceptions.NoArgsIsHelpError as err:  # bare `iotpipe` (or `iotpipe device`)
        click.echo(err.ctx.get_help() if err.ctx else cli.get_help(click.Context(cli, info_name="iotpipe")))
        return ExitCode.OK
    except click.UsageError as err:
        return _fail(json_mode, ExitCode.USAGE, _usage_message(err, args))
    except click.ClickException as err:
        return _fail(json_mode, ExitCode.USAGE, err.format_message())
    except IotpipeError as err:
        return _fail(json_mode, err.exit_code, str(err))
    except Exception as err:  # noqa: BLE001 - the last line of defence against tracebacks
        typed = _translate(err)
        if isinstance(typed, IotpipeError):
            return _fail(json_mode, typed.exit_code, str(typed))
        if os.environ.get("IOTPIPE_DEBUG"):
            raise
        return _fail(json_mode, ExitCode.ERROR, f"internal error: {err.__class__.__name__}: {err} "
                                                "(set IOTPIPE_DEBUG=1 for the traceback and please report it)")


def _usage_message(err: click.UsageError, args: list[str]) -> str:
    """Click's message and where to look next; for an option put before the command, the
    command line that works (every option belongs to a command, none to `iotpipe` itself)."""
    if isinstance(err, click.NoSuchOption) and err.ctx is not None and err.ctx.command is cli:
        names = [a for a in args if a in cli.commands]  # type: ignore[attr-defined]
        if names:
            at = args.index(names[0])
            fixed = " ".join(["iotpipe", *args[at:at + 1], *args[:at], *args[at + 1:]])
            return f"{err.option_name} goes after the command: `{fixed}`"
    return err.format_message() + (f" (see `{err.ctx.command_path} --help`)" if err.ctx else "")


def _one_line(text: str) -> str:
    """An operator's value may hold a newline or a control character; the error stays one line."""
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _fail(json_mode: bool, code: ExitCode, text: str) -> int:
    """The one error line on stderr; with --json, the same as a JSON object on stdout too."""
    text = _one_line(text)
    try:
        from iotpipe.render import Renderer

        renderer = Renderer(json_mode=json_mode)
        renderer.error(text)
        if json_mode:
            renderer.error_json(int(code), ExitCode(code).name, text)
    except Exception:  # noqa: BLE001 - even rich failing must not hide the message
        sys.stderr.write(f"error: {text}\n")
    return code


def _translate(err: Exception) -> Exception:
    module = type(err).__module__
    if module.startswith(("botocore", "boto3")):
        from iotpipe.aws import translate

        return translate(err)
    return err

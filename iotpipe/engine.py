"""plan / up / status / destroy over the resource graph, reporting through events.

The engine owns order, state bookkeeping, ownership checks and locking; resources own the
AWS calls. It knows nothing of the terminal: each resource's start, phase (reading, creating,
updating, deleting: said by the engine around the resource's calls, so resources need not
know), waits and result go to an ``on_event`` callback that `render` turns into a live view,
progress lines or JSON (see ``Event``).

Resources run along their ``depends_on`` graph (``iotpipe.graph``) on a bounded pool of
``parallelism`` threads: `up`, `plan`, `status` and destroy's survey in dependency order,
destroy's deletes in reverse (a resource goes only once everything that depends on it is
gone). Results are reported in the declared order whatever the order of completion. A
failure stops what depends on it and lets the rest finish; the run then raises the first
failure (in declared order), naming the others. Parallelism 1 is the declared order, one at
a time. ``on_event`` is called from the worker threads and must be thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError

from iotpipe.aws import translate
from iotpipe.errors import AbortedError, IotpipeError, OwnershipError
from iotpipe.graph import DEFAULT_PARALLELISM, run_graph
from iotpipe.progress import Progress
from iotpipe.state import StateStore
from iotpipe.steps.base import Change, Current, DeletionPending, Resource, StepContext

Action = Literal["create", "update", "unchanged", "delete", "absent", "skipped", "pending", "read",
                 "scheduled", "blocked"]
Health = Literal["ok", "missing", "drifted", "foreign", "deleted", "pending", "pending-deletion",
                 "disabled", "unwanted", ""]

KMS_KEY_TYPE = "AWS::KMS::Key"  # destroy schedules it for deletion; AWS deletes it after the window
# Said before the operator confirms a destroy: what goes with a resource besides itself.
DESTROY_NOTES = {
    "AWS::S3::Bucket": "emptied first: every object version and delete marker",
    "AWS::DynamoDB::Table": "with every item in it",
    "AWS::Kinesis::Stream": "with the records it still holds",
    "AWS::Logs::LogGroup": "with its log events",
}

# The seed's outputs, under the seed's keys: logical id and which id of it.
OUTPUT_KEYS: dict[str, tuple[str, str]] = {
    "sensor_data_bucket_name": ("storage.sensor_bucket", "name"),
    "sensor_metrics_table_name": ("storage.metrics_table", "name"),
    "kinesis_stream_name": ("stream.sensor_stream", "name"),
    "lambda_function_name": ("lambda.function", "name"),
    "iot_thing_type_name": ("iot.thing_type", "name"),
    "cloudtrail_name": ("trail.trail", "name"),
    "kms_key_id": ("kms.key", "id"),
    "kms_key_arn": ("kms.key", "arn"),
    "sensor_data_bucket_arn": ("storage.sensor_bucket", "arn"),
    "sensor_metrics_table_arn": ("storage.metrics_table", "arn"),
    "kinesis_stream_arn": ("stream.sensor_stream", "arn"),
    "lambda_function_arn": ("lambda.function", "arn"),
    "iot_topic_rule_name": ("iot.topic_rule", "name"),
    "iot_device_policy_name": ("iot.device_policy", "name"),
    "cloudtrail_bucket_name": ("trail.bucket", "name"),
    "iot_rule_role_arn": ("iot.rule_role", "arn"),
    "lambda_role_arn": ("lambda.role", "arn"),
}


@dataclass
class ResourceResult:
    logical_id: str
    resource_type: str
    name: str
    action: Action
    health: Health = ""
    changes: list[Change] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)
    message: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "logical_id": self.logical_id, "type": self.resource_type, "name": self.name,
            "action": self.action, "status": self.health or None,
            "changes": [c.as_dict() for c in self.changes], "ids": self.ids,
            "message": self.message or None,
        }


@dataclass
class RunResult:
    command: str
    env: str
    region: str
    account: str
    resources: list[ResourceResult] = field(default_factory=list)
    elapsed_s: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)

    def count(self, attr: str = "action") -> dict[str, int]:
        counts: dict[str, int] = {}
        for r in self.resources:
            key = getattr(r, attr)
            if key:
                counts[key] = counts.get(key, 0) + 1
        return counts

    @property
    def in_sync(self) -> bool:
        return all(r.action in ("unchanged", "read") and r.health in ("", "ok", "disabled")
                   for r in self.resources)

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command, "env": self.env, "region": self.region, "account": self.account,
            "elapsed_s": round(self.elapsed_s, 3), "counts": self.count(),
            "status_counts": self.count("health"),
            "resources": [r.as_dict() for r in self.resources],
            "outputs": self.outputs,
        }


@dataclass(frozen=True)
class Event:
    """One thing a run tells `render` as it goes.

    A run over the resources is bracketed by "begin" (with ``order``: the logical ids in the
    order results are shown, so a display can list them stably although they finish in any
    order) and "end" (always, also after a failure or an interruption, so nothing stays
    buffered). In between, per resource: "start", any number of "phase" (what the engine is
    doing to it: reading, creating, updating, deleting) and "progress" (what a wait inside
    that phase is waiting for), then exactly one "done" per started resource (and one for
    each resource a failure stopped, as skipped).
    """

    kind: Literal["begin", "start", "phase", "progress", "done", "end"]
    logical_id: str
    verb: str = ""
    result: ResourceResult | None = None  # kind "done": None for a failure or a retired resource gone
    progress: Progress | None = None  # kind "progress": what a wait is waiting for
    phase: str = ""  # kind "phase": reading, creating, updating, deleting
    order: tuple[str, ...] = ()  # kind "begin": every logical id of the run, in result order
    error: str = ""  # kind "done" of a resource that failed: what went wrong, in one line


EventSink = Callable[[Event], None]


class Engine:
    def __init__(
        self,
        ctx: StepContext,
        store: StateStore,
        resources: Sequence[Resource],
        *,
        on_event: EventSink | None = None,
        lock_timeout: float = 0.0,
        parallelism: int = DEFAULT_PARALLELISM,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.resources = list(resources)
        self.on_event = on_event or (lambda _e: None)
        self.lock_timeout = lock_timeout
        self.parallelism = parallelism
        ctx.recorded = lambda lid: dict(rec.ids) if (rec := store.get(lid)) else {}
        # (command, logical id) that progress reports belong to: per thread, as each worker
        # thread works on one resource at a time.
        self._local = threading.local()
        ctx.aws.on_progress = store.on_progress = self._progress
        self._stopping = threading.Event()
        # Reads of the pass before `up` (its plan) or `destroy` (its survey), by logical id, for
        # that command to use instead of reading again (see up and destroy); None: none kept.
        self._kept: dict[str, Current | None] | None = None
        # Logical ids this run has written to (created, updated, deleted): a kept read of
        # anything downstream of them is stale (see _read).
        self._written: set[str] = set()
        ctx.aws.sleep = self._stoppable(ctx.aws.sleep)

    def _stoppable(self, sleep: Callable[[float], None]) -> Callable[[float], None]:
        """The run's sleep, ended by an interruption: Ctrl-C reaches only the main thread, and
        a worker waiting for a table to become ACTIVE would otherwise hold the run for minutes.
        It stops at the end of the pause under way (seconds): the sleep itself is the injected
        one (tests, and the AWS time model, advance their clocks through it)."""
        def stoppable(seconds: float) -> None:
            if self._stopping.is_set():
                raise KeyboardInterrupt("stopped while waiting")
            sleep(seconds)
            if self._stopping.is_set():
                raise KeyboardInterrupt("stopped while waiting")

        return stoppable

    @property
    def _doing(self) -> tuple[str, str]:
        return getattr(self._local, "doing", ("", ""))

    @_doing.setter
    def _doing(self, value: tuple[str, str]) -> None:
        self._local.doing = value

    def _progress(self, progress: Progress) -> None:
        command, logical_id = self._doing
        self.on_event(Event("progress", logical_id, verb=command, progress=progress))

    def _phase(self, phase: str) -> None:
        """Say what this thread's resource is now being put through, so a display can show
        each resource in flight with its own phase (the resources' code stays unaware)."""
        command, logical_id = self._doing
        if logical_id and getattr(self._local, "phases", False):
            self.on_event(Event("phase", logical_id, verb=command, phase=phase))

    # -- commands ------------------------------------------------------------------------------
    def plan(self) -> RunResult:
        return self._run("plan", self._plan_one, reverse=False, lock=False)

    def status(self) -> RunResult:
        return self._run("status", self._status_one, reverse=False, lock=False)

    def up(self, confirm: Callable[[RunResult], bool] | None = None) -> RunResult:
        """Converge; with ``confirm``, first plan under the lock and let it see the plan."""

        def plan_then_confirm() -> None:
            preview = RunResult("plan", self.ctx.env, self.ctx.region, self.ctx.account)
            self._prefetch()
            preview.resources = self._each("plan", self._plan_one, reverse=False, events=False)
            # Nothing to change anywhere: what the plan read is what `up` would read again a
            # moment later under the same lock. Otherwise each resource is read again once
            # what it depends on is converged (a key made in this run changes how the
            # encryption of what it encrypts reads).
            if any(r.action != "unchanged" for r in preview.resources):
                self._kept = None
            if confirm is not None and not confirm(preview):
                raise AbortedError("up cancelled: nothing was changed")

        try:
            return self._run("up", self._up_one, reverse=False, lock=True,
                             before=plan_then_confirm if confirm is not None else None)
        finally:
            self._kept = None

    def lossy_changes(self, plan: RunResult) -> list[tuple[ResourceResult, Change]]:
        """The changes in ``plan`` that delete stored data (see RETENTION_FIELDS).

        A resource the state file shows iotpipe was still creating is half-made (a log group
        whose retention a killed run never set): finishing it loses nothing of anyone's.
        """
        return [(r, c) for r in plan.resources if r.action == "update" for c in r.changes
                if loses_data(r, c) and not self._being_created(r.logical_id)]

    def _being_created(self, logical_id: str) -> bool:
        record = self.store.get(logical_id)
        return bool(record and record.status == "creating")

    def destroy_plan(self) -> RunResult:
        """What `destroy` would do, in its order, from reads only (`plan --destroy`)."""
        self._account()
        return self._survey()

    def destroy(self, confirm: Callable[[RunResult], bool] | None = None) -> RunResult:
        """Read everything, stop on a blocker, let ``confirm`` see the survey, then delete.

        All reads and ownership checks happen before the first delete, under the lock, so a
        resource that is not ours can only be skipped (named) or stop destroy while nothing
        is gone yet: never halfway through.
        """

        def survey_then_confirm() -> None:
            # Ownership and what to delete are judged once, here, before the first delete:
            # the deletes use these reads (a re-read after a dependant is gone can judge
            # differently: the device policy's owner on the emulator is told by the thing
            # type, deleted just before it). Each delete tolerates what changed meanwhile
            # (already gone, still in use).
            self._kept = {}
            survey = self._survey()
            if (blocked := blocked_error(survey)) is not None:
                raise blocked
            if confirm is not None and not confirm(survey):
                raise AbortedError("destroy cancelled: nothing was deleted")
            self._prepare_deletes(survey)

        try:
            result = self._run("destroy", self._destroy_one, reverse=True, lock=True, before=survey_then_confirm)
        finally:
            self._kept = None
        if all(r.action in ("delete", "scheduled", "absent") for r in result.resources):
            self.store.remove_if_empty()
        return result

    def outputs(self) -> RunResult:
        """Names and ARNs, plus what a device integrator needs: where to connect, what to publish."""
        result = self._run("outputs", self._status_one, reverse=False, lock=False)
        if result.outputs:
            from iotpipe.steps.iot import SENSOR_TOPIC_FILTER

            endpoint = self.ctx.client("iot").describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
            result.outputs = {
                "region": self.ctx.region, "account_id": result.account, "iot_data_endpoint": endpoint,
                "iot_topic_pattern": SENSOR_TOPIC_FILTER,
                "iot_device_topic": SENSOR_TOPIC_FILTER.replace("+", "<device_id>"),
                **result.outputs,
            }
        return result

    # -- per resource --------------------------------------------------------------------------
    def _retired(self, res: Resource, command: str) -> ResourceResult | None:
        """A retired resource (see Resource.retired): None when there is nothing to show."""
        self._phase("reading")
        current = res.read(self.ctx)
        if current is None or not self._is_ours(res, current):
            if command == "up":
                self.store.forget(res.logical_id)
            return None
        blocker = res.retire_blocker(self.ctx, current)
        if command == "status":
            return self._result(res, "read", health="unwanted", ids=current.ids,
                                message=f"retired: {res.retired}; " + (blocker or "the next `up` deletes it"))
        if blocker:
            return self._result(res, "skipped" if command == "up" else "unchanged", health="unwanted",
                                ids=current.ids, message=f"retired ({res.retired}) but kept: {blocker}")
        if command == "plan":
            return self._result(res, "delete", ids=current.ids, message=f"retired: {res.retired}")
        self._phase("deleting")
        self._written.add(res.logical_id)
        res.delete(self.ctx, current)
        self.store.forget(res.logical_id)
        return self._result(res, "delete", health="deleted", ids=current.ids, message=f"retired: {res.retired}")

    def _plan_one(self, res: Resource) -> ResourceResult | None:
        if res.retired:
            return self._retired(res, "plan")
        if why := res.disabled_by(self.ctx):
            return self._disabled(res, why, "unchanged")
        desired = res.desired(self.ctx)
        self._phase("reading")
        current = self._keep(res, self._read(res))
        if current is None and res.makes_nothing:
            # It comes into being with what it rides on (iot.devices with the thing type), so
            # `up` finds it there and says "unchanged": plan says the same.
            return self._result(res, "unchanged")
        note = res.note(self.ctx)
        if current is None:
            return self._result(res, "create", changes=_creation(desired), message=note)
        self._check_owned(res, current)
        self.ctx.refs[res.logical_id] = current.ids
        changes = res.diff(current.spec, desired)
        refused = sorted({c.field for c in changes} & res.replaced_only)
        if refused:
            note = "; ".join(filter(None, [f"`up` will refuse this: {', '.join(refused)} cannot change in "
                                           "place (it says how to replace it)", note]))
        return self._result(res, "update" if changes else "unchanged", changes=changes, ids=current.ids,
                            message=note)

    def _disabled(self, res: Resource, why: str, action: Action) -> ResourceResult:
        """A resource the config turns off: absent is in shape; ours still there is reported
        (by `status` as "unwanted") and kept: only `destroy` removes it."""
        self._phase("reading")
        current = res.read(self.ctx)
        if current is None or not self._is_ours(res, current):
            return self._result(res, action, health="disabled", message=f"not wanted ({why})")
        return self._result(res, action, health="unwanted" if action == "read" else "", ids=current.ids,
                            message=f"exists although {why}: kept; `iotpipe destroy` removes it")

    def _status_one(self, res: Resource) -> ResourceResult | None:
        if res.retired:
            return self._retired(res, "status")
        if why := res.disabled_by(self.ctx):
            return self._disabled(res, why, "read")
        self._phase("reading")
        current = self._read(res)
        if current is None:
            return self._result(res, "read", health="missing")
        if not self._is_ours(res, current):
            return self._result(res, "read", health="foreign", ids=current.ids,
                                message=current.foreign_reason
                                or "exists but is not managed by iotpipe for this env")
        self.ctx.refs[res.logical_id] = current.ids  # only ours: later reads trust these ids
        changes = res.diff(current.spec, res.desired(self.ctx))
        return self._result(res, "read", health="drifted" if changes else "ok",
                            changes=changes, ids=current.ids, message=current.condition)

    def _up_one(self, res: Resource) -> ResourceResult | None:
        if res.retired:
            return self._retired(res, "up")
        if why := res.disabled_by(self.ctx):
            return self._disabled(res, why, "unchanged")
        desired = res.desired(self.ctx)
        self._phase("reading")
        current = self._read(res)
        name = res.name(self.ctx)
        if current is None:
            self.store.intend(res.logical_id, res.resource_type, name)
            self._written.add(res.logical_id)
            try:
                self._phase("creating")
                ids = res.create(self.ctx, desired)
            except OwnershipError:
                self.store.forget(res.logical_id)  # the name is taken by someone else: not ours
                raise
            self.store.record(res.logical_id, res.resource_type, name, ids)
            self.ctx.refs[res.logical_id] = ids
            return self._result(res, "create", ids=ids)
        self._check_owned(res, current)
        self.store.record(res.logical_id, res.resource_type, name, current.ids)
        self.ctx.refs[res.logical_id] = current.ids
        changes = res.diff(current.spec, desired)
        if not changes:
            return self._result(res, "unchanged", ids=current.ids)
        ids = current.ids
        self._phase("updating")
        self._written.add(res.logical_id)
        updated = res.update(self.ctx, current, desired, changes)
        if updated:  # ids the update changed (the role a function was re-pointed to)
            ids = {**current.ids, **updated}
            self.store.record(res.logical_id, res.resource_type, name, ids)
            self.ctx.refs[res.logical_id] = ids
        return self._result(res, "update", changes=changes, ids=ids)

    def _prepare_deletes(self, survey: RunResult) -> None:
        """Every resource to delete starts what of its deletion need not wait (prepare_delete),
        all at once, before the first delete: the table's protection is lifted while what
        uses it goes, instead of after."""
        kept = self._kept or {}
        to_delete = {r.logical_id for r in survey.resources if r.action == "delete"}
        by_id = {res.logical_id: res for res in self.resources if res.logical_id in to_delete}

        def prepare(logical_id: str) -> None:
            current = kept.get(logical_id)
            if current is not None:
                self._guarded(by_id[logical_id], lambda res: res.prepare_delete(self.ctx, current))

        _raise_failures(run_graph(list(by_id), {}, prepare, parallelism=self.parallelism))

    def _keep(self, res: Resource, current: Current | None) -> Current | None:
        """Keep a read of the pass before `up` or `destroy` for that command (see there)."""
        if self._kept is not None:
            self._kept[res.logical_id] = current
        return current

    def _read(self, res: Resource) -> Current | None:
        """The kept read of ``res``, once, if there is one and nothing it depends on has been
        written since (a key made in this run changes how what it encrypts reads); else a
        read of AWS now."""
        kept = self._kept
        if kept is not None and res.logical_id in kept:
            current = kept.pop(res.logical_id)
            if not self._written & self._upstream(res.logical_id):
                return current
        return res.read(self.ctx)

    def _upstream(self, logical_id: str) -> set[str]:
        """Everything ``logical_id`` depends on, directly or not."""
        direct = {res.logical_id: res.depends_on for res in self.resources}
        seen: set[str] = set()
        todo = list(direct.get(logical_id, ()))
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(direct.get(dep, ()))
        return seen

    def _prefetch(self) -> None:
        """Read every wanted resource into the kept reads, each as soon as the ids its read
        uses are known (``read_needs``): nearly all at once, where the command's own pass
        reads one graph level at a time. A converged `status`, `plan` or `up` then costs about
        one resource's reads in wall time instead of one per level.

        Only a head start: a read that fails here is left to the resource's own turn, which
        reads again and reports it as before; `up` uses a kept read only while nothing it
        depends on has been written (``_read``).
        """
        kept: dict[str, Current | None] = {}

        def fetch(res: Resource) -> None:
            if res.retired or res.disabled_by(self.ctx):
                return  # read in their own turn (they are reported, not compared)
            try:
                current = res.read(self.ctx)
            except Exception:  # noqa: BLE001 - read again, and reported, in the resource's turn
                return
            kept[res.logical_id] = current
            if current is not None and self._is_ours(res, current):
                self.ctx.refs[res.logical_id] = current.ids  # what a later read_needs uses

        self._each("read", fetch, reverse=False, needs=lambda r: r.read_needs)
        self._kept = kept

    def _survey(self) -> RunResult:
        """Read every resource, each once the ids its read uses are known (``read_needs``):
        nothing is compared with a desired state, so most reads go at once."""
        result = RunResult("destroy-plan", self.ctx.env, self.ctx.region, self.ctx.account)
        result.resources = self._each("read", self._survey_one, reverse=False, needs=lambda r: r.read_needs)
        result.resources.reverse()  # shown in the order destroy works
        return result

    def _survey_one(self, res: Resource) -> ResourceResult | None:
        self._phase("reading")
        current = self._keep(res, res.read(self.ctx))
        if current is None:
            return None if res.retired else self._result(res, "absent")
        if not self._is_ours(res, current):
            return self._left_alone(res, current)
        self.ctx.refs[res.logical_id] = current.ids  # only ours: later reads trust these ids
        if current.blockers:
            shown = ", ".join(current.blockers[:5]) + (", ..." if len(current.blockers) > 5 else "")
            return self._result(res, "blocked", health="foreign", ids=current.ids,
                                message=f"holds what iotpipe does not own for env {self.ctx.env!r} "
                                        f"({shown}), which AWS will not delete it around: remove "
                                        "or move those, then run destroy again")
        if res.resource_type == KMS_KEY_TYPE:
            return self._result(res, "scheduled", ids=current.ids, message=self._key_note())
        note = DESTROY_NOTES.get(res.resource_type, "")
        if res.resource_type == "AWS::S3::Bucket" and current.spec.get("versioning") == "Enabled":
            note = "versioned: " + note
        if res.logical_id == "iot.devices":
            note = (f"{current.ids.get('count', '?')} device(s): their certificates (deactivated first), "
                    "then the things")
        return self._result(res, "delete", ids=current.ids, message=note)

    def _left_alone(self, res: Resource, current: Current) -> ResourceResult:
        """What destroy (and its survey) says of a resource with our name that is not ours."""
        reason = current.foreign_reason or "exists but is not managed by iotpipe for this env"
        return self._result(res, "skipped", health="foreign", ids=current.ids,
                            message=f"{reason}: left alone")

    def _key_note(self) -> str:
        days = self.ctx.config.kms.deletion_window_days
        return (f"scheduled for deletion ({days} days): recoverable until then with "
                "`aws kms cancel-key-deletion`")

    def _destroy_one(self, res: Resource) -> ResourceResult | None:
        self._phase("reading")
        current = self._read(res)
        if current is None:
            self.store.forget(res.logical_id)
            return None if res.retired else self._result(res, "absent")
        if not self._is_ours(res, current):
            return self._left_alone(res, current)
        try:
            self._phase("deleting")
            res.delete(self.ctx, current)
        except DeletionPending as pending:
            return self._result(res, "pending", health="pending", ids=current.ids, message=str(pending))
        self.store.forget(res.logical_id)
        if res.resource_type == KMS_KEY_TYPE:  # AWS keeps it, disabled, for the window
            return self._result(res, "scheduled", health="pending-deletion", ids=current.ids,
                                message=self._key_note())
        return self._result(res, "delete", health="deleted", ids=current.ids)

    # -- plumbing --------------------------------------------------------------------------------
    def _run(self, command: str, one: Callable[[Resource], ResourceResult | None], *, reverse: bool,
             lock: bool, before: Callable[[], None] | None = None) -> RunResult:
        started = time.monotonic()
        self._written = set()
        account = self._account()
        result = RunResult(command, self.ctx.env, self.ctx.region, account)
        self.ctx.read_only = not lock
        self._doing = (command, "")
        with self._maybe_lock(command, lock):
            if before is not None:
                before()  # under the lock, before anything is written
                started = time.monotonic()  # not counting the time the operator took to answer
            if lock:
                self.store.set_account(account)
            if command in ("up", "plan"):
                self._preflight()
            prefetched = command in ("up", "plan", "status") and self._kept is None
            if prefetched:
                self._prefetch()
            try:
                result.resources = self._each(command, one, reverse=reverse)
            finally:
                if prefetched:
                    self._kept = None
        result.outputs = self._outputs()
        result.elapsed_s = time.monotonic() - started
        return result

    def _each(self, command: str, one: Callable[[Resource], ResourceResult | None], *, reverse: bool,
              events: bool = True,
              needs: Callable[[Resource], tuple[str, ...]] = lambda r: r.depends_on) -> list[ResourceResult]:
        """``one`` for every resource along the graph; results in the declared order (reversed
        with ``reverse``, where a resource waits for everything that depends on it instead).
        Going forward a resource waits for ``needs(resource)``: its ``depends_on`` unless told.

        Events (with ``events``): "begin" with the order, then per resource "start", its
        phases and progress, "done"; "end" last whatever happened.

        A resource whose dependency failed is not attempted: reported (event) as skipped; after
        a failed state write nothing new is started. When anything failed, the first failure in
        that order is raised once the rest is done, naming the others; an interruption is raised
        as soon as the resources in flight finish or stop (their waits end with it).
        """
        order = list(reversed(self.resources)) if reverse else list(self.resources)
        by_id = {res.logical_id: res for res in order}
        if reverse:
            waits: dict[str, list[str]] = {lid: [] for lid in by_id}
            for res in order:
                for dep in res.depends_on:
                    if dep in waits:
                        waits[dep].append(res.logical_id)
        else:
            waits = {res.logical_id: list(needs(res)) for res in order}

        def work(logical_id: str) -> ResourceResult | None:
            res = by_id[logical_id]
            self._doing = (command, logical_id)
            self._local.phases = events
            try:
                if events:
                    self.on_event(Event("start", logical_id, verb=command))
                item = self._guarded(res, one)
            except BaseException as err:
                if events:
                    said = (str(err).splitlines() or [""])[0] if isinstance(err, Exception) else "interrupted"
                    self.on_event(Event("done", logical_id, verb=command, result=None,
                                        error=said or type(err).__name__))
                raise
            finally:
                self._doing = (command, "")
                self._local.phases = False
            if events:  # None: a retired resource that is gone, nothing to say
                self.on_event(Event("done", logical_id, verb=command, result=item))
            return item

        def skipped(logical_id: str, failed: str) -> None:
            if events:
                item = self._result(by_id[logical_id], "skipped", message=f"not attempted: {failed} failed")
                self.on_event(Event("done", logical_id, verb=command, result=item))

        # A state write that failed (or whose answer was lost) ends the run: every later write
        # of this run would be refused as stale, or land unseen.
        self._stopping.clear()
        if events:
            self.on_event(Event("begin", "", verb=command, order=tuple(by_id)))
        try:
            outcomes = run_graph(list(by_id), waits, work, parallelism=self.parallelism, on_skip=skipped,
                                 halts=lambda _err: self.store.write_error is not None,
                                 on_interrupt=self._stopping.set,
                                 priority=time_ahead(waits, {lid: 0.0 if reverse else res.expected_s
                                                             for lid, res in by_id.items()}))
        finally:
            if events:  # also when a failure or an interruption left some never started
                self.on_event(Event("end", "", verb=command))
        _raise_failures(outcomes)
        return [o.value for o in outcomes if o.value is not None]

    def _preflight(self) -> None:
        """Every wanted resource's read-only checks, before `up` writes anything."""
        for res in self.resources:
            if not res.disabled_by(self.ctx):
                self._guarded(res, lambda r: r.preflight(self.ctx))

    def _account(self) -> str:
        self.store.load()  # a corrupt or foreign state file stops us before any AWS call
        account = self.ctx.account
        self.store.check_account(account)
        return account

    @contextmanager
    def _maybe_lock(self, command: str, lock: bool) -> Iterator[None]:
        if not lock:
            yield
            return
        with self.store.lock(command, timeout=self.lock_timeout, sleep=self.ctx.aws.sleep, clock=self.ctx.aws.clock):
            self.store.reload()  # another run may have written while we waited for the lock
            yield

    def _guarded(self, res: Resource, one: Callable[[Resource], Any]) -> Any:
        try:
            return one(res)
        except IotpipeError:
            raise
        except (ClientError, BotoCoreError) as err:
            typed = translate(err)
            if isinstance(typed, IotpipeError):
                raise type(typed)(f"{res.logical_id} ({res.name(self.ctx)}): {typed}") from err
            raise

    def _is_ours(self, res: Resource, current: Current) -> bool:
        if current.managed:
            return True
        if not current.adoptable:
            return False
        record = self.store.get(res.logical_id)
        # Written ahead before our create call: a resource we made but did not get to tag.
        return bool(record and record.status == "creating" and record.name == res.name(self.ctx))

    def _check_owned(self, res: Resource, current: Current) -> None:
        if not self._is_ours(res, current):
            if current.foreign_reason:
                raise OwnershipError(f"{res.resource_type} {res.name(self.ctx)!r} ({res.logical_id}) "
                                     f"{current.foreign_reason}; nothing was written to it")
            raise OwnershipError(
                f"{res.resource_type} {res.name(self.ctx)!r} ({res.logical_id}) exists but is not "
                f"managed by iotpipe for env {self.ctx.env!r} (no iotpipe:env tag): rename, adopt by "
                "tagging it, or remove it")

    def _result(self, res: Resource, action: Action, **kwargs: Any) -> ResourceResult:
        return ResourceResult(res.logical_id, res.resource_type, res.name(self.ctx), action, **kwargs)

    def _outputs(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, (lid, attr) in OUTPUT_KEYS.items():
            value = self.ctx.refs.get(lid, {}).get(attr)
            if value:
                out[key] = value
        return out


def _raise_failures(outcomes: list[Any]) -> None:
    """After a graph run: the first failure in the run's order, naming the others."""
    failures = [(o.key, o.error) for o in outcomes if o.state == "failed" and o.error is not None]
    if failures:
        raise _first_of(failures)


def _first_of(failures: list[tuple[str, BaseException]]) -> BaseException:
    """The first failure (its type decides the exit code), naming the others in its message."""
    first = failures[0][1]
    if len(failures) == 1:
        return first
    others = "; ".join(f"{lid}: {str(err) or type(err).__name__}" for lid, err in failures[1:])
    if isinstance(first, IotpipeError) and len(first.args) == 1 and str(first) == str(first.args[0]):
        first.args = (f"{first.args[0]} (also failed: {others})",)
    else:
        first.add_note(f"also failed: {others}")
    return first


def blocked_error(survey: RunResult) -> OwnershipError | None:
    """The error that stops destroy when its survey found something of someone else's in the way."""
    blocked = [r for r in survey.resources if r.action == "blocked"]
    if not blocked:
        return None
    return OwnershipError("destroy stopped before deleting anything: " + "; ".join(
        f"{r.logical_id} ({r.name}) {r.message}" for r in blocked))


# Settings that delete data the moment `up` lowers them:
# - Kinesis DecreaseStreamRetentionPeriod: "This operation may result in lost data. For example,
#   if the stream's retention period is 48 hours and is decreased to 24 hours, any data already
#   in the stream that is older than 24 hours is inaccessible."
#   (https://docs.aws.amazon.com/kinesis/latest/APIReference/API_DecreaseStreamRetentionPeriod.html)
# - CloudWatch Logs PutRetentionPolicy: log events that reach the retention setting are marked
#   for deletion and deleted (typically within 72 hours); a group without a retention policy
#   (None here) keeps them forever (DeleteRetentionPolicy: "Log events do not expire if they
#   belong to log groups without a retention policy").
#   (https://docs.aws.amazon.com/AmazonCloudWatchLogs/latest/APIReference/API_PutRetentionPolicy.html)
RETENTION_FIELDS = frozenset({("AWS::Kinesis::Stream", "retention_hours"),
                              ("AWS::Logs::LogGroup", "retention_days")})


def loses_data(result: ResourceResult, change: Change) -> bool:
    """True when applying ``change`` to the live resource deletes data already stored."""
    if (result.resource_type, change.field) not in RETENTION_FIELDS:
        return False
    if not isinstance(change.desired, int):
        return False
    return change.current is None or (isinstance(change.current, int) and change.current > change.desired)


def _creation(desired: dict[str, Any]) -> list[Change]:
    return [Change(k, None, v) for k, v in desired.items()]


def open_store(state_root: Any, env: str, region: str, aws: Any, state: Any = None) -> StateStore:
    """The env's store: local files under ``state_root``, or the S3 backend ``state`` names
    (device keys stay under ``state_root`` either way)."""
    if state is None:
        return StateStore(state_root, env, region)
    from iotpipe.s3state import open_backend

    return StateStore(state_root, env, region, backend=open_backend(state, env, aws))


def make_engine(
    config: Any,
    aws: Any,
    state_root: Any,
    *,
    on_event: EventSink | None = None,
    lock_timeout: float = 0.0,
    resources: Sequence[Resource] | None = None,
    state: Any = None,
    force_lock: bool = False,
    parallelism: int = DEFAULT_PARALLELISM,
) -> Engine:
    """Wire config, AWS context, state store and the ordered resources into an Engine.

    Names need the account (S3 bucket names carry it), so the first AWS call, STS
    GetCallerIdentity, happens here; it is also the credentials check.
    """
    from iotpipe.config import Names
    from iotpipe.steps import all_resources

    store = open_store(state_root, config.env, config.region, aws, state or getattr(config, "state", None))
    store.force = force_lock
    store.load()  # a bad state file is refused before any AWS call
    names = Names.derive(config, aws.account_id)
    ctx = StepContext(aws=aws, config=config, names=names)
    return Engine(ctx, store, resources if resources is not None else all_resources(),
                  on_event=on_event, lock_timeout=lock_timeout, parallelism=parallelism)


def time_ahead(waits: dict[str, list[str]], expected: dict[str, float]) -> dict[str, float]:
    """Per item, the AWS time from its start to the end of its longest chain of dependants.

    Each item counts its expected wait plus one second for its calls; the item with the most
    time ahead of it is the one whose delay delays the whole run (the critical path's head).
    """
    dependants: dict[str, list[str]] = {key: [] for key in waits}
    for key, deps in waits.items():
        for dep in deps:
            if dep in dependants:
                dependants[dep].append(key)
    ahead: dict[str, float] = {}

    def visit(key: str) -> float:
        if key not in ahead:
            ahead[key] = 1.0 + expected.get(key, 0.0) + max((visit(d) for d in dependants[key]), default=0.0)
        return ahead[key]

    for key in waits:
        visit(key)
    return ahead


"""The Resource contract every step implements, and the small types the engine trades in.

A resource never prints and never decides order: it describes what it wants (`desired`),
reports what exists (`read`, normalised to the same shape), and closes the gap with the
fewest calls (`create`/`update`/`delete`). The engine does the rest.

Crash-safety rests on one invariant each resource keeps: ``read`` of a half-made resource
(created but not yet tagged, versioned, encrypted...) returns what is there, so ``diff``
shows the missing aspects and ``update`` finishes the job on the next run.
"""

from __future__ import annotations

import contextlib
import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

from iotpipe.aws import AwsContext, is_not_found
from iotpipe.config import Names, PipelineConfig
from iotpipe.errors import IotpipeError

MANAGED_BY = "iotpipe"
TAG_ENV = "iotpipe:env"
TAG_RESOURCE = "iotpipe:resource"
TAG_MANAGED_BY = "managed-by"
# The region an env's resources live in. Regional resources are where they are, but IAM role
# and S3 bucket names are global: the tag is what tells env dev in eu-west-1 from env dev in
# us-east-1 (see StepContext.owns).
TAG_REGION = "iotpipe:region"
# The config tag keys iotpipe set, so a key dropped from the config is removed on the next
# `up` instead of lingering forever (see config_tag_keys). Kept on the resource itself, so a
# lost state file does not lose it.
TAG_CONFIG_KEYS = "iotpipe:tags"
TAG_VALUE_MAX = 256  # the smallest tag value limit of the services iotpipe tags

Spec = dict[str, Any]


class UnknownYet(str):
    """The placeholder for another resource's id before it exists (shown by `plan`)."""

    __slots__ = ()


class DeletionPending(Exception):
    """Raised by ``delete`` when AWS will only finish later (an IoT thing type's 5 minutes)."""


@dataclass(frozen=True)
class Change:
    field: str
    current: Any
    desired: Any

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "current": self.current, "desired": self.desired}


@dataclass
class Current:
    """What ``read`` found: the normalised spec, the ids to record, and whether it is ours."""

    spec: Spec
    ids: dict[str, str] = field(default_factory=dict)
    managed: bool = True  # carries iotpipe's marker for this env (tags, or a description)
    # False when AWS says outright that it belongs to someone else (a bucket of another
    # account, a role of this env's deployment in another region): then even a write-ahead
    # "creating" record cannot make it ours.
    adoptable: bool = True
    foreign_reason: str = ""  # why it is not ours, when the plain "no iotpipe:env tag" is wrong
    # A state worth naming beside the field diff, shown by `status` (a key that is
    # "pending-deletion (until 2026-12-10 19:20 UTC)").
    condition: str = ""

    # Things of someone else's inside or on a resource of ours that AWS would not let us
    # delete around (a foreign thing of our thing type): destroy stops before its first
    # delete, naming them, instead of failing halfway through.
    blockers: tuple[str, ...] = ()

    @classmethod
    def judged(cls, ctx: StepContext, spec: Spec, ids: dict[str, str], tags: Mapping[str, str] | None,
               *, home_region: str | None = None) -> Current:
        """A Current whose ownership comes from ``tags`` (see ``StepContext.owns``).

        A resource of this env that another region's deployment owns is never adoptable:
        IAM role and S3 bucket names are global, and rewriting them breaks that pipeline.
        """
        other = ctx.other_region(tags, home_region=home_region)
        if other:
            return cls(spec, ids, managed=False, adoptable=False, foreign_reason=(
                f"belongs to env {ctx.env!r} deployed in {other}, not {ctx.region} (its name is "
                f"global): give each region its own env name, e.g. --env {ctx.env}-{ctx.region} "
                "(docs/runbooks/deploy.md)"))
        return cls(spec, ids, managed=ctx.owns(tags, home_region=home_region))


@dataclass
class StepContext:
    """What a resource may know: config, names, the AWS context, and other resources' ids."""

    aws: AwsContext
    config: PipelineConfig
    names: Names
    refs: dict[str, dict[str, str]] = field(default_factory=dict)  # logical id -> ids
    recorded: Callable[[str], dict[str, str]] = lambda _lid: {}  # ids the state file holds
    # plan/status/outputs: reads that only report may skip costly searches (the KMS tag scan)
    read_only: bool = False
    memo: dict[str, Any] = field(default_factory=dict)  # per-run answers resources keep
    # Held while a memo entry is asked for and filled: resources run in several threads, and
    # an answer shared by many (all alarms from one DescribeAlarms) should be asked once.
    memo_lock: threading.RLock = field(default_factory=threading.RLock)

    @property
    def env(self) -> str:
        return self.config.env

    @property
    def region(self) -> str:
        return self.aws.region

    @property
    def account(self) -> str:
        return self.aws.account_id

    def client(self, service: str) -> Any:
        return self.aws.client(service)

    def ref(self, logical_id: str, key: str = "arn") -> str:
        """Another resource's id; a placeholder when it does not exist yet (plan on a new env)."""
        value = self.refs.get(logical_id, {}).get(key)
        return value if value else UnknownYet(f"(known after apply: {logical_id}.{key})")

    def tags(self, logical_id: str) -> dict[str, str]:
        """The tags every resource carries: the config's, then iotpipe's own (which win)."""
        return {**self.config.tags, **encode_tag_keys(self.config.tags), TAG_ENV: self.env,
                TAG_RESOURCE: logical_id, TAG_MANAGED_BY: MANAGED_BY, TAG_REGION: self.region}

    def owns(self, tags: Mapping[str, str] | None, *, home_region: str | None = None) -> bool:
        """True when ``tags`` mark the resource as iotpipe's for this env in this region.

        A resource without the region tag (made before iotpipe recorded regions) is judged by
        ``home_region``, where the resource itself says where it was made (a bucket's
        location); regional resources pass nothing, since they are where this run looks.
        """
        if not (tags and tags.get(TAG_ENV) == self.env and tags.get(TAG_MANAGED_BY) == MANAGED_BY):
            return False
        region = tags.get(TAG_REGION) or home_region
        return region is None or region == self.region

    def other_region(self, tags: Mapping[str, str] | None, *, home_region: str | None = None) -> str | None:
        """The region of another deployment of this env that owns the resource, else None."""
        if not tags or tags.get(TAG_ENV) != self.env or tags.get(TAG_MANAGED_BY) != MANAGED_BY:
            return None
        region = tags.get(TAG_REGION) or home_region
        return region if region and region != self.region else None

    def marker(self, logical_id: str) -> str:
        """A text marker for resources whose tags cannot be read back (IoT): kept in descriptions."""
        return f"[managed-by={MANAGED_BY} env={self.env} resource={logical_id}]"


class Resource(ABC):
    """One AWS thing with a stable logical id: the engine derives plan, up, status and destroy
    from these few methods, so a resource never needs to know which command is running."""

    logical_id: ClassVar[str]
    resource_type: ClassVar[str]  # CloudFormation-style type, e.g. "AWS::S3::Bucket"
    depends_on: ClassVar[tuple[str, ...]] = ()
    # The dependencies whose ids ``read`` itself uses (the rest of ``depends_on`` is needed by
    # ``desired`` and ``create``): the read-everything-first passes (destroy's survey, the
    # prefetch of status, plan and up) wait for these alone, so their reads go nearly all at
    # once instead of one graph level at a time (tests/test_depends_on.py checks them).
    read_needs: ClassVar[tuple[str, ...]] = ()
    # Typical seconds AWS takes before what ``create`` made is usable (timing.py): the engine
    # starts the resources with the most AWS time ahead of them first.
    expected_s: ClassVar[float] = 0.0

    name_field: ClassVar[str] = ""  # the attribute of config.Names that holds the physical name
    # True when ``create`` makes no call: the resource exists as soon as what it depends on
    # does, so `plan` on a new env must not promise a creation `up` will never report.
    makes_nothing: ClassVar[bool] = False

    # Fields AWS cannot change in place. ``update`` refuses a difference there (replacing the
    # resource would lose what it holds: a table's items, a thing type's things) and `plan`
    # says so beforehand, so that nobody learns it from a failed `up`.
    replaced_only: ClassVar[frozenset[str]] = frozenset()

    # Set (to the reason) on a resource iotpipe no longer makes: `plan` shows it as to be
    # deleted, `status` as unwanted, `up` deletes one of its own (once ``retire_blocker``
    # allows), `destroy` removes it like any other. Absent, it is not shown at all.
    retired: ClassVar[str] = ""

    def retire_blocker(self, ctx: StepContext, current: Current) -> str | None:
        """Why a retired resource of ours must stay for now (it still holds data), or None."""
        return None

    def name(self, ctx: StepContext) -> str:
        """The deterministic physical name (the alias name for a KMS key)."""
        return getattr(ctx.names, self.name_field)

    def disabled_by(self, ctx: StepContext) -> str | None:
        """The setting that turns this resource off (e.g. "trail.enabled = false"), or None.

        A disabled resource is neither created nor compared; one that still exists is reported
        and left in place, and `destroy` removes it like any other.
        """
        return None

    def preflight(self, ctx: StepContext) -> None:
        """Read-only checks `up` runs for every wanted resource before its first write, so that
        an env that cannot be finished (a quota) is not started."""
        return None

    def note(self, ctx: StepContext) -> str:
        """What `plan` should say about the configuration beyond the diff (what it gives up)."""
        return ""

    @abstractmethod
    def desired(self, ctx: StepContext) -> Spec: ...

    @abstractmethod
    def read(self, ctx: StepContext) -> Current | None: ...

    def diff(self, current: Spec, desired: Spec) -> list[Change]:
        """Field-level differences for every key of ``desired``, compared canonically."""
        return diff_specs(current, desired)

    @abstractmethod
    def create(self, ctx: StepContext, desired: Spec) -> dict[str, str]:
        """Create it; return the ids to record (arn, id...)."""

    @abstractmethod
    def update(self, ctx: StepContext, current: Current, desired: Spec,
               changes: list[Change]) -> dict[str, str] | None:
        """Close exactly the listed changes; return ids that changed (to record), if any."""

    @abstractmethod
    def delete(self, ctx: StepContext, current: Current) -> None:
        """Remove it; already gone counts as success."""

    def prepare_delete(self, ctx: StepContext, current: Current) -> None:
        """What of its deletion can start before what depends on it is gone (destroy, after
        the operator said yes, for every resource at once): a wait AWS imposes then overlaps
        the dependants' deletes instead of following them. Nothing by default."""
        return None


# --------------------------------------------------------------------------------------------
# Helpers shared by the steps
# --------------------------------------------------------------------------------------------
def canonical(value: Any) -> Any:
    """A form in which equal configurations compare equal.

    Policy documents arrive as JSON strings or dicts, statements and actions in any order,
    single values or one-element lists; numbers as int or float.
    """
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in "{[":
            try:
                return canonical(json.loads(stripped))
            except ValueError:
                return value
        return value
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [canonical(v) for v in value]
        if len(items) == 1 and not isinstance(value, tuple):
            return items[0]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True, default=str))
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def same(a: Any, b: Any) -> bool:
    return canonical(a) == canonical(b)


def diff_specs(current: Spec, desired: Spec) -> list[Change]:
    return [
        Change(key, current.get(key), want)
        for key, want in desired.items()
        if not isinstance(want, UnknownYet) and not same(current.get(key), want)
    ]


def changed_fields(changes: Iterable[Change]) -> set[str]:
    return {c.field for c in changes}


def tag_list(tags: Mapping[str, str], key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    return [{key: k, value: v} for k, v in sorted(tags.items())]


def tag_dict(items: Iterable[Mapping[str, str]] | None, key: str = "Key", value: str = "Value") -> dict[str, str]:
    return {item[key]: item[value] for item in items or ()}


def policy_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, separators=(",", ":"), sort_keys=True)


def paginate(client: Any, operation: str, key: str, **kwargs: Any) -> list[Any]:
    """All items under ``key`` across the pages of ``operation``."""
    items: list[Any] = []
    for page in client.get_paginator(operation).paginate(**kwargs):
        items.extend(page.get(key, []))
    return items


@contextlib.contextmanager
def ignore_not_found() -> Iterator[None]:
    """Reading what is already gone is not an error.

    Wrap exactly one call: around several, the first "not found" skips the rest silently
    (a detached policy would skip DeleteRole). Deletes use ``tolerate_gone`` per call.
    """
    try:
        yield
    except Exception as err:
        if not is_not_found(err):
            raise


def tolerate_gone(call: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Run one delete-type call; "already gone" is success. True when the call did the work.

    One call at a time (amazon.aws ``deletion_error_handler``): a missing inline policy must
    not stop DeleteRole from running, so each call of a delete sequence tolerates its own
    target being gone and the sequence always reaches its last call, whose answer says
    whether the resource is really gone.
    """
    try:
        call(*args, **kwargs)
    except Exception as err:
        if is_not_found(err):
            return False
        raise
    return True


def encode_tag_keys(config_tags: Mapping[str, str]) -> dict[str, str]:
    """The ``iotpipe:tags`` tag(s) listing the config's tag keys, netstring-style.

    Each key is written as ``<length>=<key>``: tag keys may hold any of the characters a tag
    value may (spaces, ``:``, ``/``, ``=``...), so no separator could be unambiguous. ``=``
    rather than ``:`` because Kinesis lists only ``_ . / = + - % @`` as valid in tag values
    (https://docs.aws.amazon.com/kinesis/latest/APIReference/API_Tag.html). A list
    longer than one tag value spills over into ``iotpipe:tags:2``, ``iotpipe:tags:3``...;
    config validation keeps the total within AWS's 50 tags per resource.
    """
    text = "".join(f"{len(k)}={k}" for k in sorted(config_tags))
    chunks = [text[i:i + TAG_VALUE_MAX] for i in range(0, len(text), TAG_VALUE_MAX)]
    return {(TAG_CONFIG_KEYS if n == 0 else f"{TAG_CONFIG_KEYS}:{n + 1}"): chunk
            for n, chunk in enumerate(chunks)}


def decode_tag_keys(tags: Mapping[str, str]) -> set[str]:
    """The config tag keys a resource's ``iotpipe:tags`` tag(s) say iotpipe set earlier.

    Anything unreadable (hand-edited) yields the keys read so far: a key not listed is left
    alone, which is the safe side.
    """
    text = tags.get(TAG_CONFIG_KEYS, "")
    n = 2
    while f"{TAG_CONFIG_KEYS}:{n}" in tags:
        text += tags[f"{TAG_CONFIG_KEYS}:{n}"]
        n += 1
    keys: set[str] = set()
    pos = 0
    while pos < len(text):
        sep = text.find("=", pos)
        if sep <= pos or not text[pos:sep].isdigit():
            break
        length = int(text[pos:sep])
        key = text[sep + 1:sep + 1 + length]
        if len(key) != length:
            break
        keys.add(key)
        pos = sep + 1 + length
    return keys


def filter_tags(ctx: StepContext, logical_id: str, tags: Mapping[str, str]) -> dict[str, str]:
    """Only the tags iotpipe sets or set earlier: tags others add out of band are not drift.

    A config tag iotpipe set on an earlier run (listed in ``iotpipe:tags``) is iotpipe's even
    when the config no longer has it, so ``tag_changes`` removes it.
    """
    wanted = ctx.tags(logical_id)
    earlier = decode_tag_keys(tags)
    return {k: v for k, v in tags.items()
            if k in wanted or k in earlier or k.startswith("iotpipe:") or k == TAG_MANAGED_BY}


def tag_changes(current: Mapping[str, str], desired: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(tags to set, keys to remove) to go from ``current`` to ``desired`` (our keys only)."""
    to_set = {k: v for k, v in desired.items() if current.get(k) != v}
    to_remove = [k for k in current if k not in desired]
    return to_set, to_remove


# Threads for a resource's independent reads (see read_together): shared by every resource
# and engine in the process, made on first use.
READ_THREADS = 16
# At most this many of one resource's reads in flight. botocore's standard retry mode keeps a
# retry quota per client (500 tokens, 5 per retry, only part given back on success): under a
# burst of throttling, a client with dozens of calls retrying at once runs it dry and then
# fails calls without retrying them. Four at a time halves a bucket's round trips (8 -> 2)
# and keeps the calls retrying at once on one client close to what they were.
READ_FANOUT = 4
_read_pool: ThreadPoolExecutor | None = None
_read_pool_lock = threading.Lock()


def read_together(reads: Mapping[str, Callable[[], Any]]) -> dict[str, Any]:
    """Ask one resource's independent reads at once; their answers by name.

    A bucket's aspects, a trail's selectors and status, a key's policy and rotation are
    separate GETs that do not depend on each other: one after another they put a round trip
    each on the critical path of every converged run, every `status` and destroy's survey.
    Each read must be a plain AWS call with its arguments worked out beforehand (nothing
    that reads another resource's ids: those reads belong to the resource's own thread).
    Every read runs to its end; then the first failure, in the given order, is raised, as
    asking them in that order would have raised it.
    """
    if len(reads) < 2:
        return {name: read() for name, read in reads.items()}
    global _read_pool
    with _read_pool_lock:
        if _read_pool is None:
            _read_pool = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="iotpipe-read")
        pool = _read_pool
    # The caller waits for a free slot before handing each read over, so the shared threads
    # only ever hold reads that are running.
    slots = threading.BoundedSemaphore(READ_FANOUT)
    futures = {}
    for name, read in reads.items():
        slots.acquire()
        futures[name] = pool.submit(read)
        futures[name].add_done_callback(lambda _done: slots.release())
    answers: dict[str, Any] = {}
    failure: BaseException | None = None
    for name, future in futures.items():
        try:
            answers[name] = future.result()
        except BaseException as err:  # noqa: BLE001 - raised below, after the others ended
            failure = failure or err
    if failure is not None:
        raise failure
    return answers


def get_or_none(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args, **kwargs)``, or None when AWS says the thing does not exist.

    Reads use it so that "absent" (or "aspect never configured") is a value diff can show,
    while every other error still propagates.
    """
    try:
        return call(*args, **kwargs)
    except Exception as err:
        if is_not_found(err):
            return None
        raise


def our_key_arn(ctx: StepContext, key_ref: str | None) -> str | None:
    """The ARN of the pipeline's key for any way of naming it (id, ARN, alias, alias ARN).

    Services echo the key reference they were given (DescribeStreamSummary returns KeyId
    exactly as StartStreamEncryption got it; the seed passes the key id): mapping every name
    of our key to its ARN keeps a key set by id (by hand, or by an older tool) from reading
    as drift.
    """
    if not key_ref:
        return None
    arn = ctx.ref("kms.key", "arn")
    if isinstance(arn, UnknownYet):
        return key_ref
    alias = ctx.names.kms_alias
    if key_ref in {arn, ctx.ref("kms.key", "id"), alias, ctx.aws.arn("kms", alias)}:
        return arn
    return key_ref


def known_key(value: Any) -> Any:
    """Refuse to write a placeholder: it means the KMS key step did not run first."""
    if isinstance(value, UnknownYet):
        raise IotpipeError(f"the KMS key is not known yet {value}: run `up` with the kms step")
    return value
